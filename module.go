// Package certflow is a Caddy TLS issuer module, tls.issuance.certflow, that
// obtains certificates from an RFC 8555 ACME CA by running cert-manager's
// explicit workflow (CertificateRequest → Order → Challenge) inside Caddy,
// on demand, while TLS handshakes wait. Every step is a persisted resource in
// the policy's certmagic storage; the engine lives in the issuer package.
package certflow

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"

	"github.com/certflow/certflow/issuer"
	"github.com/certflow/certflow/solvers"
)

func init() {
	caddy.RegisterModule(Issuer{})
}

// Issuer obtains certificates with cert-manager's ACME workflow: each
// certificate request becomes a persisted CertificateRequest, an Order and one
// Challenge per name that still needs authorizing, each challenge going
// queued → scheduled → synced → presented → self-checked → accepted →
// valid/invalid. HTTP-01 and TLS-ALPN-01 answers are served by Caddy itself
// from storage, on any instance sharing that storage.
type Issuer struct {
	// The URL of the CA's ACME directory. Default:
	// https://acme-v02.api.letsencrypt.org/directory
	CA string `json:"ca,omitempty"`

	// Your email address, so the CA can contact you. The ACME account is
	// per CA and email (or EAB key ID when there is no email); an account
	// the stock acme issuer already stored for the same CA and email is used.
	Email string `json:"email,omitempty"`

	// A file holding the PEM-encoded private key of an existing ACME
	// account to use instead of the one found or created for the email.
	AccountKeyFile string `json:"account_key_file,omitempty"`

	// External account binding credentials, if the CA requires them.
	ExternalAccount *acme.EAB `json:"external_account,omitempty"`

	// Timeout of each HTTP request to the CA. Default: 30s.
	ACMETimeout caddy.Duration `json:"acme_timeout,omitempty"`

	// Files of PEM-encoded CA certificates to trust when connecting to the
	// ACME server (for a private or test CA). Default: the system's roots.
	TrustedRootsPEMFiles []string `json:"trusted_roots_pem_files,omitempty"`

	// Which challenge types may be used. The first enabled type that the
	// CA offers is tried first, in the order http-01, tls-alpn-01, dns-01;
	// when validation of one type fails, the next attempt for that name
	// uses the next enabled type. dns-01 is enabled by configuring a DNS
	// provider, and is the only type that can obtain wildcard names.
	Challenges *ChallengesConfig `json:"challenges,omitempty"`

	// How certflow checks, before asking the CA to validate, that a
	// presented challenge is answered the way the CA will see it.
	SelfCheck *SelfCheckConfig `json:"self_check,omitempty"`

	// The most challenges in flight (scheduled until final) at once in
	// this process, for all certflow issuers together; the most recently
	// provisioned value wins. Default: 60.
	MaxConcurrentChallenges int `json:"max_concurrent_challenges,omitempty"`

	// How many challenges may wait for a slot in this process; a
	// challenge beyond that fails at once rather than making a handshake
	// wait past its client's patience. Default: 1000.
	MaxQueuedChallenges int `json:"max_queued_challenges,omitempty"`

	// Holds new orders to at most this many per window for the account,
	// per process (each node of a cluster counts its own). Default: the
	// limit a well-known public CA publishes (Let's Encrypt: 300 per 3
	// hours), none for other CAs.
	OrderRateLimit *OrderRateLimitConfig `json:"order_rate_limit,omitempty"`

	// How long a challenge may stay in flight (from scheduled to a final
	// state) before it frees its slot and fails. Default: 5m.
	ChallengeTimeout caddy.Duration `json:"challenge_timeout,omitempty"`

	// Backoff after a failed issuance for a name: on-demand handshakes for
	// that name fail fast until the next attempt time. The first wait is
	// Initial and it doubles up to Max. Defaults: 1m and 6h.
	FailureBackoff *BackoffConfig `json:"failure_backoff,omitempty"`

	// How long, and how many, finished or failed resources of each kind
	// are kept in storage for debugging. Defaults: 7 days, 1000 of each.
	Retention *RetentionConfig `json:"retention,omitempty"`

	logger *zap.Logger
	ctx    caddy.Context

	// shadow is a private, never-issuing stock ACME issuer. Caddy's HTTP
	// servers only consult storage for HTTP-01 tokens through an issuer
	// with GetACMEIssuer; the shadow gives them that door. It is nil until
	// Provision (so Caddyfile adaptation does not merge global ACME options
	// into it) and never nil after.
	shadow *caddytls.ACMEIssuer

	engine    *issuer.Engine
	engineKey string // in enginePool; "" when none is held
	scheduler *issuer.Scheduler
	solverCfg solvers.Config
	options   *atomic.Pointer[issuer.Options] // the latest SetConfig's; set in Provision
	issuerKey string

	// dnsProvider is the loaded challenges.dns.provider module; nil when
	// dns-01 is not configured.
	dnsProvider certmagic.DNSProvider
}

