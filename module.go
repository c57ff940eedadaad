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
	"net/http"
	"net/url"
	"slices"
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

	// The stock acme issuer's test CA, tried on retries before the CA
	// itself. certflow refuses it: a failing name waits out its failure
	// backoff instead (and the self-check catches most mistakes before
	// the CA sees them), so there is nothing to fall back to.
	TestCA string `json:"test_ca,omitempty"`

	// The ACME profile to ask for in new orders, one the CA's directory
	// offers (e.g. Let's Encrypt's "shortlived", which it requires for IP
	// address certificates). It is checked against the directory when an
	// order is made, not when the config is loaded; an order for a
	// profile the CA does not offer fails, naming the profiles it offers.
	// Default: none (the CA chooses).
	Profile string `json:"profile,omitempty"`

	// The PEM-encoded private key of an existing ACME account, used
	// instead of the one found or created for the email (the account is
	// looked up by the key, and registered if the CA has none for it).
	// Placeholders are expanded, e.g. {env.ACME_ACCOUNT_KEY} or
	// {file./etc/caddy/account.pem}.
	AccountKey string `json:"account_key,omitempty"`

	// A file holding the PEM-encoded private key of an existing ACME
	// account: account_key, read from a file. At most one of the two.
	AccountKeyFile string `json:"account_key_file,omitempty"`

	// External account binding credentials, if the CA requires them.
	ExternalAccount *acme.EAB `json:"external_account,omitempty"`

	// How long the CA may take to decide, as in the stock acme issuer:
	// to validate a challenge once certflow asked it to, and to issue the
	// certificate once the order is finalized. Default: no bound of its
	// own (challenge_timeout and the handshake's patience apply).
	// Before certflow took the stock meaning, this was the timeout of each
	// request to the CA, which is now request_timeout.
	ACMETimeout caddy.Duration `json:"acme_timeout,omitempty"`

	// Timeout of each HTTP request to the CA. Default: 30s.
	RequestTimeout caddy.Duration `json:"request_timeout,omitempty"`

	// Which of the chains the CA offers to use, with the stock acme
	// issuer's rules: smallest sorts them by size; then the first chain
	// with a certificate issued by one of any_common_name, else the first
	// whose root is one of root_common_name; else the first. Default: the
	// CA's default chain.
	PreferredChains *caddytls.ChainPreference `json:"preferred_chains,omitempty"`

	// The validity to ask the CA for: new orders carry notAfter = the time
	// the order is made + this. Not every CA honours it. Default: 0 (the
	// CA or the profile decides).
	CertificateLifetime caddy.Duration `json:"certificate_lifetime,omitempty"`

	// A caddy.network_proxy module through which certflow reaches the CA
	// (e.g. {"from": "url", "url": "http://proxy:3128"}). Default: the
	// environment's HTTP_PROXY, HTTPS_PROXY and NO_PROXY. The self-check
	// never uses a proxy: the CA connects directly.
	NetworkProxyRaw json.RawMessage `json:"network_proxy,omitempty" caddy:"namespace=caddy.network_proxy inline_key=from"`

	// Files of PEM-encoded CA certificates to trust when connecting to the
	// ACME server (for a private or test CA). Default: the system's roots.
	TrustedRootsPEMFiles []string `json:"trusted_roots_pem_files,omitempty"`

	// Which challenge types may be used. The first enabled type that the
	// CA offers is tried first, in the order http-01, tls-alpn-01, dns-01;
	// when validation of one type fails, the next attempt for that name
	// uses the next enabled type. dns-01 is enabled by configuring a DNS
	// provider, and is the only type that can obtain wildcard names. As
	// in the stock acme issuer, a DNS provider makes dns-01 the only type,
	// unless http or tls-alpn is explicitly enabled.
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

	// globals receives Caddy's global ACME options while a Caddyfile is
	// adapted (see globaloptions.go); nil otherwise.
	globals *caddytls.ACMEIssuer

	// proxy is the loaded network_proxy module's proxy function (nil: the
	// environment's), proxyKey a digest of its config for the engine pool.
	proxy    func(*http.Request) (*url.URL, error)
	proxyKey string

	observer  *observer // events and metrics of this instance (observer.go)
	engine    *issuer.Engine
	engineKey string // in enginePool; "" when none is held
	scheduler *issuer.Scheduler
	solverCfg solvers.Config
	options   *atomic.Pointer[issuer.Options] // the latest SetConfig's; set in Provision
	// issuerKey names certflow's own resources (certflow/<issuerKey>/…):
	// "certflow-" and the CA's key, as it always was, so name records,
	// holds and orders stay where they are. certKey is IssuerKey(): the
	// CA's key, which the stock acme issuer uses too, so both find the
	// certificates and challenge answers the other stored (see
	// migrate.go).
	issuerKey string
	certKey   string

	// renewal holds what forcing a renewal and serving its certificate
	// need: the policy's certmagic config and the TLS app (renew.go).
	renewal *renewalHooks

	// dnsProvider is the loaded challenges.dns.provider module; nil when
	// dns-01 is not configured.
	dnsProvider certmagic.DNSProvider
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
	for _, field := range []*string{&iss.CA, &iss.Email, &iss.AccountKeyFile, &iss.AccountKey} {
		v, err := repl.ReplaceOrErr(*field, true, true)
		if err != nil {
			if field == &iss.AccountKey {
				return fmt.Errorf("expanding placeholders in account_key: %w", err) // never echo a key
			}
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
	iss.issuerKey, iss.certKey = StateKeyForCA(iss.CA), issuer.CAKey(iss.CA)
	iss.renewal = newRenewalHooks(ctx)
	acquireRenewalSync(iss.logger) // serves certificates renewed by other nodes (cachesync.go); released in Cleanup

	if err := iss.provisionDNS(ctx, repl); err != nil {
		return err
	}

	if err := iss.provisionStockOptions(ctx); err != nil {
		return err
	}
	if err := iss.acquireEngine(); err != nil {
		return err
	}
	iss.solverCfg = solvers.Config{
		IssuerKey:      iss.certKey, // where certmagic serves answers from: acme/<IssuerKey()>/challenge_tokens
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
	if err := iss.validateStockOptions(); err != nil {
		return err
	}
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
	if iss.renewal != nil {
		releaseRenewalSync()
	}
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
		CertificateKeys:   iss.certificateKeys(cfg),
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
	iss.stockOrderOptions(opts)   // profile, lifetime, preferred chains, acme_timeout
	iss.renewalOptions(opts, cfg) // when certmagic renews (renew.go)
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
	// certificates stored under the issuer key certflow used before it
	// shared the stock issuer's are copied once, before certmagic looks
	// for them (migrate.go)
	iss.migrateCertificates(cfg.Storage)
	iss.renewal.magic.Store(cfg)
	iss.options.Store(opts)
	if iss.engine != nil {
		iss.engine.StartMaintenance(opts)
	}
}

// IssuerKey returns the key under which certmagic stores this issuer's
// certificates and looks for its challenge answers: the stock acme issuer's
// key for the same CA (the CA's host and path). The two issuers share it,
// so switching a policy from one to the other finds every certificate the
// other stored, and orders nothing; certflow's own resources stay under
// certflow/certflow-<the same key>/.
func (iss *Issuer) IssuerKey() string {
	if iss.certKey == "" {
		ca := iss.CA
		if ca == "" {
			ca = defaultCA
		}
		return issuer.CAKey(ca)
	}
	return iss.certKey
}

// certificateKeys are the issuer keys the policy's certificates are stored
// under: this issuer's first, then its other issuers' (certmagic loads a
// name's certificate from any of them).
func (iss *Issuer) certificateKeys(cfg *certmagic.Config) []string {
	keys := []string{iss.IssuerKey()}
	for _, other := range cfg.Issuers {
		if other == certmagic.Issuer(iss) {
			continue
		}
		if k, ok := issuerKeyOf(other); ok && k != "" && !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
	}
	return keys
}

// PreCheck refuses, before anything touches storage or the CA, names
// certflow does not accept (issuer.CheckName: a name that is not a valid DNS
// name or IP address in canonical form, or whose storage key another name
// has), names no enabled challenge type can validate, and names a
// well-known public CA never issues (as the stock acme issuer refuses
// them); those refusals are final (certmagic.ErrNoRetry). When a handshake
// waits (on demand), it also refuses a name certflow holds back now — its
// failure backoff, a hold on the name, its registered domain or the
// account longer than the handshake can wait, an open circuit to the CA —
// so that a policy with several issuers (issuers certflow acme) serves the
// handshake from the next one at once.
func (iss *Issuer) PreCheck(ctx context.Context, names []string, _ bool) error {
	for _, name := range names {
		if err := iss.canIssue(name); err != nil {
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

// canIssue reports, without any network call, whether this issuer could
// ever obtain a certificate for name.
func (iss *Issuer) canIssue(name string) error {
	if err := issuer.CanIssue(name, iss.challengeTypes()); err != nil {
		return err
	}
	ca := iss.CA
	if ca == "" {
		ca = defaultCA
	}
	return issuer.CanIssueFrom(ca, name)
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

// StateKeyForCA is the key of certflow's own resources for a CA
// (certflow/<key>/…): "certflow-" and the CA's key (its directory URL's
// host, then the path with slashes turned into hyphens, as certmagic's ACME
// issuer derives its issuer key). Until certflow shared the stock issuer's
// key, its certificates were stored under this key too.
func StateKeyForCA(ca string) string {
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
