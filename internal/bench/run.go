package bench

import (
	"context"
	"encoding/json"
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

	nodes []*benchNode
	// httpLB and httpsLB are in front of the nodes when there are
	// several: the handshakes and the CA's validations go through them.
	httpLB, httpsLB *rig.Balancer
	// redis is the run's redis-server on Redis storage, with the key
	// prefix of the run's storage.
	redis       *rig.Redis
	redisPrefix string

	// keepDir keeps the run's directory for a post-mortem even without
	// Options.Keep (set when Pebble would not stop).
	keepDir bool
}

// benchNode is one Caddy process of a run.
type benchNode struct {
	index                          int
	dir                            string // its working directory
	httpPort, httpsPort, adminPort int
	proc                           *caddyProcess
}

func (n *benchNode) httpsAddr() string { return fmt.Sprintf("127.0.0.1:%d", n.httpsPort) }
func (n *benchNode) adminAddr() string { return fmt.Sprintf("127.0.0.1:%d", n.adminPort) }

// runOnce starts a fresh CA (and Redis, and balancers, as the scenario
// needs) and fresh Caddy processes with issuer, measures the scenario
// against them and stops everything. Failed handshakes are results; the
// error is for a run that could not be measured (Caddy not starting, the
// warm-up failing, the benchmark being interrupted).
func (b *bench) runOnce(ctx context.Context, issuer string, sc Scenario, round, seq int) (res *RunResult, err error) {
	r := &run{b: b, issuer: issuer, scenario: sc, round: round, seq: seq}
	r.dir, err = os.MkdirTemp(b.opts.WorkDir, fmt.Sprintf("certflow-bench-%03d-%s-%s-", seq, sanitize(sc.String()), issuer))
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
	if err := r.setUpNodes(); err != nil {
		return nil, err
	}
	if sc.nodes() > 1 {
		if r.httpLB, err = rig.StartBalancer(); err != nil {
			return nil, err
		}
		defer r.httpLB.Close()
		if r.httpsLB, err = rig.StartBalancer(); err != nil {
			return nil, err
		}
		defer r.httpsLB.Close()
		var https, http []string
		for _, n := range r.nodes {
			https = append(https, n.httpsAddr())
			http = append(http, fmt.Sprintf("127.0.0.1:%d", n.httpPort))
		}
		r.httpsLB.SetBackends(https)
		r.httpLB.SetBackends(http)
	}
	if sc.storage() == StorageRedis {
		redisDir := filepath.Join(r.dir, "redis")
		if err := os.MkdirAll(redisDir, 0o755); err != nil {
			return nil, fmt.Errorf("creating Redis's directory: %w", err)
		}
		if r.redis, err = rig.StartRedis(redisDir); err != nil {
			return nil, err
		}
		defer func() {
			if stopErr := r.redis.Close(); stopErr != nil {
				err = errors.Join(err, fmt.Errorf("stopping redis-server: %w", stopErr))
			}
		}()
		r.redisPrefix = fmt.Sprintf("bench-%d", seq)
	}

	httpPort, httpsPort := r.caPorts()
	ca, err := rig.StartCA(rig.CAOptions{HTTPPort: httpPort, TLSPort: httpsPort, DNSAddr: b.dns.Addr, Dir: r.dir})
	if err != nil {
		return nil, fmt.Errorf("starting Pebble: %w", err)
	}
	defer func() {
		if closeErr := r.closeCA(ca); closeErr != nil {
			err = errors.Join(err, closeErr)
		}
	}()

	for _, n := range r.nodes {
		if n.proc, err = r.startCaddy(ca, n); err != nil {
			return nil, err
		}
		defer func() {
			if stopErr := n.proc.stop(); stopErr != nil {
				err = errors.Join(err, fmt.Errorf("stopping Caddy: %w", stopErr))
				return
			}
			if raceErr := n.proc.raceReport(); raceErr != nil {
				res, err = nil, errors.Join(err, raceErr)
			}
		}()
	}
	for _, n := range r.nodes {
		if err := n.proc.waitReady(ctx, n.httpsAddr()); err != nil {
			return nil, err
		}
	}
	return r.measure(ctx, ca)
}

