package issuer

import (
	"crypto/x509"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/certflow/certflow/solvers"
)

// Options are the settings of one automation policy. They travel with each
// request, so two sites using certflow with different settings on the same
// CA never see each other's, and a reload applies to new requests only.
type Options struct {
	// Storage is the policy's certmagic storage: resources, tokens and
	// accounts live there.
	Storage certmagic.Storage
	// IssuerKey names certflow's own resources: they are stored under
	// certflow/<IssuerKey>/ (certflow-<the CA's key>, a prefix that never
	// changes).
	IssuerKey string
	// CertificateKeys are the issuer keys certmagic stores the policy's
	// certificates under (certificates/<key>/<name>/…): this issuer's
	// first, then the policy's other issuers'. A certificate stored there
	// for a name makes a request for it a renewal.
	CertificateKeys []string
	// ChallengeTypes are the enabled types, most preferred first.
	ChallengeTypes []string
	// Solvers by challenge type.
	Solvers map[string]solvers.Solver
	// PolicyID names the automation policy these options come from
	// (stable across reloads of the same settings): a challenge records
	// it, so maintenance cleans a leftover with that policy's solver.
	PolicyID string

	SelfCheckDisabled bool
	// SelfCheckAdvisory asks the CA to validate even when every
	// challenge type failed its self-check (the failures stay recorded).
	SelfCheckAdvisory bool
	// SelfCheckInterval is the wait between failed self-checks.
	SelfCheckInterval time.Duration
	// SelfCheckTimeout bounds how long a self-check may keep failing.
	SelfCheckTimeout time.Duration
	// ChallengeTimeout bounds a challenge from scheduled to final.
	ChallengeTimeout time.Duration
	// PollTimeout bounds how long the CA may take to decide: to validate
	// an accepted challenge, and to issue a finalized order (the stock
	// acme issuer's acme_timeout). Zero: no bound of its own.
	PollTimeout time.Duration

	// Profile is the ACME profile new orders ask for; "" leaves the
	// choice to the CA. It is checked against the CA's directory when an
	// order is made.
	Profile string
	// CertificateLifetime, when positive, sets the notAfter new orders ask
	// for, counted from the moment the order is made.
	CertificateLifetime time.Duration
	// PreferredChains chooses among the chains the CA offers.
	PreferredChains ChainPreference

	// RenewalWindowRatio, RenewCheckInterval and DisableARI are the
	// policy's certmagic settings that decide when a certificate is
	// renewed: they tell why a renewal happened. DisableARI also keeps
	// `replaces` out of new orders.
	RenewalWindowRatio float64
	RenewCheckInterval time.Duration
	DisableARI         bool

	// OnDemandBudget is how long a request with a handshake waiting may
	// take; a wait beyond it fails the request at once. Default:
	// OnDemandBudget (Caddy's read-header timeout less a margin).
	OnDemandBudget time.Duration

	// BackoffInitial and BackoffMax shape the failure backoff per name.
	BackoffInitial, BackoffMax time.Duration

	// RetentionCount and RetentionAge bound the kept history.
	RetentionCount int
	RetentionAge   time.Duration

	Logger *zap.Logger

	// Observer, if set, is told about every transition.
	Observer Observer
}

// Documented defaults.
const (
	DefaultSelfCheckInterval = 2 * time.Second
	DefaultSelfCheckTimeout  = 2 * time.Minute
	DefaultChallengeTimeout  = 5 * time.Minute
	DefaultBackoffInitial    = time.Minute
	DefaultBackoffMax        = 6 * time.Hour
	DefaultRetentionCount    = 1000
	DefaultRetentionAge      = 7 * 24 * time.Hour
)

// SetDefaults fills zero values with the documented defaults.
func (o *Options) SetDefaults() {
	if o.SelfCheckInterval <= 0 {
		o.SelfCheckInterval = DefaultSelfCheckInterval
	}
	if o.SelfCheckTimeout <= 0 {
		o.SelfCheckTimeout = DefaultSelfCheckTimeout
	}
	if o.ChallengeTimeout <= 0 {
		o.ChallengeTimeout = DefaultChallengeTimeout
	}
	if o.OnDemandBudget <= 0 {
		o.OnDemandBudget = OnDemandBudget
	}
	if o.BackoffInitial <= 0 {
		o.BackoffInitial = DefaultBackoffInitial
	}
	if o.BackoffMax <= 0 {
		o.BackoffMax = DefaultBackoffMax
	}
	if o.BackoffMax < o.BackoffInitial {
		o.BackoffMax = o.BackoffInitial
	}
	if o.RetentionCount <= 0 {
		o.RetentionCount = DefaultRetentionCount
	}
	if o.RetentionAge <= 0 {
		o.RetentionAge = DefaultRetentionAge
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
}

// Request is one call of certmagic's Issue.
type Request struct {
	CSR *x509.CertificateRequest
	// OnDemand is true when a TLS handshake is waiting for the result.
	OnDemand bool
	Options  *Options
}
