package certflow

import (
	"encoding/json"

	"github.com/caddyserver/caddy/v2"
)

// The nested configuration of the tls.issuance.certflow module (the Issuer
// struct is in module.go).

// ChallengesConfig enables or disables challenge types.
type ChallengesConfig struct {
	// HTTP-01 settings.
	HTTP *ChallengeTypeConfig `json:"http,omitempty"`
	// TLS-ALPN-01 settings.
	TLSALPN *ChallengeTypeConfig `json:"tls-alpn,omitempty"`
	// DNS-01 settings. DNS-01 is enabled when a provider is configured.
	DNS *DNSChallengeConfig `json:"dns,omitempty"`

	// The stock acme issuer's host to bind its own challenge listeners
	// to. Accepted and not needed: certflow starts no listener, Caddy's
	// own servers answer HTTP-01 and TLS-ALPN-01 from storage.
	BindHost string `json:"bind_host,omitempty"`

	// The stock acme issuer's switch for answering challenges through
	// storage. Accepted and not needed: certflow always presents answers
	// in storage, where every Caddy instance sharing it answers them.
	Distributed *bool `json:"distributed,omitempty"`
}

// ChallengeTypeConfig configures one challenge type.
type ChallengeTypeConfig struct {
	// Never use this challenge type.
	Disabled bool `json:"disabled,omitempty"`

	// Use this type even when a DNS provider is configured (which, as in
	// the stock acme issuer, otherwise makes dns-01 the only type).
	Enabled bool `json:"enabled,omitempty"`

	// The stock acme issuer's port for its own challenge listener.
	// Accepted and not needed: certflow starts no listener; Caddy's HTTP
	// server (HTTP-01, on its http_port) and TLS handshakes (TLS-ALPN-01,
	// on its https_port) answer, and the CA must reach them on 80 and 443.
	AlternatePort int `json:"alternate_port,omitempty"`
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