// sanitize makes a scenario name usable in a file name.
func sanitize(s string) string {
	out := []byte(s)
	for i, c := range out {
		if c == '/' || c == ':' {
			out[i] = '_'
		}
	}
	return string(out)
}

// setUpNodes creates the nodes' directories and picks their ports: three
// distinct free loopback ports each, for Caddy's HTTP, HTTPS and admin
// listeners.
func (r *run) setUpNodes() error {
	const attempts = 50
	seen := map[int]bool{}
	var ports []int
	want := 3 * r.scenario.nodes()
	for range attempts * r.scenario.nodes() {
		if len(ports) == want {
			break
		}
		p, err := rig.FreePort()
		if err != nil {
			return err
		}
		if !seen[p] {
			seen[p] = true
			ports = append(ports, p)
		}
	}
	if len(ports) < want {
		return fmt.Errorf("no %d distinct free ports on 127.0.0.1", want)
	}
	for i := range r.scenario.nodes() {
		dir := filepath.Join(r.dir, fmt.Sprintf("node-%d", i))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("creating a node's directory: %w", err)
		}
		r.nodes = append(r.nodes, &benchNode{index: i, dir: dir,
			httpPort: ports[3*i], httpsPort: ports[3*i+1], adminPort: ports[3*i+2]})
	}
	return nil
}

// caPorts are where the CA validates: the balancers with several nodes,
// else the node's own ports.
func (r *run) caPorts() (http, https int) {
	if r.httpLB != nil {
		return r.httpLB.Port, r.httpsLB.Port
	}
	return r.nodes[0].httpPort, r.nodes[0].httpsPort
}

// httpsAddr is where handshakes go: the HTTPS balancer with several nodes.
func (r *run) httpsAddr() string {
	if r.httpsLB != nil {
		return r.httpsLB.Addr()
	}
	return r.nodes[0].httpsAddr()
}

// storageRoot is the file-system storage's directory, shared by the nodes.
func (r *run) storageRoot() string { return filepath.Join(r.dir, "storage") }

// storageConfig is the config's storage: the benchmark's counting storage
// around file_system or redis, for both issuers alike.
func (r *run) storageConfig() map[string]any {
	inner := map[string]any{"module": "file_system", "root": r.storageRoot()}
	if r.redis != nil {
		inner = map[string]any{"module": "redis", "address": []string{r.redis.Addr}, "key_prefix": r.redisPrefix}
	}
	return map[string]any{"module": "certflow_bench_counting", "inner": inner}
}

// startCaddy writes a node's Caddy config and starts Caddy with it.
func (r *run) startCaddy(ca *rig.CA, n *benchNode) (*caddyProcess, error) {
	httpPort, _ := r.caPorts()
	iss, err := issuerObject(r.issuer, issuerEnv{
		directoryURL: ca.DirectoryURL,
		serverRoots:  ca.ServerRootsFile,
		dnsAddr:      r.b.dns.Addr,
		httpPort:     httpPort,
	})
	if err != nil {
		return nil, err
	}
	cfg, err := rig.CaddyConfig{
		AdminListen: n.adminAddr(),
		HTTPPort:    n.httpPort,
		HTTPSPort:   n.httpsPort,
		StorageRoot: r.storageRoot(),
		AskURL:      r.b.askURL,
		Issuer:      iss,
		LogLevel:    r.b.opts.LogLevel,
		LogFile:     filepath.Join(n.dir, "caddy.log"),
	}.Build()
	if err != nil {
		return nil, fmt.Errorf("building the Caddy config: %w", err)
	}
	cfg["storage"] = r.storageConfig()
	configPath := filepath.Join(n.dir, "caddy.json")
	if err := writeJSON(configPath, cfg); err != nil {
		return nil, fmt.Errorf("writing the Caddy config: %w", err)
	}
	return startCaddy(r.b.opts.CaddyBinary, configPath, n.dir, n.adminAddr())
}

// writeJSON writes v as JSON to path.
func writeJSON(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}
