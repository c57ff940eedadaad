package integration

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/certflow/certflow/integration/rig"
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

// balancer is a TCP load balancer on 127.0.0.1: each accepted connection
// goes to a backend picked at random; a backend that refuses the dial is
// skipped and another tried.
type balancer struct {
	ln       net.Listener
	backends []string
	port     int
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	wg       sync.WaitGroup
	dialFail atomic.Int64
}

func startBalancer(t *testing.T) *balancer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &balancer{ln: ln, port: ln.Addr().(*net.TCPAddr).Port, conns: map[net.Conn]struct{}{}}
	b.wg.Add(1)
	go b.serve()
	t.Cleanup(b.close)
	return b
}

func (b *balancer) setBackends(addrs []string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.backends = append([]string(nil), addrs...)
}

func (b *balancer) track(c net.Conn, add bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if add {
		b.conns[c] = struct{}{}
	} else {
		delete(b.conns, c)
	}
}

func (b *balancer) serve() {
	defer b.wg.Done()
	for {
		c, err := b.ln.Accept()
		if err != nil {
			return
		}
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			b.proxy(c)
		}()
	}
}

func (b *balancer) proxy(c net.Conn) {
	b.track(c, true)
	defer func() { b.track(c, false); _ = c.Close() }()
	b.mu.Lock()
	backends := append([]string(nil), b.backends...)
	b.mu.Unlock()
	var up net.Conn
	for _, i := range rand.Perm(len(backends)) {
		conn, err := net.DialTimeout("tcp", backends[i], time.Second)
		if err == nil {
			up = conn
			break
		}
		b.dialFail.Add(1)
	}
	if up == nil {
		return
	}
	b.track(up, true)
	defer func() { b.track(up, false); _ = up.Close() }()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, c); closeWrite(up); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, up); closeWrite(c); done <- struct{}{} }()
	<-done
	<-done
}

func closeWrite(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}

func (b *balancer) close() {
	_ = b.ln.Close()
	b.mu.Lock()
	for c := range b.conns {
		_ = c.Close()
	}
	b.mu.Unlock()
	b.wg.Wait()
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
	httpLB     *balancer
	httpsLB    *balancer
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
	re.usedPorts = map[int]bool{re.httpLB.port: true, re.httpsLB.port: true}
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
	re.httpsLB.setBackends(https)
	re.httpLB.setBackends(http)
	re.dns = startDNS(t)
	re.ca = startCA(t, rig.CAOptions{HTTPPort: re.httpLB.port, TLSPort: re.httpsLB.port, DNSAddr: re.dns.Addr})
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
	iss := nodeIssuer(re.ca, re.dns, re.httpLB.port, re.httpsLB.port)
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

func (re *redisEnv) lbAddr() string { return fmt.Sprintf("127.0.0.1:%d", re.httpsLB.port) }

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

// storageCallsMetric is certflow's count of its own storage calls.
const storageCallsMetric = "certflow_storage_operations_total"

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

// maxListsPerNodePass bounds the storage lists a node makes that do not
// belong to any handshake: its first maintenance pass (3s after start)
// lists the processes' heartbeats and the challenges for leftovers, and
// requests, orders and challenges for retention. (The passes of every
// minute after it list the heartbeats and the in-flight index.)
const maxListsPerNodePass = 5

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

// storedOrders returns certflow's stored orders of name, oldest first.
func (re *redisEnv) storedOrders(name string) []resource {
	re.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	keys, err := re.redis.Keys(ctx, re.prefix+"/certflow/*/orders/*.json")
	if err != nil {
		re.t.Fatal(err)
	}
	var out []resource
	for _, k := range keys {
		b, err := re.redis.LoadValue(ctx, k)
		if err != nil {
			re.t.Fatal(err)
		}
		var r resource
		if err := json.Unmarshal(b, &r); err != nil {
			re.t.Fatalf("decoding %s: %v", k, err)
		}
		if r.str("name") == name {
			out = append(out, r)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].str("id") < out[j].str("id") })
	return out
}

// replacedAfterKill reports whether a stored order's reason says it was
// replaced for a cause a SIGKILL explains: the killed node finalized it
// with a key that died with it (processing or valid at the CA), or the CA's
// validation went to the dying node (invalid at the CA).
func replacedAfterKill(reason string) bool {
	for _, r := range []string{"finalized with the key of an earlier attempt", "it is valid at the CA",
		"it is processing at the CA", "it is invalid at the CA"} {
		if strings.Contains(reason, r) {
			return true
		}
	}
	return false
}

