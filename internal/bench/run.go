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

	// keepDir keeps the run's directory for a post-mortem even without
	// Options.Keep (set when Pebble would not stop).
	keepDir bool
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
		if b.opts.Keep || r.keepDir {
			return
		}
		// removed when the benchmark ends, not now: on a file system
		// without a journal ext4 skips recently deleted inodes (for
		// minutes) on every file it creates, so deleting thousands of
		// files here would slow the next run's storage writes
		b.finishedDirs = append(b.finishedDirs, r.dir)
	}()
	if err := r.choosePorts(); err != nil {
		return nil, err
	}

	ca, err := rig.StartCA(rig.CAOptions{HTTPPort: r.httpPort, TLSPort: r.httpsPort, DNSAddr: b.dns.Addr, Dir: r.dir})
	if err != nil {
		return nil, fmt.Errorf("starting Pebble: %w", err)
	}
	defer func() {
		if closeErr := r.closeCA(ca); closeErr != nil {
			err = errors.Join(err, closeErr)
		}
	}()

	proc, err := r.startCaddy(ca)
	if err != nil {
		return nil, err
	}
	defer func() {
		if stopErr := proc.stop(); stopErr != nil {
			err = errors.Join(err, fmt.Errorf("stopping Caddy: %w", stopErr))
			return
		}
		if raceErr := proc.raceReport(); raceErr != nil {
			res, err = nil, errors.Join(err, raceErr)
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