// ChallengesConfig enables or disables challenge types.
type ChallengesConfig struct {
	// HTTP-01 settings.
	HTTP *ChallengeTypeConfig `json:"http,omitempty"`
	// TLS-ALPN-01 settings.
	TLSALPN *ChallengeTypeConfig `json:"tls-alpn,omitempty"`
	// DNS-01 settings. DNS-01 is enabled when a provider is configured.
	DNS *DNSChallengeConfig `json:"dns,omitempty"`
}

// ChallengeTypeConfig configures one challenge type.
type ChallengeTypeConfig struct {
	// Never use this challenge type.
	Disabled bool `json:"disabled,omitempty"`
}

// DNSChallengeConfig configures the DNS-01 challenge, with the names of the
// stock acme issuer's challenges.dns. TXT records are added and deleted
// through a caddy-dns provider module; the zone and the record the provider
// returned are stored with the challenge, so the record is deleted after a
// restart or by another instance sharing the storage, and only that record
// (never another value of the same name). Before the CA is asked to
// validate, certflow checks that the record is visible: at each of the
// zone's authoritative nameservers (after following a CNAME on the record
// name), or at each of the configured resolvers.
type DNSChallengeConfig struct {
	// The DNS provider module (dns.providers.*) that manages the TXT
	// records. Required for DNS-01.
	ProviderRaw json.RawMessage `json:"provider,omitempty" caddy:"namespace=dns.providers inline_key=name"`

	// The TTL of the TXT records. Default: the provider's.
	TTL caddy.Duration `json:"ttl,omitempty"`

	// A fixed wait after the record is added, before the first
	// propagation check (or before the CA is asked to validate, when the
	// check is off). Default: 0.
	PropagationDelay caddy.Duration `json:"propagation_delay,omitempty"`

	// How long the propagation check may keep failing before the
	// challenge fails; -1 skips the check. The check is repeated every
	// second (or every self_check interval, when that is set).
	// Default: 2m.
	PropagationTimeout caddy.Duration `json:"propagation_timeout,omitempty"`

	// DNS resolvers (host or host:port, port 53 by default) the
	// propagation check asks, each of which must return the value, and
	// through which the zone is found. Default: the zone's authoritative
	// nameservers, found through the system's resolvers.
	Resolvers []string `json:"resolvers,omitempty"`

	// Write the TXT record at this name instead of _acme-challenge.<name>
	// (the challenge is delegated: _acme-challenge.<name> is a CNAME to
	// it). Placeholders are expanded when the issuer is provisioned.
	OverrideDomain string `json:"override_domain,omitempty"`

	// Run challenges that write the same TXT record (a wildcard and its
	// apex) one at a time in this process, for a provider that replaces a
	// record's values when it adds one. By default they run at once, each
	// adding and deleting only its own value, as libdns requires.
	Serialize bool `json:"serialize,omitempty"`
}

