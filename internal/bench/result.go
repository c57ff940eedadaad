package bench

import "time"

// Failure is one failed handshake.
type Failure struct {
	// Name is the SNI of the handshake.
	Name string
	// Kind is the error's kind (see errorKind), e.g. "EOF" or "timeout".
	Kind string
	// After is how long the handshake took before it failed.
	After time.Duration
	// Err is the error's text.
	Err string
}

// RunResult is what one run measured: one Caddy process with one issuer,
// one scenario, one round.
type RunResult struct {
	// Issuer is Stock or Certflow; Scenario and Round say which run it was.
	Issuer   string
	Scenario Scenario
	Round    int
	// WarmUp is the latency of the warm-up issuance, which includes the
	// ACME account registration; it is not part of any other figure.
	WarmUp time.Duration
	// Issued are the latencies of the successful first handshakes of new
	// names, each of which waited for its certificate.
	Issued []time.Duration
	// Failures are the failed first handshakes of new names.
	Failures []Failure
	// Wall is the wall time of the burst, from its first handshake's start
	// until its last one returned.
	Wall time.Duration
	// Drain is how long after the burst the issuances went on (stock
	// obtains on after a handshake gave up) and their storage work with
	// them, until the storage was quiet (see Storage).
	Drain time.Duration
	// Settle is how long the run waited after the burst for Caddy to go
	// idle (at most 5 s) before the cached handshakes.
	Settle time.Duration
	// Cached are the latencies of handshakes to names already issued.
	Cached []time.Duration
	// CachedFailures are the failed cached handshakes.
	CachedFailures []Failure
	// PeakRSS is Caddy's VmHWM at the end of the run (peak of its life).
	PeakRSS int64
	// SampledRSS is the largest VmRSS seen every 100 ms during the run.
	SampledRSS int64
	// BurstCPU is the CPU time (user + system) Caddy used during the burst;
	// CPU is the CPU time from the end of the warm-up to the end of the
	// cached handshakes (the settling wait included).
	BurstCPU, CPU time.Duration
	// CARequests counts the requests the CA received after the warm-up,
	// by kind (rig.Kind* constants); CATotal counts all of them.
	CARequests map[string]int
	CATotal    int
	// Certificates is how many certificates the CA issued for the burst
	// (its certificate downloads), what the storage work is divided by.
	Certificates int
	// Storage is the storage work of the burst, until every issuance of
	// it was over.
	Storage StorageFigures
}
