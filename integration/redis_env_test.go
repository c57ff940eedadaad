package integration

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/certflow/certflow/integration/rig"
	"github.com/certflow/certflow/issuer"
)

// Redis tests run several Caddy processes (integration/redisnode: certflow
// plus the caddy.storage.redis module) on one redis-server started by the
// test, with a TCP load balancer in the test process in front of the nodes'
// HTTPS ports and another in front of their HTTP ports. Pebble validates
// through the balancers, so a challenge is answered by whichever node the
// CA reaches.

const redisNodePackage = "github.com/certflow/certflow/integration/redisnode"

var (
	redisNodeOnce sync.Once
	redisNodePath string
	redisNodeErr  error
)

// redisNodeBinary builds integration/redisnode once per test binary.
func redisNodeBinary(t *testing.T) string {
	t.Helper()
	redisNodeOnce.Do(func() {
		// inside the directory TestMain removes at the end (it holds
		// XDG_DATA_HOME), else a temporary directory of its own
		var dir string
		var err error
		if xdg := os.Getenv("XDG_DATA_HOME"); xdg != "" {
			dir = filepath.Join(filepath.Dir(xdg), "redisnode-bin")
			err = os.MkdirAll(dir, 0o755)
		} else {
			dir, err = os.MkdirTemp("", "certflow-redisnode-bin-")
		}
		if err != nil {
			redisNodeErr = err
			return
		}
		redisNodePath = filepath.Join(dir, "caddy")
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		start := time.Now()
		redisNodeErr = rig.BuildPackage(ctx, redisNodePackage, redisNodePath)
		t.Logf("built %s in %s", redisNodePackage, time.Since(start).Round(time.Millisecond))
	})
	if redisNodeErr != nil {
		t.Fatalf("building the Redis node: %v", redisNodeErr)
	}
	return redisNodePath
}

// requireRedis returns redis-server's path; without it the test fails under
// CI=true and is skipped elsewhere.
func requireRedis(t *testing.T) {
	t.Helper()
	if _, err := rig.RedisServerPath(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true and %v: .ci/run installs it", err)
		}
		t.Skipf("skipping: %v", err)
	}
}

// startRedis starts a redis-server for t, stopped at its end.
func startRedis(t *testing.T) *rig.Redis {
	t.Helper()
	r, err := rig.StartRedis(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Logf("stopping redis-server: %v", err)
		}
	})
	t.Logf("redis-server pid %d on %s (appendonly, dir %s)", r.PID(), r.Addr, r.Dir)
	return r
}

// pebbleSerializer works around a lock-order inversion in Pebble v2.10.3
// that deadlocks its whole MemoryStore under concurrent load (seen in this
// test about one run in two): wfe.Authz holds an authorization's write lock
// while verifying the JWS (db.GetAccountByKey: store read lock), while
// NewOrder's db.FindValidAuthorization holds the store read lock and waits
// for that authorization's read lock, and another NewOrder's AddChallenge
// waits for the store write lock (which blocks new readers). Running each
// new-order request alone (every other request shares) breaks the cycle. The
// lock is taken in the CA's fault hook and released when the request's
// context ends, i.e. when Pebble's handler has returned. inner, if not nil,
// is the fault hook proper.
func pebbleSerializer(inner rig.Fault) rig.Fault {
	var mu sync.RWMutex
	return func(r *http.Request) (int, http.Header, string, bool) {
		if rig.KindOf(r) == rig.KindNewOrder {
			mu.Lock()
			go func() { <-r.Context().Done(); mu.Unlock() }()
		} else {
			mu.RLock()
			go func() { <-r.Context().Done(); mu.RUnlock() }()
		}
		if inner != nil {
			return inner(r)
		}
		return 0, nil, "", false
	}
}

// redisEnv is a world of Caddy processes on one Redis: DNS, Pebble behind
// the balancers, an ask endpoint.
type redisEnv struct {
	adminPorts map[string]int
	usedPorts  map[int]bool // ports handed out (not all bound yet)
	t          *testing.T
	binary     string
	redis      *rig.Redis
	prefix     string
	dns        *rig.DNS
	ca         *rig.CA
	askURL     string
	httpLB     *rig.Balancer
	httpsLB    *rig.Balancer
	nodes      []*node
	fileStore  string    // non-empty: nodes use file_system storage here instead of Redis
	killedAt   time.Time // when a node was SIGKILLed, if one was
	issuerOpts map[string]any
}