// SelfCheckConfig configures the self-check that runs before a challenge is
// accepted. HTTP-01 fetches http://<name>:<port>/.well-known/acme-challenge/<token>
// and compares the body; TLS-ALPN-01 does a handshake with acme-tls/1 to
// <name>:<tlsalpn_port> and checks the challenge certificate.
type SelfCheckConfig struct {
	// Skip the self-check for HTTP-01 and TLS-ALPN-01.
	Disabled bool `json:"disabled,omitempty"`
	// Ask the CA to validate even when every enabled challenge type
	// failed its self-check (the failures stay recorded on the
	// challenge): for servers that cannot reach their own public address,
	// e.g. behind NAT without hairpinning. By default a challenge whose
	// every type keeps failing its self-check fails (a failure of the
	// name) without costing a failed validation at the CA.
	Advisory bool `json:"advisory,omitempty"`
	// DNS resolvers (host:port) used to resolve the name as the CA would.
	// Default: the system's resolver.
	Resolvers []string `json:"resolvers,omitempty"`
	// The port the HTTP-01 check connects to. Default: 80.
	HTTPPort int `json:"http_port,omitempty"`
	// The port the TLS-ALPN-01 check connects to. Default: 443.
	TLSALPNPort int `json:"tlsalpn_port,omitempty"`
	// How long to wait between failed checks. Default: 2s (for DNS-01
	// propagation checks, 1s).
	Interval caddy.Duration `json:"interval,omitempty"`
	// How long one check attempt may take, DNS-01 propagation checks
	// included. Default: 10s.
	AttemptTimeout caddy.Duration `json:"attempt_timeout,omitempty"`
	// How long a challenge may keep failing its self-check before it
	// fails. Default: 2m.
	Timeout caddy.Duration `json:"timeout,omitempty"`
}

// OrderRateLimitConfig is a sliding-window limit on new orders.
type OrderRateLimitConfig struct {
	// How many new orders per window.
	Orders int `json:"orders,omitempty"`
	// The window.
	Window caddy.Duration `json:"window,omitempty"`
	// Turn the limit off, including the default.
	Disabled bool `json:"disabled,omitempty"`
}

// BackoffConfig is a doubling backoff.
type BackoffConfig struct {
	// The first wait. Default: 1m.
	Initial caddy.Duration `json:"initial,omitempty"`
	// The longest wait. Default: 6h.
	Max caddy.Duration `json:"max,omitempty"`
}

