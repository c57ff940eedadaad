package bench

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/certflow/certflow/integration/rig"
)

// Bounds of waiting, after the warm-up and after the burst, for the
// storage work of the issuances to be over, so that it is counted whole.
const (
	// minStartToBurst lets certflow's first maintenance pass (3 s after
	// the config load) happen before the burst rather than inside it.
	minStartToBurst = 4 * time.Second
	// quietFor is how long the storage calls of every node must stay
	// unchanged: longer than certflow's index delay (2 s) once the last
	// issuance ended.
	quietFor = 2500 * time.Millisecond
	// quietPoll is how often the counts are read meanwhile.
	quietPoll = 250 * time.Millisecond
	// lateIssuanceQuiet is how long the CA may see no request at all
	// before the certificates still missing after the burst (stock
	// obtains on after a handshake gave up, rate-limited to 10 per 10 s
	// per process) are taken as never coming.
	lateIssuanceQuiet = 12 * time.Second
	// maxAfterBurst bounds the whole wait after the burst.
	maxAfterBurst = 3 * time.Minute
)

// measure runs the warm-up, the burst of new names and the cached
// handshakes against ready Caddy processes and collects every figure.
func (r *run) measure(ctx context.Context, ca *rig.CA) (*RunResult, error) {
	res := &RunResult{Issuer: r.issuer, Scenario: r.scenario, Round: r.round}
	roots := ca.IssuerRoots()
	started := time.Now()

	var samplers []*rssSampler
	for _, n := range r.nodes {
		s := startRSSSampler(ctx, n.proc.PID)
		samplers = append(samplers, s)
		defer func() { _, _ = s.Stop() }() // idempotent; the result is taken below
	}

	warmName, err := r.warmUp(ctx, roots, res)
	if err != nil {
		return nil, err
	}
	if wait := minStartToBurst - time.Since(started); wait > 0 {
		if err := sleepCtx(ctx, wait); err != nil {
			return nil, err
		}
	}
	if err := r.waitStorageQuiet(ctx, time.Now().Add(time.Minute)); err != nil {
		return nil, err
	}
	before, err := r.storageSnapshot(ctx)
	if err != nil {
		return nil, err
	}
	ca.ResetCounts()
	cpuStart, err := r.cpu()
	if err != nil {
		return nil, err
	}
	issued, err := r.burstPhase(ctx, roots, res)
	if err != nil {
		return nil, err
	}
	cpuBurst, err := r.cpu()
	if err != nil {
		return nil, err
	}
	res.BurstCPU = cpuBurst - cpuStart

	afterBurst := time.Now()
	if err := r.waitIssuancesOver(ctx, ca, afterBurst.Add(maxAfterBurst)); err != nil {
		return nil, err
	}
	res.Drain = time.Since(afterBurst)
	after, err := r.storageSnapshot(ctx)
	if err != nil {
		return nil, err
	}
	res.Certificates = ca.Count(rig.KindCert)
	res.Storage = after.minus(before)

	for _, n := range r.nodes {
		settled, err := settle(ctx, n.proc.PID)
		if err != nil {
			return nil, err
		}
		res.Settle = max(res.Settle, settled)
	}
	r.cachedPhase(ctx, roots, append([]string{warmName}, issued...), res)
	cpuEnd, err := r.cpu()
	if err != nil {
		return nil, err
	}
	res.CPU = cpuEnd - cpuStart

	res.CARequests = map[string]int{}
	for _, kind := range countedKinds {
		res.CARequests[kind] = ca.Count(kind)
	}
	res.CATotal = len(ca.Requests())
	if err := r.takeMemory(samplers, res); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("benchmark interrupted: %w", err)
	}
	return res, nil
}

// takeMemory records the nodes' peak and sampled RSS in res, and fails if
// a node exited during the run.
func (r *run) takeMemory(samplers []*rssSampler, res *RunResult) error {
	for i, n := range r.nodes {
		mem, err := readMemStatus(n.proc.PID)
		if err != nil {
			return err
		}
		res.PeakRSS = max(res.PeakRSS, mem.HWM)
		sampled, err := samplers[i].Stop()
		if err != nil {
			return err
		}
		res.SampledRSS = max(res.SampledRSS, sampled)
		if !n.proc.running() {
			return fmt.Errorf("caddy (pid %d) exited during the run: %v; its output is in %s", n.proc.PID, n.proc.ExitErr(), n.proc.LogPath)
		}
	}
	return nil
}

// cpu is the CPU time the run's Caddy processes used so far, together.
func (r *run) cpu() (time.Duration, error) {
	var total time.Duration
	for _, n := range r.nodes {
		d, err := readCPU(n.proc.PID)
		if err != nil {
			return 0, err
		}
		total += d
	}
	return total, nil
}