type redisEnvOptions struct {
	nodes     int
	fileStore bool           // one file_system storage instead of Redis (for the benchmark's baseline)
	issuer    map[string]any // issuer options set over nodeIssuer's
}

func newRedisEnv(t *testing.T, o redisEnvOptions) *redisEnv {
	t.Helper()
	requireRedis(t)
	re := &redisEnv{t: t, binary: redisNodeBinary(t), prefix: fmt.Sprintf("certflow-test-%d", time.Now().UnixNano()), issuerOpts: o.issuer}
	if o.fileStore {
		re.fileStore = t.TempDir()
	} else {
		re.redis = startRedis(t)
	}
	re.httpLB, re.httpsLB = startBalancer(t), startBalancer(t)
	re.adminPorts = map[string]int{}
	re.usedPorts = map[int]bool{re.httpLB.Port: true, re.httpsLB.Port: true}
	if re.redis != nil {
		re.usedPorts[re.redis.Port] = true
	}
	var https, http []string
	for i := 0; i < o.nodes; i++ {
		n := &node{name: fmt.Sprintf("n%d", i), dir: t.TempDir()}
		n.httpPort, n.httpsPort = re.freePort(), re.freePort()
		re.adminPorts[n.name] = re.freePort()
		re.nodes = append(re.nodes, n)
		https = append(https, n.addr())
		http = append(http, fmt.Sprintf("127.0.0.1:%d", n.httpPort))
	}
	re.httpsLB.SetBackends(https)
	re.httpLB.SetBackends(http)
	re.dns = startDNS(t)
	re.ca = startCA(t, rig.CAOptions{HTTPPort: re.httpLB.Port, TLSPort: re.httpsLB.Port, DNSAddr: re.dns.Addr})
	re.ca.SetFault(pebbleSerializer(nil))
	re.askURL = startAsk(t, nil)
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		keep, err := os.MkdirTemp("", "certflow-redis-logs-")
		if err != nil {
			return
		}
		for _, n := range re.nodes {
			logs, _ := filepath.Glob(filepath.Join(n.dir, "caddy-*.log"))
			for _, l := range logs {
				if b, err := os.ReadFile(l); err == nil {
					_ = os.WriteFile(filepath.Join(keep, n.name+"-"+filepath.Base(l)), b, 0o644)
				}
			}
		}
		t.Logf("the nodes' logs are kept in %s", keep)
	})
	t.Cleanup(func() {
		for _, n := range re.nodes {
			stopNode(t, n)
		}
	})
	return re
}

// freePort returns a free loopback port not handed out before by re: two
// nodes must not get the same port while neither has bound it yet.
func (re *redisEnv) freePort() int {
	re.t.Helper()
	for range 50 {
		p, err := rig.FreePort()
		if err != nil {
			re.t.Fatal(err)
		}
		if !re.usedPorts[p] {
			re.usedPorts[p] = true
			return p
		}
	}
	re.t.Fatal("no unused free port after 50 tries")
	return 0
}

func (re *redisEnv) issuer() map[string]any {
	iss := nodeIssuer(re.ca, re.dns, re.httpLB.Port, re.httpsLB.Port)
	for k, v := range re.issuerOpts {
		iss[k] = v
	}
	return iss
}