// RetentionConfig bounds the history of finished resources.
type RetentionConfig struct {
	// Keep at most this many finished resources of each kind. Default: 1000.
	MaxCount int `json:"max_count,omitempty"`
	// Delete finished resources older than this. Default: 168h (7 days).
	MaxAge caddy.Duration `json:"max_age,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (Issuer) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "tls.issuance.certflow",
		New: func() caddy.Module { return new(Issuer) },
	}
}

const defaultCA = "https://acme-v02.api.letsencrypt.org/directory"

// cleanupFlushTimeout bounds how long unloading a config waits for the
// index markers this process still holds.
const cleanupFlushTimeout = 5 * time.Second

// Provision sets up the issuer: the shared ACME engine for its CA and
// account, the scheduler limits, and the shadow issuer that lets Caddy serve
// HTTP-01 tokens from storage.
func (iss *Issuer) Provision(ctx caddy.Context) error {
	iss.ctx = ctx
	iss.logger = ctx.Logger()
	iss.options = new(atomic.Pointer[issuer.Options])

	repl := caddy.NewReplacer()
	for _, field := range []*string{&iss.CA, &iss.Email, &iss.AccountKeyFile} {
		v, err := repl.ReplaceOrErr(*field, true, true)
		if err != nil {
			return fmt.Errorf("expanding placeholders in %q: %w", *field, err)
		}
		*field = v
	}
	if iss.ExternalAccount != nil {
		var err error
		if iss.ExternalAccount.KeyID, err = repl.ReplaceOrErr(iss.ExternalAccount.KeyID, true, true); err != nil {
			return fmt.Errorf("expanding EAB key ID: %w", err)
		}
		if iss.ExternalAccount.MACKey, err = repl.ReplaceOrErr(iss.ExternalAccount.MACKey, true, true); err != nil {
			return fmt.Errorf("expanding EAB MAC key: %w", err)
		}
	}
	if iss.CA == "" {
		iss.CA = defaultCA
	}
	iss.issuerKey = IssuerKeyForCA(iss.CA)

	if err := iss.provisionDNS(ctx, repl); err != nil {
		return err
	}

	if err := iss.acquireEngine(); err != nil {
		return err
	}
	iss.solverCfg = solvers.Config{
		IssuerKey:      iss.issuerKey,
		Resolvers:      iss.selfCheck().Resolvers,
		HTTPPort:       iss.selfCheck().HTTPPort,
		TLSALPNPort:    iss.selfCheck().TLSALPNPort,
		AttemptTimeout: time.Duration(iss.selfCheck().AttemptTimeout),
	}

	// The shadow never issues: it is not in the policy's issuer list, so
	// certmagic never calls it; Caddy only uses it to find our tokens.
	iss.shadow = &caddytls.ACMEIssuer{CA: iss.CA}
	if err := iss.shadow.Provision(ctx); err != nil {
		return fmt.Errorf("provisioning the challenge-serving shadow issuer: %w", err)
	}
	iss.startObserving(ctx) // events, metrics, CA request logs (observer.go)
	return nil
}

// Validate checks the configuration for mistakes Provision does not catch.
func (iss *Issuer) Validate() error {
	if len(iss.challengeTypes()) == 0 {
		return errors.New("every challenge type is disabled: enable http-01 or tls-alpn-01, or configure dns-01 with a DNS provider")
	}
	if err := iss.validateDNS(); err != nil {
		return err
	}
	if iss.MaxConcurrentChallenges < 0 {
		return fmt.Errorf("max_concurrent_challenges must not be negative, got %d", iss.MaxConcurrentChallenges)
	}
	if iss.MaxQueuedChallenges < 0 {
		return fmt.Errorf("max_queued_challenges must not be negative, got %d", iss.MaxQueuedChallenges)
	}
	if l := iss.OrderRateLimit; l != nil && !l.Disabled && (l.Orders <= 0 || l.Window <= 0) {
		return fmt.Errorf("order_rate_limit needs a positive number of orders and window (or disabled), got %d per %s",
			l.Orders, time.Duration(l.Window))
	}
	if iss.ExternalAccount != nil && (iss.ExternalAccount.KeyID == "" || iss.ExternalAccount.MACKey == "") {
		return errors.New("external_account needs both key_id and mac_key")
	}
	if sc := iss.SelfCheck; sc != nil {
		for _, p := range []int{sc.HTTPPort, sc.TLSALPNPort} {
			if p < 0 || p > 65535 {
				return fmt.Errorf("self_check port %d is out of range", p)
			}
		}
		for _, r := range sc.Resolvers {
			if _, _, err := net.SplitHostPort(r); err != nil {
				return fmt.Errorf("self_check resolver %q must be host:port: %w", r, err)
			}
		}
	}
	return nil
}

// Cleanup releases this instance's hold on the shared engine. Work in flight
// finishes with the storage and options it started with.
func (iss *Issuer) Cleanup() error {
	iss.stopObserving()
	// the index markers held back for merging (issuer.indexWriter) are
	// written now: when Caddy stops, nothing else would
	issuer.FlushIndex(cleanupFlushTimeout)
	return iss.releaseEngine()
}

// SetConfig is called by Caddy with the policy's certmagic config, possibly
// more than once; the latest one wins for new requests.
func (iss *Issuer) SetConfig(cfg *certmagic.Config) {
	if iss.shadow != nil {
		iss.shadow.SetConfig(cfg)
	}
	storage := iss.countedStorage(cfg.Storage) // certflow's own calls are counted (observer.go)
	opts := &issuer.Options{
		Storage:           storage,
		IssuerKey:         iss.issuerKey,
		ChallengeTypes:    iss.challengeTypes(),
		Solvers:           iss.buildSolvers(storage),
		SelfCheckDisabled: iss.selfCheck().Disabled,
		SelfCheckAdvisory: iss.selfCheck().Advisory,
		PolicyID:          iss.policyID(),
		SelfCheckInterval: time.Duration(iss.selfCheck().Interval),
		SelfCheckTimeout:  time.Duration(iss.selfCheck().Timeout),
		ChallengeTimeout:  time.Duration(iss.ChallengeTimeout),
		Logger:            iss.logger,
	}
	if b := iss.FailureBackoff; b != nil {
		opts.BackoffInitial, opts.BackoffMax = time.Duration(b.Initial), time.Duration(b.Max)
	}
	if r := iss.Retention; r != nil {
		opts.RetentionCount, opts.RetentionAge = r.MaxCount, time.Duration(r.MaxAge)
	}
	opts.SetDefaults()
	if iss.options == nil {
		return // not provisioned: nothing can issue through this instance
	}
	iss.observe(opts, storage) // sets opts.Observer; registers the storage for the admin API
	iss.options.Store(opts)
	if iss.engine != nil {
		iss.engine.StartMaintenance(opts)
	}
}

// GetACMEIssuer returns the private shadow issuer through which Caddy's HTTP
// servers find our HTTP-01 tokens in storage. It is nil before Provision.
func (iss *Issuer) GetACMEIssuer() *caddytls.ACMEIssuer { return iss.shadow }

// IssuerKey returns the key under which certificates from this issuer are
// stored: "certflow-" and the stock acme issuer's key for the same CA, so it
// is stable, the same on every node, and never collides with the stock issuer.
func (iss *Issuer) IssuerKey() string {
	if iss.issuerKey == "" {
		ca := iss.CA
		if ca == "" {
			ca = defaultCA
		}
		return IssuerKeyForCA(ca)
	}
	return iss.issuerKey
}

// PreCheck refuses, before any ACME call, names this issuer can never obtain
// with its enabled challenge types; those refusals are final
// (certmagic.ErrNoRetry). When a handshake waits (on demand), it also
// refuses a name certflow holds back now — its failure backoff, a hold on
// the name, its registered domain or the account longer than the
// handshake can wait, an open circuit to the CA — so that a policy with
// several issuers (issuers certflow acme) serves the handshake from the
// next one at once.
func (iss *Issuer) PreCheck(ctx context.Context, names []string, _ bool) error {
	types := iss.challengeTypes()
	for _, name := range names {
		if err := issuer.CanIssue(name, types); err != nil {
			return certmagic.ErrNoRetry{Err: err}
		}
	}
	if hello, _ := ctx.Value(certmagic.ClientHelloInfoCtxKey).(*tls.ClientHelloInfo); hello == nil || iss.engine == nil {
		return nil
	}
	now := time.Now()
	for _, name := range names {
		if r, refused := iss.engine.RefusalFor(iss.issuerKey, name, now); refused {
			return certmagic.ErrNoRetry{Err: fmt.Errorf("%s: %s (next attempt at %s)", name, r.Reason, r.Until.UTC().Format(time.RFC3339))}
		}
	}
	return nil
}

// Issue obtains a certificate for the CSR by running the workflow. When a
// handshake is waiting (on demand) and the engine has decided when to retry,
// the error is certmagic.ErrNoRetry; for managed names it is a normal error so
// certmagic's retry ladder keeps running.
func (iss *Issuer) Issue(ctx context.Context, csr *x509.CertificateRequest) (*certmagic.IssuedCertificate, error) {
	var opts *issuer.Options
	if iss.options != nil {
		opts = iss.options.Load()
	}
	if opts == nil || iss.engine == nil {
		return nil, errors.New("certflow issuer used before it was provisioned and configured")
	}
	hello, _ := ctx.Value(certmagic.ClientHelloInfoCtxKey).(*tls.ClientHelloInfo)
	onDemand := hello != nil
	return iss.engine.Issue(ctx, issuer.Request{CSR: csr, OnDemand: onDemand, Options: opts})
}

// Revoke revokes a certificate this issuer obtained.
func (iss *Issuer) Revoke(ctx context.Context, cert certmagic.CertificateResource, reason int) error {
	var opts *issuer.Options
	if iss.options != nil {
		opts = iss.options.Load()
	}
	if iss.engine == nil || opts == nil {
		return errors.New("certflow issuer used before it was provisioned and configured")
	}
	return iss.engine.Revoke(ctx, opts, cert.CertificatePEM, cert.PrivateKeyPEM, reason)
}

// GetRenewalInfo returns the CA's ARI renewal window for the certificate.
func (iss *Issuer) GetRenewalInfo(ctx context.Context, cert certmagic.Certificate) (acme.RenewalInfo, error) {
	if iss.engine == nil || cert.Leaf == nil {
		return acme.RenewalInfo{}, errors.New("no engine or no leaf certificate")
	}
	return iss.engine.RenewalInfo(ctx, cert.Leaf)
}

func (iss *Issuer) selfCheck() SelfCheckConfig {
	if iss.SelfCheck == nil {
		return SelfCheckConfig{}
	}
	return *iss.SelfCheck
}

// challengeTypes lists the enabled challenge types in preference order.
func (iss *Issuer) challengeTypes() []string {
	var types []string
	c := iss.Challenges
	if c == nil || c.HTTP == nil || !c.HTTP.Disabled {
		types = append(types, acme.ChallengeTypeHTTP01)
	}
	if c == nil || c.TLSALPN == nil || !c.TLSALPN.Disabled {
		types = append(types, acme.ChallengeTypeTLSALPN01)
	}
	if iss.dnsEnabled() {
		types = append(types, acme.ChallengeTypeDNS01)
	}
	return types
}

// provisionDNS expands placeholders in the DNS override domain and loads
// the DNS provider module, as the stock acme issuer does. Caddy's global
// dns option does not reach a third-party issuer, so the provider must be
// configured here.
func (iss *Issuer) provisionDNS(ctx caddy.Context, repl *caddy.Replacer) error {
	if iss.Challenges == nil || iss.Challenges.DNS == nil {
		return nil
	}
	dnsCfg := iss.Challenges.DNS
	if dnsCfg.OverrideDomain != "" {
		v, err := repl.ReplaceOrErr(dnsCfg.OverrideDomain, true, true)
		if err != nil {
			return fmt.Errorf("expanding DNS override domain %q: %w", dnsCfg.OverrideDomain, err)
		}
		dnsCfg.OverrideDomain = v
	}
	if dnsCfg.ProviderRaw == nil {
		return errors.New("DNS challenge settings are given but no DNS provider: add 'dns <provider>' " +
			"(Caddy's global dns option does not reach certflow)")
	}
	val, err := ctx.LoadModule(dnsCfg, "ProviderRaw")
	if err != nil {
		return fmt.Errorf("loading DNS provider module: %w", err)
	}
	prov, ok := val.(certmagic.DNSProvider)
	if !ok {
		return fmt.Errorf("DNS provider module %T cannot add and delete records "+
			"(it must be a libdns RecordAppender and RecordDeleter)", val)
	}
	iss.dnsProvider = prov
	return nil
}

// validateDNS checks the DNS challenge settings.
func (iss *Issuer) validateDNS() error {
	if iss.Challenges == nil || iss.Challenges.DNS == nil {
		return nil
	}
	d := iss.Challenges.DNS
	switch {
	case d.TTL < 0:
		return fmt.Errorf("dns ttl must not be negative, got %s", time.Duration(d.TTL))
	case d.PropagationDelay < 0:
		return fmt.Errorf("propagation_delay must not be negative, got %s", time.Duration(d.PropagationDelay))
	case d.PropagationTimeout < 0 && d.PropagationTimeout != -1:
		return fmt.Errorf("propagation_timeout must be positive, or -1 to skip the propagation check, got %s",
			time.Duration(d.PropagationTimeout))
	}
	for _, r := range d.Resolvers {
		if err := checkDNSResolver(r); err != nil {
			return fmt.Errorf("dns resolver %q: %w", r, err)
		}
	}
	if d.OverrideDomain != "" && (strings.ContainsAny(d.OverrideDomain, " */:@") || strings.Trim(d.OverrideDomain, ".") == "") {
		return fmt.Errorf("dns challenge override domain %q is not a domain name", d.OverrideDomain)
	}
	return nil
}

// checkDNSResolver accepts host or host:port, as the stock acme issuer's
// resolvers (port 53 when none is given).
func checkDNSResolver(r string) error {
	host, port, err := net.SplitHostPort(r)
	if err != nil {
		host, port = strings.Trim(r, "[]"), "53"
	}
	if host == "" || strings.ContainsAny(host, " /") {
		return errors.New("not a host or host:port")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("invalid port %q", port)
	}
	return nil
}

// dnsEnabled reports whether dns-01 is configured: a provider is (or, before
// Provision, will be) loaded.
func (iss *Issuer) dnsEnabled() bool {
	if iss.dnsProvider != nil {
		return true
	}
	return iss.Challenges != nil && iss.Challenges.DNS != nil && iss.Challenges.DNS.ProviderRaw != nil
}

// dns01Config is the DNS-01 solver's configuration. The self_check
// interval and attempt timeout, when set, also pace the propagation check.
func (iss *Issuer) dns01Config() solvers.DNS01Config {
	d := iss.Challenges.DNS
	return solvers.DNS01Config{
		Provider:           iss.dnsProvider,
		TTL:                time.Duration(d.TTL),
		PropagationDelay:   time.Duration(d.PropagationDelay),
		PropagationTimeout: time.Duration(d.PropagationTimeout),
		Resolvers:          d.Resolvers,
		OverrideDomain:     d.OverrideDomain,
		Serialize:          d.Serialize,
		Interval:           time.Duration(iss.selfCheck().Interval),
		AttemptTimeout:     time.Duration(iss.selfCheck().AttemptTimeout),
		Logger:             iss.logger.Named("dns01"),
	}
}

func (iss *Issuer) buildSolvers(storage certmagic.Storage) map[string]solvers.Solver {
	cfg := iss.solverCfg
	cfg.Storage = storage
	m := map[string]solvers.Solver{
		acme.ChallengeTypeHTTP01:    solvers.NewHTTP01(cfg),
		acme.ChallengeTypeTLSALPN01: solvers.NewTLSALPN01(cfg),
	}
	if iss.dnsProvider != nil {
		m[acme.ChallengeTypeDNS01] = solvers.NewDNS01(iss.dns01Config())
	}
	return m
}

// IssuerKeyForCA derives the issuer key from the CA's directory URL the way
// certmagic's ACME issuer does (host, then the path with slashes turned into
// hyphens), prefixed with "certflow-".
func IssuerKeyForCA(ca string) string {
	return "certflow-" + issuer.CAKey(ca)
}

// Interface guards.
var (
	_ certmagic.Issuer            = (*Issuer)(nil)
	_ certmagic.PreChecker        = (*Issuer)(nil)
	_ certmagic.Revoker           = (*Issuer)(nil)
	_ certmagic.RenewalInfoGetter = (*Issuer)(nil)
	_ caddytls.ConfigSetter       = (*Issuer)(nil)
	_ caddy.Provisioner           = (*Issuer)(nil)
	_ caddy.Validator             = (*Issuer)(nil)
	_ caddy.CleanerUpper          = (*Issuer)(nil)
	_ caddyfile.Unmarshaler       = (*Issuer)(nil)
)