// waitIssuancesOver waits until the CA has issued a certificate for every
// name of the burst (or has seen no request for lateIssuanceQuiet: the
// missing ones are not coming), then until the storage is quiet, so that
// the storage figures hold the whole of every issuance, including what is
// written after its handshake returned.
func (r *run) waitIssuancesOver(ctx context.Context, ca *rig.CA, deadline time.Time) error {
	lastCount, lastChange := -1, time.Now()
	for ca.Count(rig.KindCert) < r.scenario.Names && time.Now().Before(deadline) {
		if n := len(ca.Requests()); n != lastCount {
			lastCount, lastChange = n, time.Now()
		} else if time.Since(lastChange) >= lateIssuanceQuiet {
			break
		}
		if err := sleepCtx(ctx, quietPoll); err != nil {
			return err
		}
	}
	return r.waitStorageQuiet(ctx, deadline)
}

// waitStorageQuiet waits until no node's storage calls changed for
// quietFor, or deadline passes (the figures are then taken as they are:
// a node's periodic work, a heartbeat say, may never leave a long gap).
func (r *run) waitStorageQuiet(ctx context.Context, deadline time.Time) error {
	last, err := r.storageCallTotal(ctx)
	if err != nil {
		return err
	}
	since := time.Now()
	for time.Since(since) < quietFor && time.Now().Before(deadline) {
		if err := sleepCtx(ctx, quietPoll); err != nil {
			return err
		}
		n, err := r.storageCallTotal(ctx)
		if err != nil {
			return err
		}
		if n != last {
			last, since = n, time.Now()
		}
	}
	return nil
}

// sleepCtx sleeps for d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return fmt.Errorf("benchmark interrupted: %w", ctx.Err())
	case <-t.C:
		return nil
	}
}

// warmUp issues one name, so the ACME account registration (and the first
// connections to the CA) are not part of the figures, and returns it.
func (r *run) warmUp(ctx context.Context, roots *x509.CertPool, res *RunResult) (string, error) {
	name := fmt.Sprintf("warmup-%d.bench.test", r.seq)
	took, err := handshake(ctx, r.httpsAddr(), name, roots, r.b.opts.HandshakeTimeout)
	if err != nil {
		return "", fmt.Errorf("warm-up issuance for %s with %s failed after %s: %w (Caddy's log: %s)",
			name, r.issuer, took.Round(time.Millisecond), err, filepath.Join(r.nodes[0].dir, "caddy.log"))
	}
	res.WarmUp = took
	return name, nil
}

// burstPhase handshakes the scenario's new names with its concurrency,
// records latencies, failures and the wall time in res, and returns the
// names whose handshake succeeded. With Options.TraceDir it captures a
// trace and a CPU profile of the first Caddy meanwhile.
func (r *run) burstPhase(ctx context.Context, roots *x509.CertPool, res *RunResult) ([]string, error) {
	opts := r.b.opts
	var capt *capture
	if opts.TraceDir != "" {
		base := fmt.Sprintf("%03d-%s-r%d-%s", r.seq, sanitize(r.scenario.String()), r.round, r.issuer)
		capt = startCapture(ctx, r.nodes[0].adminAddr(), opts.TraceDir, base, opts.TraceSeconds)
	}
	names := make([]string, r.scenario.Names)
	for i := range names {
		names[i] = fmt.Sprintf("b%d-%d.bench.test", r.seq, i)
	}
	addr := r.httpsAddr()
	start := time.Now()
	outcomes := burst(ctx, names, r.scenario.Concurrency, func(ctx context.Context, name string) (time.Duration, error) {
		return handshake(ctx, addr, name, roots, opts.HandshakeTimeout)
	})
	res.Wall = time.Since(start)

	var issued []string
	for _, o := range outcomes {
		if o.err != nil {
			res.Failures = append(res.Failures, Failure{Name: o.name, Kind: errorKind(o.err), After: o.took, Err: o.err.Error()})
			continue
		}
		res.Issued = append(res.Issued, o.took)
		issued = append(issued, o.name)
	}
	if capt != nil {
		if err := capt.Wait(); err != nil {
			return nil, fmt.Errorf("capturing a trace of Caddy: %w", err)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("benchmark interrupted: %w", err)
	}
	return issued, nil
}

// cachedPhase times Options.CachedHandshakes sequential handshakes to names
// already issued, round robin, and records them in res.
func (r *run) cachedPhase(ctx context.Context, roots *x509.CertPool, names []string, res *RunResult) {
	addr := r.httpsAddr()
	for i := range r.b.opts.CachedHandshakes {
		if ctx.Err() != nil {
			return // measure reports the interruption
		}
		name := names[i%len(names)]
		took, err := handshake(ctx, addr, name, roots, cachedHandshakeTimeout)
		if err != nil {
			res.CachedFailures = append(res.CachedFailures, Failure{Name: name, Kind: errorKind(err), After: took, Err: err.Error()})
			continue
		}
		res.Cached = append(res.Cached, took)
	}
}

var errNoMetric = errors.New("no storage metric on /metrics")
