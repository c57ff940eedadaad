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
	"errors"
	"fmt"
	"net"
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
	// CA offers is tried first, in the order http-01, tls-alpn-01; when
	// validation of one type fails, the next attempt for that name uses the
	// next enabled type.
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
	engineKey string
	solverCfg solvers.Config
	options   *atomic.Pointer[issuer.Options] // the latest SetConfig's; set in Provision
	issuerKey string
}

// ChallengesConfig enables or disables challenge types.
type ChallengesConfig struct {
	// HTTP-01 settings.
	HTTP *ChallengeTypeConfig `json:"http,omitempty"`
	// TLS-ALPN-01 settings.
	TLSALPN *ChallengeTypeConfig `json:"tls-alpn,omitempty"`
}

// ChallengeTypeConfig configures one challenge type.
type ChallengeTypeConfig struct {
	// Never use this challenge type.
	Disabled bool `json:"disabled,omitempty"`
}

// SelfCheckConfig configures the self-check that runs before a challenge is
// accepted. HTTP-01 fetches http://<name>:<port>/.well-known/acme-challenge/<token>
// and compares the body; TLS-ALPN-01 does a handshake with acme-tls/1 to
// <name>:<tlsalpn_port> and checks the challenge certificate.
type SelfCheckConfig struct {
	// Skip the self-check for HTTP-01 and TLS-ALPN-01.
	Disabled bool `json:"disabled,omitempty"`
	// DNS resolvers (host:port) used to resolve the name as the CA would.
	// Default: the system's resolver.
	Resolvers []string `json:"resolvers,omitempty"`
	// The port the HTTP-01 check connects to. Default: 80.
	HTTPPort int `json:"http_port,omitempty"`
	// The port the TLS-ALPN-01 check connects to. Default: 443.
	TLSALPNPort int `json:"tlsalpn_port,omitempty"`
	// How long to wait between failed checks. Default: 2s.
	Interval caddy.Duration `json:"interval,omitempty"`
	// How long one check attempt may take. Default: 10s.
	AttemptTimeout caddy.Duration `json:"attempt_timeout,omitempty"`
	// How long a challenge may keep failing its self-check before it
	// fails. Default: 2m.
	Timeout caddy.Duration `json:"timeout,omitempty"`
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

	account := issuer.AccountConfig{
		CA:                   iss.CA,
		Email:                iss.Email,
		AccountKeyFile:       iss.AccountKeyFile,
		EAB:                  iss.ExternalAccount,
		TrustedRootsPEMFiles: iss.TrustedRootsPEMFiles,
		RequestTimeout:       time.Duration(iss.ACMETimeout),
	}
	engine, key, err := issuer.AcquireEngine(account, iss.logger)
	if err != nil {
		return fmt.Errorf("setting up the ACME client for %s: %w", iss.CA, err)
	}
	iss.engine, iss.engineKey = engine, key

	issuer.DefaultScheduler().Configure(issuer.SchedulerLimits{
		MaxLive:   iss.MaxConcurrentChallenges,
		MaxQueued: iss.MaxQueuedChallenges,
	})

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
	return nil
}

// Validate checks the configuration for mistakes Provision does not catch.
func (iss *Issuer) Validate() error {
	if len(iss.challengeTypes()) == 0 {
		return errors.New("every challenge type is disabled: enable http-01 or tls-alpn-01")
	}
	if iss.MaxConcurrentChallenges < 0 {
		return fmt.Errorf("max_concurrent_challenges must not be negative, got %d", iss.MaxConcurrentChallenges)
	}
	if iss.MaxQueuedChallenges < 0 {
		return fmt.Errorf("max_queued_challenges must not be negative, got %d", iss.MaxQueuedChallenges)
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
	if iss.engineKey != "" {
		return issuer.ReleaseEngine(iss.engineKey)
	}
	return nil
}

// SetConfig is called by Caddy with the policy's certmagic config, possibly
// more than once; the latest one wins for new requests.
func (iss *Issuer) SetConfig(cfg *certmagic.Config) {
	if iss.shadow != nil {
		iss.shadow.SetConfig(cfg)
	}
	opts := &issuer.Options{
		Storage:           cfg.Storage,
		IssuerKey:         iss.issuerKey,
		ChallengeTypes:    iss.challengeTypes(),
		Solvers:           iss.buildSolvers(cfg.Storage),
		SelfCheckDisabled: iss.selfCheck().Disabled,
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
// with its enabled challenge types. Refusals are final (certmagic.ErrNoRetry).
func (iss *Issuer) PreCheck(_ context.Context, names []string, _ bool) error {
	types := iss.challengeTypes()
	for _, name := range names {
		if err := issuer.CanIssue(name, types); err != nil {
			return certmagic.ErrNoRetry{Err: err}
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
	if iss.engine == nil {
		return errors.New("certflow issuer used before it was provisioned")
	}
	return iss.engine.Revoke(ctx, cert.CertificatePEM, cert.PrivateKeyPEM, reason)
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
	return types
}

func (iss *Issuer) buildSolvers(storage certmagic.Storage) map[string]solvers.Solver {
	cfg := iss.solverCfg
	cfg.Storage = storage
	return map[string]solvers.Solver{
		acme.ChallengeTypeHTTP01:    solvers.NewHTTP01(cfg),
		acme.ChallengeTypeTLSALPN01: solvers.NewTLSALPN01(cfg),
	}
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
