package solvers

import (
	"time"

	"github.com/caddyserver/certmagic"
)

// Config is what the HTTP-01 and TLS-ALPN-01 solvers of one automation policy
// share: where tokens are presented and how the self-check reaches the name.
type Config struct {
	// Storage is the policy's certmagic storage; tokens are written where
	// certmagic's distributed solver (and so every Caddy instance sharing
	// the storage) looks for them.
	Storage certmagic.Storage

	// IssuerKey is the issuer's IssuerKey(); it names the storage prefix.
	IssuerKey string

	// Resolvers (host:port) used by the self-check to resolve names as the
	// CA would. Empty means the system's resolver.
	Resolvers []string

	// HTTPPort is the port the HTTP-01 self-check connects to (default 80).
	HTTPPort int

	// TLSALPNPort is the port the TLS-ALPN-01 self-check connects to
	// (default 443).
	TLSALPNPort int

	// AttemptTimeout bounds one self-check attempt (default 10s).
	AttemptTimeout time.Duration
}

const (
	defaultHTTPPort       = 80
	defaultTLSALPNPort    = 443
	defaultAttemptTimeout = 10 * time.Second
)

func (c Config) httpPort() int {
	if c.HTTPPort > 0 {
		return c.HTTPPort
	}
	return defaultHTTPPort
}

func (c Config) tlsALPNPort() int {
	if c.TLSALPNPort > 0 {
		return c.TLSALPNPort
	}
	return defaultTLSALPNPort
}

func (c Config) attemptTimeout() time.Duration {
	if c.AttemptTimeout > 0 {
		return c.AttemptTimeout
	}
	return defaultAttemptTimeout
}
