package bench

import (
	"context"
	"crypto/x509"
	"fmt"
	"path/filepath"
	"time"

	"github.com/certflow/certflow/integration/rig"
)

// measure runs the warm-up, the burst of new names and the cached
// handshakes against a ready Caddy and collects every figure.
func (r *run) measure(ctx context.Context, ca *rig.CA, proc *caddyProcess) (*RunResult, error) {
	res := &RunResult{Issuer: r.issuer, Scenario: r.scenario, Round: r.round}
	roots := ca.IssuerRoots()

	sampler := startRSSSampler(ctx, proc.PID)
	defer func() { _, _ = sampler.Stop() }() // idempotent; the result is taken below

	warmName, err := r.warmUp(ctx, roots, res)
	if err != nil {
		return nil, err
	}
	ca.ResetCounts()
	cpuStart, err := readCPU(proc.PID)
	if err != nil {
		return nil, err
	}
	issued, err := r.burstPhase(ctx, roots, proc, res)
	if err != nil {
		return nil, err
	}
	cpuBurst, err := readCPU(proc.PID)
	if err != nil {
		return nil, err
	}
	res.BurstCPU = cpuBurst - cpuStart

	if res.Settle, err = settle(ctx, proc.PID); err != nil {
		return nil, err
	}
	r.cachedPhase(ctx, roots, append([]string{warmName}, issued...), res)
	cpuEnd, err := readCPU(proc.PID)
	if err != nil {
		return nil, err
	}
	res.CPU = cpuEnd - cpuStart

	res.CARequests = map[string]int{}
	for _, kind := range countedKinds {
		res.CARequests[kind] = ca.Count(kind)
	}
	res.CATotal = len(ca.Requests())
	mem, err := readMemStatus(proc.PID)
	if err != nil {
		return nil, err
	}
	res.PeakRSS = mem.HWM
	if res.SampledRSS, err = sampler.Stop(); err != nil {
		return nil, err
	}
	if !proc.running() {
		return nil, fmt.Errorf("caddy (pid %d) exited during the run: %v; its output is in %s", proc.PID, proc.ExitErr(), proc.LogPath)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("benchmark interrupted: %w", err)
	}
	return res, nil
}

// warmUp issues one name, so the ACME account registration (and the first
// connections to the CA) are not part of the figures, and returns it.
func (r *run) warmUp(ctx context.Context, roots *x509.CertPool, res *RunResult) (string, error) {
	name := fmt.Sprintf("warmup-%d.bench.test", r.seq)
	took, err := handshake(ctx, r.httpsAddr(), name, roots, r.b.opts.HandshakeTimeout)
	if err != nil {
		return "", fmt.Errorf("warm-up issuance for %s with %s failed after %s: %w (Caddy's log: %s)",
			name, r.issuer, took.Round(time.Millisecond), err, filepath.Join(r.dir, "caddy.log"))
	}
	res.WarmUp = took
	return name, nil
}

// burstPhase handshakes the scenario's new names with its concurrency,
// records latencies, failures and the wall time in res, and returns the
// names whose handshake succeeded. With Options.TraceDir it captures a
// trace and a CPU profile of Caddy meanwhile.
func (r *run) burstPhase(ctx context.Context, roots *x509.CertPool, proc *caddyProcess, res *RunResult) ([]string, error) {
	opts := r.b.opts
	var capt *capture
	if opts.TraceDir != "" {
		base := fmt.Sprintf("%03d-%s-r%d-%s", r.seq, r.scenario, r.round, r.issuer)
		capt = startCapture(ctx, proc.adminAddr, opts.TraceDir, base, opts.TraceSeconds)
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