// finishedJustBeforeKill reports whether an order was finalized (valid)
// within a second before the SIGKILL: the killed node then had the chain
// but not yet the certificate stored by certmagic.
func (re *redisEnv) finishedJustBeforeKill(o resource) bool {
	if o.str("state") != "valid" || re.killedAt.IsZero() {
		return false
	}
	finalized, err := time.Parse(time.RFC3339Nano, o.str("finalized"))
	if err != nil {
		return false
	}
	return !finalized.After(re.killedAt) && re.killedAt.Sub(finalized) < time.Second
}

// checkOrdersAfterKill checks one new-order per name, where a node was
// SIGKILLed while names were in flight. A second order is explained (and
// logged, not failed) only in the two windows where the engine cannot
// resume: the killed node had finalized the order with a key that died with
// it (the order is stored as replaced for that reason: DESIGN accepts a
// second order there), or the node died between the CA's answer to
// new-order and certflow's write of the Order (the CA saw an order that was
// never stored). Any other second order fails the test.
func (re *redisEnv) checkOrdersAfterKill(names []string) map[string]bool {
	re.t.Helper()
	explained := map[string]bool{}
	var finalized, unstored []string
	for _, name := range names {
		n := re.ca.NewOrders(name)
		if n == 1 {
			continue
		}
		if n == 0 {
			re.t.Errorf("the CA saw no new-order for %s", name)
			continue
		}
		stored := re.storedOrders(name)
		switch {
		case n == 2 && len(stored) == 2 && replacedAfterKill(stored[0].str("reason")):
			finalized = append(finalized, name+" ("+stored[0].str("reason")+")")
			explained[name] = true
		case n == 2 && len(stored) == 1:
			unstored = append(unstored, name)
			explained[name] = true
		case n == 2 && len(stored) == 2 && re.finishedJustBeforeKill(stored[0]):
			// the killed node had the chain but died before certmagic
			// stored the certificate: the next attempt needs a new order
			finalized = append(finalized, name+" (valid, finalized just before the kill)")
			explained[name] = true
		default:
			re.t.Errorf("the CA saw %d new-orders for %s, want 1; stored orders: %s", n, name, dump(stored))
		}
	}
	re.t.Logf("second orders caused by the kill: %d replaced (killed node finalized it with a key that died, or the CA validated through the dying node) %v; %d created at the CA by the killed node but never stored %v",
		len(finalized), finalized, len(unstored), unstored)
	return explained
}