// start starts (or restarts) node i and waits until it serves.
func (re *redisEnv) start(i int) {
	t := re.t
	t.Helper()
	n := re.nodes[i]
	cfg := rig.CaddyConfig{
		AdminListen: fmt.Sprintf("127.0.0.1:%d", re.adminPorts[n.name]),
		HTTPPort:    n.httpPort, HTTPSPort: n.httpsPort,
		StorageRoot: filepath.Join(n.dir, "unused-storage"),
		AskURL:      re.askURL, Issuer: re.issuer(),
	}
	m, err := cfg.Build()
	if err != nil {
		t.Fatal(err)
	}
	if re.fileStore != "" {
		m["storage"] = map[string]any{"module": "file_system", "root": re.fileStore}
	} else {
		m["storage"] = map[string]any{"module": "redis", "address": []string{re.redis.Addr}, "key_prefix": re.prefix}
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	n.starts++
	cfgPath := filepath.Join(n.dir, fmt.Sprintf("caddy-%d.json", n.starts))
	if err := os.WriteFile(cfgPath, b, 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := rig.StartProcess(re.binary, cfgPath, n.dir, filepath.Join(n.dir, fmt.Sprintf("caddy-%d.log", n.starts)))
	if err != nil {
		t.Fatal(err)
	}
	n.proc = p
	if err := p.WaitReady(n.addr(), 30*time.Second); err != nil {
		t.Fatalf("node %s: %v\n%s", n.name, err, tail(p.Log(), 40))
	}
	t.Logf("node %s started (pid %d, start %d)", n.name, p.PID, n.starts)
}

func (re *redisEnv) startAll() {
	for i := range re.nodes {
		re.start(i)
	}
}

// handshakeAt does a verified handshake for sni with addr.
func (re *redisEnv) handshakeAt(addr, sni string, timeout time.Duration) (*x509.Certificate, error) {
	state, err := rig.Handshake(addr, sni, re.ca.IssuerRoots(), timeout)
	if err != nil {
		return nil, err
	}
	leaf := state.PeerCertificates[0]
	if !contains(leaf.DNSNames, sni) {
		return nil, fmt.Errorf("handshake for %s got a certificate for %v", sni, leaf.DNSNames)
	}
	return leaf, nil
}

// backends returns the nodes' HTTPS and HTTP addresses, in node order.
func (re *redisEnv) backends() (https, http []string) {
	for _, n := range re.nodes {
		https = append(https, n.addr())
		http = append(http, fmt.Sprintf("127.0.0.1:%d", n.httpPort))
	}
	return https, http
}

func (re *redisEnv) lbAddr() string { return fmt.Sprintf("127.0.0.1:%d", re.httpsLB.Port) }

type hsResult struct {
	serial   string
	err      error
	attempts int
}

// handshakeAll handshakes every name through the HTTPS balancer with at
// most conc at once; each name gets up to attempts tries (a connection to a
// node that dies mid-handshake fails, a client would retry).
func (re *redisEnv) handshakeAll(names []string, conc, attempts int, timeout time.Duration) map[string]hsResult {
	out := make(map[string]hsResult, len(names))
	var mu sync.Mutex
	sem := make(chan struct{}, conc)
	var wg sync.WaitGroup
	for _, name := range names {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			var r hsResult
			for r.attempts = 1; ; r.attempts++ {
				leaf, err := re.handshakeAt(re.lbAddr(), name, timeout)
				if err == nil {
					r.serial, r.err = leaf.SerialNumber.String(), nil
					break
				}
				r.err = err
				if r.attempts >= attempts {
					break
				}
				// a client's pause before it tries again: nothing to wait for
				time.Sleep(200 * time.Millisecond)
			}
			mu.Lock()
			out[name] = r
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

func namesN(prefix string, from, to int) []string {
	var out []string
	for i := from; i < to; i++ {
		out = append(out, fmt.Sprintf("%s-%03d.test", prefix, i))
	}
	return out
}

// liveNodes returns the nodes whose process is running.
func (re *redisEnv) liveNodes() []*node {
	var live []*node
	for _, nd := range re.nodes {
		if nd.proc == nil {
			continue
		}
		select {
		case <-nd.proc.Exited():
		default:
			live = append(live, nd)
		}
	}
	return live
}

// dumpGoroutines writes each live node's goroutine dump (admin pprof) to
// its directory and logs the paths, for diagnosing a stuck node.
func (re *redisEnv) dumpGoroutines() {
	for _, nd := range re.liveNodes() {
		url := fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/goroutine?debug=2", re.adminPorts[nd.name])
		c := &http.Client{Timeout: 5 * time.Second}
		resp, err := c.Get(url)
		if err != nil {
			re.t.Logf("goroutine dump of %s: %v", nd.name, err)
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		path := filepath.Join(os.TempDir(), fmt.Sprintf("certflow-redis-%s-goroutines-%d.txt", nd.name, time.Now().UnixNano()))
		_ = os.WriteFile(path, b, 0o644)
		re.t.Logf("goroutine dump of node %s (pid %d): %s", nd.name, nd.proc.PID, path)
	}
}

// dumpSelf writes this test process's goroutines (Pebble runs here) to a
// file and logs its path.
func dumpSelf(t *testing.T) {
	path := filepath.Join(os.TempDir(), fmt.Sprintf("certflow-redis-test-goroutines-%d.txt", time.Now().UnixNano()))
	f, err := os.Create(path)
	if err != nil {
		t.Logf("dumping goroutines: %v", err)
		return
	}
	defer f.Close()
	_ = pprof.Lookup("goroutine").WriteTo(f, 2)
	t.Logf("goroutine dump of the test process (Pebble, balancers): %s", path)
}

// logTails returns the last lines of every node's current log.
func (re *redisEnv) logTails(n int) string {
	var b strings.Builder
	for _, nd := range re.nodes {
		if nd.proc != nil {
			fmt.Fprintf(&b, "--- node %s (pid %d):\n%s\n", nd.name, nd.proc.PID, tail(nd.proc.Log(), n))
		}
	}
	return b.String()
}

// commands returns the Redis commands counted since before.
func (re *redisEnv) commandStats() map[string]int64 {
	re.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := re.redis.CommandStats(ctx)
	if err != nil {
		re.t.Fatal(err)
	}
	return s
}

func topCommands(by map[string]int64, per float64) string {
	type kv struct {
		k string
		v int64
	}
	var l []kv
	for k, v := range by {
		l = append(l, kv{k, v})
	}
	sort.Slice(l, func(i, j int) bool { return l[i].v > l[j].v })
	var parts []string
	for _, e := range l {
		parts = append(parts, fmt.Sprintf("%s=%.1f", e.k, float64(e.v)/per))
	}
	return strings.Join(parts, " ")
}

// flushIndexes makes every live node write the index updates it holds: a
// node's admin API flushes its own pending updates before it lists. The
// list asked for is of a name never used, so it reads one small folder.
func (re *redisEnv) flushIndexes() {
	re.t.Helper()
	c := &http.Client{Timeout: 30 * time.Second}
	for _, nd := range re.liveNodes() {
		url := fmt.Sprintf("http://127.0.0.1:%d/certflow/orders?name=index-flush.invalid&limit=1", re.adminPorts[nd.name])
		resp, err := c.Get(url)
		if err != nil {
			re.t.Fatalf("flushing node %s's index: %v", nd.name, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			re.t.Fatalf("flushing node %s's index: HTTP %d", nd.name, resp.StatusCode)
		}
	}
}

// storageCallsFlushed is storageCalls once every node has written its
// pending index updates, without the admin reads that made them write:
// the cost of a flush round with nothing pending is measured and taken off.
func (re *redisEnv) storageCallsFlushed() map[string]float64 {
	re.t.Helper()
	re.flushIndexes()
	flushed := re.storageCalls()
	re.flushIndexes()
	again := re.storageCalls()
	out := map[string]float64{}
	for k, v := range flushed {
		out[k] = v - (again[k] - v)
	}
	return out
}

// waitStorageAnswers waits, at most timeout, until every live node's admin
// API reads certflow's record of a known name from storage, and logs how
// long each took.
func (re *redisEnv) waitStorageAnswers(name string, timeout time.Duration) {
	re.t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	start := time.Now()
	for _, nd := range re.liveNodes() {
		url := fmt.Sprintf("http://127.0.0.1:%d/certflow/status/%s", re.adminPorts[nd.name], name)
		var last string
		for tries := 0; ; tries++ {
			resp, err := c.Get(url)
			if err == nil {
				b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
				_ = resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					break
				}
				last = fmt.Sprintf("HTTP %d: %s", resp.StatusCode, b)
			} else {
				last = err.Error()
			}
			if time.Since(start) > timeout || tries > 1000 {
				re.t.Fatalf("node %s does not read storage %s after Redis came back: %s", nd.name, timeout, last)
			}
			time.Sleep(50 * time.Millisecond)
		}
		re.t.Logf("node %s reads storage again %s after the wait began", nd.name, time.Since(start).Round(time.Millisecond))
	}
}

// storageCalls scrapes every live node's /metrics (admin endpoint) and
// returns certflow_storage_operations_total summed over them, by
// "operation/outcome". A killed node's counts die with it: compare only
// snapshots taken while the same nodes ran.
func (re *redisEnv) storageCalls() map[string]float64 {
	re.t.Helper()
	out := map[string]float64{}
	c := &http.Client{Timeout: 10 * time.Second}
	for _, nd := range re.liveNodes() {
		url := fmt.Sprintf("http://127.0.0.1:%d/metrics", re.adminPorts[nd.name])
		resp, err := c.Get(url)
		if err != nil {
			re.t.Fatalf("scraping node %s: %v", nd.name, err)
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
		_ = resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			re.t.Fatalf("scraping node %s: HTTP %d, %v", nd.name, resp.StatusCode, err)
		}
		found := false
		for _, line := range strings.Split(string(body), "\n") {
			rest, ok := strings.CutPrefix(line, storageCallsMetric+"{")
			if !ok {
				continue
			}
			labels, val, ok := strings.Cut(rest, "} ")
			if !ok {
				continue
			}
			v, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
			if err != nil {
				continue
			}
			var op, outcome string
			for _, kv := range strings.Split(labels, ",") {
				k, v, _ := strings.Cut(kv, "=")
				switch k {
				case "operation":
					op = strings.Trim(v, `"`)
				case "outcome":
					outcome = strings.Trim(v, `"`)
				}
			}
			out[op+"/"+outcome] += v
			found = true
		}
		if !found {
			re.t.Fatalf("node %s serves no %s on /metrics", nd.name, storageCallsMetric)
		}
	}
	return out
}

// storageCallsReport sums the calls counted between two storageCalls
// snapshots by operation, and formats them per issuance: every operation
// that happened (with its not_found and error share), and list always.
func storageCallsReport(before, after map[string]float64, per float64) (total float64, byOp map[string]float64, line string) {
	byOp = map[string]float64{}
	byOutcome := map[string]map[string]float64{}
	for k, v := range after {
		d := v - before[k]
		if d <= 0 {
			continue
		}
		op, outcome, _ := strings.Cut(k, "/")
		byOp[op] += d
		if byOutcome[op] == nil {
			byOutcome[op] = map[string]float64{}
		}
		byOutcome[op][outcome] += d
		total += d
	}
	ops := []string{"load", "store", "delete", "list", "exists", "stat", "lock", "unlock"}
	sort.SliceStable(ops, func(i, j int) bool { return byOp[ops[i]] > byOp[ops[j]] })
	var parts []string
	for _, op := range ops {
		if byOp[op] == 0 && op != "list" {
			continue
		}
		p := fmt.Sprintf("%s=%.2f", op, byOp[op]/per)
		var extra []string
		for _, o := range []string{"not_found", "error"} {
			if n := byOutcome[op][o]; n > 0 {
				extra = append(extra, fmt.Sprintf("%s %.2f", o, n/per))
			}
		}
		if len(extra) > 0 {
			p += " (" + strings.Join(extra, ", ") + ")"
		}
		parts = append(parts, p)
	}
	return total, byOp, strings.Join(parts, " ")
}

// checkOneOrderEach fails t for every name the CA saw more than one
// new-order for (and, when wantOne, for names with none).
func (re *redisEnv) checkOneOrderEach(names []string, wantOne bool) {
	re.t.Helper()
	for _, name := range names {
		n := re.ca.NewOrders(name)
		if n > 1 || (wantOne && n != 1) {
			re.t.Errorf("the CA saw %d new-orders for %s, want exactly 1", n, name)
		}
	}
}

// storedOrders returns certflow's stored orders of name, oldest first,
// wherever certflow keeps them (issuer.StoredResources).
func (re *redisEnv) storedOrders(name string) []resource {
	re.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	view := re.redis.StorageView(re.prefix)
	keys, err := view.List(ctx, "certflow", false)
	if err != nil {
		re.t.Fatal(err)
	}
	var out []resource
	for _, k := range keys {
		raws, err := issuer.StoredResources(ctx, view, path.Base(k), issuer.KindOrder)
		if err != nil {
			re.t.Fatal(err)
		}
		for _, raw := range raws {
			var r resource
			if err := json.Unmarshal(raw, &r); err != nil {
				re.t.Fatalf("decoding an order: %v", err)
			}
			if r.str("name") == name {
				out = append(out, r)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].str("id") < out[j].str("id") })
	return out
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// nameRecord reads certflow's record of name from Redis.
func (re *redisEnv) nameRecord(name string) map[string]any {
	re.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	keys, err := re.redis.Keys(ctx, re.prefix+"/certflow/*/names/"+name+".json")
	if err != nil {
		re.t.Fatal(err)
	}
	if len(keys) != 1 {
		re.t.Fatalf("want one name record for %s in Redis, found %v", name, keys)
	}
	b, err := re.redis.LoadValue(ctx, keys[0])
	if err != nil {
		re.t.Fatal(err)
	}
	var rec map[string]any
	if err := json.Unmarshal(b, &rec); err != nil {
		re.t.Fatalf("decoding %s: %v", keys[0], err)
	}
	return rec
}
