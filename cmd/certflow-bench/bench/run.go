package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/certflow/certflow/integration/rig"
)

// cachedHandshakeTimeout bounds a handshake to a name already issued.
const cachedHandshakeTimeout = 10 * time.Second

// countedKinds are the CA request kinds reported per new name.
var countedKinds = []string{
	rig.KindNewOrder, rig.KindAuthz, rig.KindChall, rig.KindFinalize,
	rig.KindOrder, rig.KindCert, rig.KindNonce,
}

// run is one run being set up and measured.
type run struct {
	b        *bench
	issuer   string
	scenario Scenario
	round    int
	seq      int // 1-based number of the run in the benchmark
	dir      string

	httpPort, httpsPort, adminPort int
}

// runOnce starts a fresh CA and a fresh Caddy with issuer, measures the
// scenario against it and stops both. Failed handshakes are results; the
// error is for a run that could not be measured (Caddy not starting, the
// warm-up failing, the benchmark being interrupted).
func (b *bench) runOnce(ctx context.Context, issuer string, sc Scenario, round, seq int) (res *RunResult, err error) {
	r := &run{b: b, issuer: issuer, scenario: sc, round: round, seq: seq}
	r.dir, err = os.MkdirTemp(b.opts.WorkDir, fmt.Sprintf("certflow-bench-%03d-%s-%s-", seq, sc, issuer))
	if err != nil {
		return nil, fmt.Errorf("creating the run's directory: %w", err)
	}
	defer func() {
		if b.opts.Keep {
			return
		}
		if rmErr := os.RemoveAll(r.dir); rmErr != nil {
			err = errors.Join(err, fmt.Errorf("removing the run's directory: %w", rmErr))
		}
	}()
	if err := r.choosePorts(); err != nil {
		return nil, err
	}

	ca, err := rig.StartCA(rig.CAOptions{HTTPPort: r.httpPort, TLSPort: r.httpsPort, DNSAddr: b.dns.Addr, Dir: r.dir})
	if err != nil {
		return nil, fmt.Errorf("starting Pebble: %w", err)
	}
	defer func() {
		if closeErr := ca.Close(); closeErr != nil {
			err = errors.Join(err, fmt.Errorf("stopping Pebble: %w", closeErr))
		}
	}()

	proc, err := r.startCaddy(ca)
	if err != nil {
		return nil, err
	}
	defer func() {
		if stopErr := proc.stop(); stopErr != nil {
			err = errors.Join(err, fmt.Errorf("stopping Caddy: %w", stopErr))
		}
	}()
	if err := proc.waitReady(ctx, r.httpsAddr()); err != nil {
		return nil, err
	}
	return r.measure(ctx, ca, proc)
}

// choosePorts picks three distinct free loopback ports for Caddy's HTTP,
// HTTPS and admin listeners. Pebble is told the first two at StartCA.
func (r *run) choosePorts() error {
	const attempts = 20
	seen := map[int]bool{}
	var ports []int
	for range attempts {
		p, err := rig.FreePort()
		if err != nil {
			return err
		}
		if !seen[p] {
			seen[p] = true
			ports = append(ports, p)
		}
		if len(ports) == 3 {
			r.httpPort, r.httpsPort, r.adminPort = ports[0], ports[1], ports[2]
			return nil
		}
	}
	return fmt.Errorf("no three distinct free ports on 127.0.0.1 after %d attempts", attempts)
}

// httpsAddr is where handshakes go.
func (r *run) httpsAddr() string { return fmt.Sprintf("127.0.0.1:%d", r.httpsPort) }

// startCaddy writes the run's Caddy config and starts Caddy with it.
func (r *run) startCaddy(ca *rig.CA) (*caddyProcess, error) {
	iss, err := issuerObject(r.issuer, issuerEnv{
		directoryURL: ca.DirectoryURL,
		serverRoots:  ca.ServerRootsFile,
		dnsAddr:      r.b.dns.Addr,
		httpPort:     r.httpPort,
	})
	if err != nil {
		return nil, err
	}
	cfg, err := rig.CaddyConfig{
		AdminListen: fmt.Sprintf("127.0.0.1:%d", r.adminPort),
		HTTPPort:    r.httpPort,
		HTTPSPort:   r.httpsPort,
		StorageRoot: filepath.Join(r.dir, "storage"),
		AskURL:      r.b.askURL,
		Issuer:      iss,
		LogLevel:    r.b.opts.LogLevel,
		LogFile:     filepath.Join(r.dir, "caddy.log"),
	}.JSON()
	if err != nil {
		return nil, fmt.Errorf("building the Caddy config: %w", err)
	}
	configPath := filepath.Join(r.dir, "caddy.json")
	if err := os.WriteFile(configPath, cfg, 0o600); err != nil {
		return nil, fmt.Errorf("writing the Caddy config: %w", err)
	}
	return startCaddy(r.b.opts.CaddyBinary, configPath, r.dir, fmt.Sprintf("127.0.0.1:%d", r.adminPort))
}

