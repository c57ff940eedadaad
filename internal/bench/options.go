package bench

import (
	"errors"
	"fmt"
	"io"
	"time"
)

// Issuer names, as used in reports and Options.Issuers.
const (
	// Stock is Caddy's own "acme" issuer.
	Stock = "stock"
	// Certflow is the tls.issuance.certflow issuer.
	Certflow = "certflow"
)

// Options configures Run.
type Options struct {
	// CaddyBinary is the Caddy executable with certflow compiled in (see
	// BuildCaddy). Required.
	CaddyBinary string
	// Scenarios are the cases to run, in order. Required.
	Scenarios []Scenario
	// Issuers are the issuers to run, Stock and Certflow by default; one
	// alone (e.g. to profile certflow) leaves the ratios undefined.
	Issuers []string
	// Rounds is how many times each single-name scenario is repeated
	// (each round a fresh Caddy per issuer); its figures are medians.
	// Other scenarios run once per issuer. Default 5.
	Rounds int
	// CachedHandshakes is how many handshakes to already-issued names are
	// timed after each burst. Default 200.
	CachedHandshakes int
	// HandshakeTimeout bounds one handshake for a new name, which waits for
	// its certificate. Default 90s.
	HandshakeTimeout time.Duration
	// WorkDir is the parent of each run's temporary directory (storage,
	// config, logs); it should be on the local disk, as the storage is.
	// Empty means os.TempDir().
	WorkDir string
	// Keep keeps each run's directory (storage with certflow's resources,
	// Caddy's config and log) instead of removing it.
	Keep bool
	// LogLevel is Caddy's log level; its log goes to a file in the run's
	// directory. Default "INFO", Caddy's own default.
	LogLevel string
	// TraceDir, when set, receives a Go execution trace and a CPU profile
	// of the Caddy process, taken through its admin endpoint's
	// /debug/pprof while the burst of each run is in flight, and a heap
	// profile taken when they end.
	TraceDir string
	// TraceSeconds is how long each trace and profile lasts. Default 3.
	TraceSeconds int
	// Progress receives a line per run as the benchmark goes. Nil
	// discards it.
	Progress io.Writer
}

// Defaults used when Options fields are zero.
const (
	defaultRounds           = 5
	defaultCachedHandshakes = 200
	defaultHandshakeTimeout = 90 * time.Second
	defaultLogLevel         = "INFO"
	defaultTraceSeconds     = 3
	// maxRounds and maxCachedHandshakes keep every loop bounded.
	maxRounds           = 1000
	maxCachedHandshakes = 100000
)

// withDefaults returns o with zero fields set to their defaults, or an error
// for settings that cannot work.
func (o Options) withDefaults() (Options, error) {
	if o.CaddyBinary == "" {
		return o, errors.New("bench options: CaddyBinary is required")
	}
	if len(o.Scenarios) == 0 {
		return o, errors.New("bench options: no scenarios")
	}
	if len(o.Issuers) == 0 {
		o.Issuers = []string{Stock, Certflow}
	}
	seen := map[string]bool{}
	for _, iss := range o.Issuers {
		if iss != Stock && iss != Certflow || seen[iss] {
			return o, fmt.Errorf("bench options: issuers must be %q and/or %q, each once; got %q", Stock, Certflow, o.Issuers)
		}
		seen[iss] = true
	}
	if o.Rounds == 0 {
		o.Rounds = defaultRounds
	}
	if o.Rounds < 1 || o.Rounds > maxRounds {
		return o, fmt.Errorf("bench options: rounds must be from 1 to %d, got %d", maxRounds, o.Rounds)
	}
	if o.CachedHandshakes == 0 {
		o.CachedHandshakes = defaultCachedHandshakes
	}
	if o.CachedHandshakes < 1 || o.CachedHandshakes > maxCachedHandshakes {
		return o, fmt.Errorf("bench options: cached handshakes must be from 1 to %d, got %d", maxCachedHandshakes, o.CachedHandshakes)
	}
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = defaultHandshakeTimeout
	}
	if o.LogLevel == "" {
		o.LogLevel = defaultLogLevel
	}
	if o.TraceSeconds <= 0 {
		o.TraceSeconds = defaultTraceSeconds
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	return o, nil
}