// TestRedisCluster: three nodes on one Redis behind balancers; 100 names,
// a node SIGKILLed mid-way, Redis restarted once.
func TestRedisCluster(t *testing.T) {
	re := newRedisEnv(t, redisEnvOptions{nodes: 3})
	re.startAll()
	const conc = 20
	all := map[string]string{} // name -> serial

	record := func(phase string, res map[string]hsResult, mustSucceed bool) (ok, failed, retried int) {
		t.Helper()
		for name, r := range res {
			if r.err != nil {
				failed++
				if mustSucceed {
					t.Errorf("%s: %s failed after %d attempt(s): %v", phase, name, r.attempts, r.err)
				}
				continue
			}
			ok++
			if r.attempts > 1 {
				retried++
			}
			all[name] = r.serial
		}
		return
	}

	// phase 1: 40 names over three nodes, Redis commands and certflow's
	// own storage calls counted
	phase1 := namesN("p1", 0, 40)
	before, callsBefore := re.commandStats(), re.storageCalls()
	start := time.Now()
	res := re.handshakeAll(phase1, conc, 1, 60*time.Second)
	took := time.Since(start)
	ok, failed, _ := record("phase 1", res, true)
	after := re.commandStats()
	// the index markers are written in the background: count them too
	callsAfter := re.storageCallsFlushed()
	total, byCmd := rig.CommandsBetween(before, after)
	t.Logf("phase 1: %d names issued, %d failed in %s over 3 nodes (concurrency %d)", ok, failed, took.Round(time.Millisecond), conc)
	if ok > 0 {
		t.Logf("Redis commands per issuance (3 nodes, INFO commandstats): %.1f — %s", float64(total)/float64(ok), topCommands(byCmd, float64(ok)))
		calls, byOp, line := storageCallsReport(callsBefore, callsAfter, float64(ok))
		t.Logf("certflow storage calls per issuance (3 nodes, %s): %.1f — %s", storageCallsMetric, calls/float64(ok), line)
		// no list on the handshake path: the lists of the phase are the
		// nodes' maintenance, a constant, not one or more per name
		if lists, limit := byOp["list"], float64(maxListsPerNodePass*len(re.nodes)); lists > limit {
			t.Errorf("certflow listed storage %v times while issuing %d names, want at most %v (maintenance only): a list on the handshake path?", lists, ok, limit)
		}
	}
	re.checkOneOrderEach(phase1, true)
	if t.Failed() {
		t.Fatalf("phase 1 failed\n%s", re.logTails(30))
	}

	// phase 2: 60 names, node n2 SIGKILLed while they are in flight
	phase2 := namesN("p2", 0, 60)
	var res2 map[string]hsResult
	done := make(chan struct{})
	start = time.Now()
	go func() {
		defer close(done)
		res2 = re.handshakeAll(phase2, conc, 2, 30*time.Second)
	}()
	stuck := time.AfterFunc(45*time.Second, func() { re.dumpGoroutines(); dumpSelf(t) })
	time.Sleep(700 * time.Millisecond)
	killed := re.nodes[2]
	// the balancers stop sending new connections to the node first (as a
	// load balancer draining it would), so that the CA's validations are
	// not cut by the kill; its handshakes and orders in flight are
	httpsAll, httpAll := re.backends()
	re.httpsLB.setBackends(httpsAll[:2])
	re.httpLB.setBackends(httpAll[:2])
	time.Sleep(300 * time.Millisecond)
	re.killedAt = time.Now()
	if err := killed.proc.Kill(); err != nil {
		t.Fatal(err)
	}
	// the dead node is back in the lists: the balancers skip it on dial errors
	re.httpsLB.setBackends(httpsAll)
	re.httpLB.setBackends(httpAll)
	t.Logf("node %s SIGKILLed (pid %d) %s into phase 2", killed.name, killed.proc.PID, time.Since(start).Round(time.Millisecond))
	<-done
	stuck.Stop()
	ok, failed, retried := record("phase 2", res2, true)
	t.Logf("phase 2: %d issued, %d failed, %d needed a retry (their connection went to the killed node) in %s; balancer dial failures https=%d http=%d",
		ok, failed, retried, time.Since(start).Round(time.Millisecond), re.httpsLB.dialFail.Load(), re.httpLB.dialFail.Load())
	explained := re.checkOrdersAfterKill(phase2)
	if t.Failed() {
		t.Fatalf("phase 2 failed\n%s", re.logTails(30))
	}

	// phase 3: Redis restarted under handshakes for new names
	outage := namesN("outage", 0, 10)
	var resOut map[string]hsResult
	done = make(chan struct{})
	go func() {
		defer close(done)
		resOut = re.handshakeAll(outage, 10, 1, 20*time.Second)
	}()
	time.Sleep(100 * time.Millisecond)
	outStart := time.Now()
	if err := re.redis.Stop(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	if err := re.redis.Restart(); err != nil {
		t.Fatal(err)
	}
	t.Logf("Redis down for %s, restarted as pid %d on %s", time.Since(outStart).Round(time.Millisecond), re.redis.PID(), re.redis.Addr)
	<-done
	okOut, failedOut, _ := record("outage", resOut, false)
	t.Logf("names handshaken across the Redis restart: %d issued, %d failed (allowed)", okOut, failedOut)
	for name, r := range resOut {
		if r.err != nil {
			t.Logf("  %s: %v", name, r.err)
		}
	}
	re.checkOneOrderEach(outage, false)

	// after: new names succeed without restarting Caddy, once every node
	// reads storage again (go-redis stops dialing after a pool's worth of
	// failed dials and probes the server once a second: a node can answer
	// "connection refused" for up to a second after Redis is back, and a
	// CA validation it serves meanwhile fails)
	re.waitStorageAnswers(phase1[0], 15*time.Second)
	phase3 := namesN("p3", 0, 20)
	start = time.Now()
	res3 := re.handshakeAll(phase3, conc, 1, 60*time.Second)
	ok, failed, _ = record("after the Redis restart", res3, true)
	t.Logf("after the Redis restart: %d issued, %d failed in %s", ok, failed, time.Since(start).Round(time.Millisecond))
	re.checkOneOrderEach(phase3, true)
	if t.Failed() {
		t.Fatalf("issuing after the Redis restart failed\n%s", re.logTails(40))
	}

	// every node (the killed one restarted) serves every certificate it is asked for
	re.start(2)
	var sample []string
	for i := 0; i < 40; i += 8 {
		sample = append(sample, phase1[i], phase2[i])
	}
	sample = append(sample, phase3[0], phase3[10])
	for _, name := range sample {
		for _, n := range re.nodes {
			leaf, err := re.handshakeAt(n.addr(), name, 20*time.Second)
			if err != nil {
				t.Errorf("node %s for %s: %v", n.name, name, err)
				continue
			}
			if s := leaf.SerialNumber.String(); s != all[name] {
				t.Errorf("node %s serves %s with serial %s, the handshake through the balancer got %s", n.name, name, s, all[name])
			}
		}
	}
	// no name got a second order over the whole test (but for the ones the
	// kill explains, logged above)
	var every []string
	for _, l := range [][]string{phase1, phase2, outage, phase3} {
		for _, n := range l {
			if !explained[n] {
				every = append(every, n)
			}
		}
	}
	re.checkOneOrderEach(every, false)
	t.Logf("CA requests in all: %s", caSummary(re.ca))

	// locks: while the cluster is idle, every lock key left has a lease
	// (a TTL of at most redislock's 5s, refreshed by a live holder, e.g.
	// certmagic waiting to retry a name whose assets Redis did not take)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const lease = 5 * time.Second
	locks, err := re.redis.Keys(ctx, re.prefix+"/locks/*")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range locks {
		ttl, err := re.redis.Client().PTTL(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("lock held while idle: %s (ttl %s)", strings.TrimPrefix(k, re.prefix+"/"), ttl)
		if ttl < 0 || ttl > lease {
			t.Errorf("lock key %s has ttl %s, want a lease of at most %s", k, ttl, lease)
		}
	}
	// and once every node is dead, no lock outlives its lease
	for _, n := range re.nodes {
		if n.proc != nil {
			if err := n.proc.Kill(); err != nil {
				t.Fatal(err)
			}
		}
	}
	time.Sleep(lease + 2*time.Second)
	locks, err = re.redis.Keys(ctx, re.prefix+"/locks/*")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range locks {
		ttl, _ := re.redis.Client().PTTL(ctx, k).Result()
		t.Errorf("lock key %s outlived its lease: still there %s after every node was killed (ttl %s)", k, lease+2*time.Second, ttl)
	}
	t.Logf("lock keys left %s after every node was killed: %d", lease+2*time.Second, len(locks))
}

// TestRedisOutageKeepsBackoff: absence is not proof. A name in backoff is
// handshaken again while Redis is down: the engine must not take "not
// found" for an empty store, so no new order, and the backoff survives.
func TestRedisOutageKeepsBackoff(t *testing.T) {
	re := newRedisEnv(t, redisEnvOptions{nodes: 1})
	re.start(0)
	nd := re.nodes[0]
	const name = "backoff.test"
	re.ca.SetFault(pebbleSerializer(rejectFirstOrder(name, "rejected by the test")))
	if _, err := re.handshakeAt(nd.addr(), name, 30*time.Second); err == nil {
		t.Fatal("the handshake succeeded though the CA rejected the order")
	}
	re.ca.SetFault(pebbleSerializer(nil))
	if n := re.ca.NewOrders(name); n != 1 {
		t.Fatalf("the CA saw %d new-orders for %s, want 1", n, name)
	}
	rec := re.nameRecord(name)
	t.Logf("name record after the failure: failures=%v next_attempt=%v", rec["failures"], rec["next_attempt"])
	if number(rec["failures"]) < 1 || rec["next_attempt"] == nil {
		t.Fatalf("no backoff recorded: %s", dump(rec))
	}
	wantNext := rec["next_attempt"]

	logBefore := len(nd.proc.Log())
	if err := re.redis.Stop(); err != nil {
		t.Fatal(err)
	}
	t.Logf("Redis stopped")
	_, errOut := re.handshakeAt(nd.addr(), name, 15*time.Second)
	t.Logf("handshake for %s with Redis down: %v", name, errOut)
	_, errFresh := re.handshakeAt(nd.addr(), "fresh-during-outage.test", 15*time.Second)
	t.Logf("handshake for a new name with Redis down: %v", errFresh)
	ordersDuring := re.ca.NewOrders(name)
	freshDuring := re.ca.NewOrders("fresh-during-outage.test")
	if err := re.redis.Restart(); err != nil {
		t.Fatal(err)
	}
	outageLog := nd.proc.Log()[logBefore:]
	t.Logf("node log during the outage (%d lines), warnings, errors and the lines naming the two names:", strings.Count(outageLog, "\n"))
	for _, l := range strings.Split(outageLog, "\n") {
		if strings.Contains(l, `"level":"warn"`) || strings.Contains(l, `"level":"error"`) ||
			strings.Contains(l, name) || strings.Contains(l, "fresh-during-outage.test") {
			t.Logf("  %s", truncate(l, 500))
		}
	}
	if errOut == nil {
		t.Errorf("the handshake for %s succeeded with Redis down", name)
	}
	if ordersDuring != 1 {
		t.Errorf("the CA saw %d new-orders for %s by the end of the outage, want 1 (no new order while the store is down)", ordersDuring, name)
	}
	if freshDuring != 0 {
		t.Errorf("the CA saw %d new-orders for a new name while Redis was down, want 0", freshDuring)
	}
	rec = re.nameRecord(name)
	if number(rec["failures"]) < 1 || rec["next_attempt"] != wantNext {
		t.Errorf("the backoff changed across the outage: was next_attempt=%v, now %s", wantNext, dump(rec))
	}
	// with Redis back, the name is still held back (backoff of a minute)
	if _, err := re.handshakeAt(nd.addr(), name, 15*time.Second); err == nil {
		t.Errorf("the handshake for %s succeeded during its backoff", name)
	}
	if n := re.ca.NewOrders(name); n != 1 {
		t.Errorf("the CA saw %d new-orders for %s, want 1", n, name)
	}
	// and the node recovers without a restart
	if _, err := re.handshakeAt(nd.addr(), "after-outage.test", 30*time.Second); err != nil {
		t.Errorf("a new name after Redis came back: %v\n%s", err, tail(nd.proc.Log(), 30))
	}
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

// TestRedisBench reports, for 300 names at concurrency 100, wall time,
// failed handshakes and Redis commands per issuance on three nodes, and the
// same on one node with file-system storage. It is not a timed assertion:
// it fails only if a name gets two orders. It takes about 30s with -race;
// -short or CERTFLOW_REDIS_BENCH=0 skips it.
func TestRedisBench(t *testing.T) {
	if testing.Short() || os.Getenv("CERTFLOW_REDIS_BENCH") == "0" {
		t.Skip("skipping the Redis benchmark (300 names, concurrency 100): -short or CERTFLOW_REDIS_BENCH=0")
	}
	const names, conc = 300, 100
	run := func(t *testing.T, o redisEnvOptions, label string) {
		re := newRedisEnv(t, o)
		re.startAll()
		var before map[string]int64
		if re.redis != nil {
			before = re.commandStats()
		}
		callsBefore := re.storageCalls()
		list := namesN("bench", 0, names)
		start := time.Now()
		res := re.handshakeAll(list, conc, 1, 120*time.Second)
		wall := time.Since(start)
		failed := 0
		var firstErrs []string
		for _, n := range list {
			if r := res[n]; r.err != nil {
				failed++
				if len(firstErrs) < 5 {
					firstErrs = append(firstErrs, r.err.Error())
				}
			}
		}
		issued := names - failed
		line := fmt.Sprintf("BENCH %s: %d names, concurrency %d: wall %s, failed handshakes %d, new-orders %d",
			label, names, conc, wall.Round(time.Millisecond), failed, re.ca.Count(rig.KindNewOrder))
		if re.redis != nil && issued > 0 {
			total, by := rig.CommandsBetween(before, re.commandStats())
			line += fmt.Sprintf(", Redis commands per issuance %.1f (%s)", float64(total)/float64(issued), topCommands(by, float64(issued)))
		}
		if issued > 0 {
			calls, byOp, ops := storageCallsReport(callsBefore, re.storageCallsFlushed(), float64(issued))
			line += fmt.Sprintf(", certflow storage calls per issuance %.1f (%s)", calls/float64(issued), ops)
			if lists, limit := byOp["list"], float64(maxListsPerNodePass*len(re.nodes)); lists > limit {
				t.Errorf("certflow listed storage %v times while issuing %d names, want at most %v (maintenance only)", lists, issued, limit)
			}
		}
		t.Log(line)
		for _, e := range firstErrs {
			t.Logf("  e.g. %s", e)
		}
		re.checkOneOrderEach(list, false)
	}
	t.Run("redis-3-nodes", func(t *testing.T) { run(t, redisEnvOptions{nodes: 3}, "redis, 3 nodes") })
	t.Run("file-1-node", func(t *testing.T) { run(t, redisEnvOptions{nodes: 1, fileStore: true}, "file_system, 1 node") })
}