// measure runs the warm-up, the burst of new names and the cached
// handshakes against a ready Caddy and collects every figure.
func (r *run) measure(ctx context.Context, ca *rig.CA, proc *caddyProcess) (*RunResult, error) {
	opts := r.b.opts
	roots := ca.IssuerRoots()
	addr := r.httpsAddr()
	res := &RunResult{Issuer: r.issuer, Scenario: r.scenario, Round: r.round}

	sampler := startRSSSampler(ctx, proc.pid)
	defer func() { _, _ = sampler.Stop() }() // idempotent; the result is taken below

	warmName := fmt.Sprintf("warmup-%d.bench.test", r.seq)
	took, err := handshake(ctx, addr, warmName, roots, opts.HandshakeTimeout)
	if err != nil {
		return nil, fmt.Errorf("warm-up issuance for %s with %s failed after %s: %w (Caddy's log: %s)",
			warmName, r.issuer, took.Round(time.Millisecond), err, filepath.Join(r.dir, "caddy.log"))
	}
	res.WarmUp = took

	ca.ResetCounts()
	cpuStart, err := readCPU(proc.pid)
	if err != nil {
		return nil, err
	}
	var capt *capture
	if opts.TraceDir != "" {
		base := fmt.Sprintf("%03d-%s-r%d-%s", r.seq, r.scenario, r.round, r.issuer)
		capt = startCapture(ctx, proc.adminAddr, opts.TraceDir, base, opts.TraceSeconds)
	}

	names := make([]string, r.scenario.Names)
	for i := range names {
		names[i] = fmt.Sprintf("b%d-%d.bench.test", r.seq, i)
	}
	start := time.Now()
	outcomes := burst(ctx, names, r.scenario.Concurrency, func(ctx context.Context, name string) (time.Duration, error) {
		return handshake(ctx, addr, name, roots, opts.HandshakeTimeout)
	})
	res.Wall = time.Since(start)
	cpuBurst, err := readCPU(proc.pid)
	if err != nil {
		return nil, err
	}
	res.BurstCPU = cpuBurst - cpuStart

	issuedNames := []string{warmName}
	for _, o := range outcomes {
		if o.err != nil {
			res.Failures = append(res.Failures, Failure{Name: o.name, Kind: errorKind(o.err), After: o.took, Err: o.err.Error()})
			continue
		}
		res.Issued = append(res.Issued, o.took)
		issuedNames = append(issuedNames, o.name)
	}
	if capt != nil {
		if err := capt.Wait(); err != nil {
			return nil, fmt.Errorf("capturing a trace of Caddy: %w", err)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("benchmark interrupted: %w", err)
	}

	for i := range opts.CachedHandshakes {
		name := issuedNames[i%len(issuedNames)]
		took, err := handshake(ctx, addr, name, roots, cachedHandshakeTimeout)
		if err != nil {
			res.CachedFailures = append(res.CachedFailures, Failure{Name: name, Kind: errorKind(err), After: took, Err: err.Error()})
			continue
		}
		res.Cached = append(res.Cached, took)
	}
	cpuEnd, err := readCPU(proc.pid)
	if err != nil {
		return nil, err
	}
	res.CPU = cpuEnd - cpuStart

	res.CARequests = map[string]int{}
	for _, kind := range countedKinds {
		res.CARequests[kind] = ca.Count(kind)
	}
	res.CATotal = len(ca.Requests())

	mem, err := readMemStatus(proc.pid)
	if err != nil {
		return nil, err
	}
	res.PeakRSS = mem.HWM
	if res.SampledRSS, err = sampler.Stop(); err != nil {
		return nil, err
	}
	if !proc.running() {
		return nil, fmt.Errorf("caddy (pid %d) exited during the run: %v; its output is in %s", proc.pid, proc.waitErr, proc.outPath)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("benchmark interrupted: %w", err)
	}
	return res, nil
}
