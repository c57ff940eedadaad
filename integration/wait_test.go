package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/miekg/dns"

	certflow "github.com/certflow/certflow"
	"github.com/certflow/certflow/integration/rig"
	"github.com/certflow/certflow/issuer"
)

// pollEvery and pollMax bound every wait in these tests.
const (
	pollEvery = 20 * time.Millisecond
	pollMax   = 30 * time.Second
)

// unreachable is a loopback address nothing listens on: a name resolving to
// it fails both certflow's self-check and the CA's validation at once
// (connection refused), until the name is reset.
var unreachable = netip.MustParseAddr("127.0.0.2")

// waitFor polls cond every pollEvery until it holds, for at most timeout,
// and fails the test (naming what) if it never does. It returns how long it
// waited.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) time.Duration {
	t.Helper()
	return waitForDiag(t, what, timeout, cond, nil)
}

// waitForDiag is waitFor that, on timeout, adds diag's description of the
// situation to the failure.
func waitForDiag(t *testing.T, what string, timeout time.Duration, cond func() bool, diag func() string) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(timeout)
	for {
		if cond() {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			msg := ""
			if diag != nil {
				msg = "\n" + diag()
			}
			t.Fatalf("timed out after %s waiting for %s%s", timeout, what, msg)
		}
		time.Sleep(pollEvery)
	}
}

// schedulerIdle waits until the process-wide scheduler has nothing live or
// queued, so a test starts from a clean slate whatever ran before it.
func schedulerIdle(t *testing.T) {
	t.Helper()
	waited := waitFor(t, "the scheduler to be idle before the test", pollMax, func() bool {
		live, queued := issuer.DefaultScheduler().Stats()
		return live == 0 && queued == 0
	})
	if waited > 100*time.Millisecond {
		t.Logf("waited %s for challenges of earlier tests to leave the scheduler", waited.Round(time.Millisecond))
	}
}

// block makes names resolve to an address where nothing listens, so their
// self-checks keep failing, until unblock (or the end of the test).
func (e *env) block(names ...string) {
	for _, n := range names {
		e.dns.SetAddrs(n, unreachable)
	}
	e.t.Cleanup(func() { e.unblock(names...) })
}

// unblock restores the default address (127.0.0.1) of names.
func (e *env) unblock(names ...string) {
	for _, n := range names {
		e.dns.ResetAddrs(n)
	}
}

// handshakeResult is the outcome of one asynchronous handshake.
type handshakeResult struct {
	name string
	err  error
	took time.Duration
}

// handshakeAsync starts a handshake for each name in its own goroutine. The
// returned wait collects every result (each handshake is bounded by the
// harness's 30 s timeout); at cleanup the names are unblocked and wait is
// called, so no goroutine outlives the test.
func (e *env) handshakeAsync(names ...string) (wait func() map[string]handshakeResult) {
	results := make(chan handshakeResult, len(names))
	var wg sync.WaitGroup
	for _, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			leaf, err := e.handshake(n)
			if err == nil && !contains(leaf.DNSNames, n) {
				err = fmt.Errorf("got a certificate for %v", leaf.DNSNames)
			}
			results <- handshakeResult{name: n, err: err, took: time.Since(start)}
		}()
	}
	var once sync.Once
	out := map[string]handshakeResult{}
	wait = func() map[string]handshakeResult {
		once.Do(func() {
			wg.Wait()
			close(results)
			for r := range results {
				out[r.name] = r
			}
		})
		return out
	}
	e.t.Cleanup(func() {
		// a test that stopped early must not leave the handshakes (and the
		// scheduler slots) waiting for blocked names
		e.unblock(names...)
		wait()
	})
	return wait
}

// liveMonitor samples the process-wide scheduler's live count every few
// milliseconds and remembers the highest value seen.
type liveMonitor struct {
	max  atomic.Int64
	stop chan struct{}
	done chan struct{}
}

func monitorLive(t *testing.T) *liveMonitor {
	m := &liveMonitor{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(m.done)
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			live, _ := issuer.DefaultScheduler().Stats()
			if int64(live) > m.max.Load() {
				m.max.Store(int64(live))
			}
			select {
			case <-m.stop:
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(m.halt)
	return m
}

// halt stops sampling and returns the highest live count seen.
func (m *liveMonitor) halt() {
	select {
	case <-m.stop:
	default:
		close(m.stop)
	}
	<-m.done
}

// maxLive stops the monitor and returns the highest live count seen.
func (m *liveMonitor) maxLive() int {
	m.halt()
	return int(m.max.Load())
}

// timeField parses one of a resource's RFC 3339 time fields ("times.x" for
// a challenge's lifecycle times); zero if absent.
func timeField(t *testing.T, r resource, field string) time.Time {
	t.Helper()
	var raw any = map[string]any(r)
	for _, part := range strings.Split(field, ".") {
		m, ok := raw.(map[string]any)
		if !ok {
			return time.Time{}
		}
		raw = m[part]
	}
	s, _ := raw.(string)
	if s == "" {
		return time.Time{}
	}
	tm, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatalf("resource %s: field %s = %q is not RFC 3339: %v", r.str("id"), field, s, err)
	}
	return tm
}

// onlyChallenge returns the single stored challenge of name, failing the
// test if there is not exactly one.
func (e *env) onlyChallenge(name string) resource {
	e.t.Helper()
	chals := e.resources("challenges", name)
	if len(chals) != 1 {
		e.t.Fatalf("want exactly 1 stored challenge for %s, got %d: %s", name, len(chals), dump(chals))
	}
	return chals[0]
}

// issuerKey is the storage key of certificates this env's certflow issuer
// obtains.
func (e *env) issuerKey() string { return certflow.IssuerKeyForCA(e.ca.DirectoryURL) }

// certPath is where certmagic stores the certificate of name obtained by
// this env's certflow issuer, under the storage root.
func (e *env) certPath(name string) string {
	return filepath.Join(e.storage, filepath.FromSlash(certmagic.StorageKeys.SiteCert(e.issuerKey(), name)))
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// rejectFirstOrder returns a CA fault hook answering the first new-order
// request naming name with a 400 rejectedIdentifier problem carrying
// detail; every other request goes to Pebble.
func rejectFirstOrder(name, detail string) rig.Fault {
	var done atomic.Bool
	problem, _ := json.Marshal(map[string]any{
		"type":   "urn:ietf:params:acme:error:rejectedIdentifier",
		"detail": detail,
		"status": http.StatusBadRequest,
	})
	return func(r *http.Request) (int, http.Header, string, bool) {
		if rig.KindOf(r) != rig.KindNewOrder || done.Load() {
			return 0, nil, "", false
		}
		body, err := io.ReadAll(r.Body)
		if err != nil || !contains(rig.OrderIdentifiers(body), name) {
			return 0, nil, "", false
		}
		if !done.CompareAndSwap(false, true) {
			return 0, nil, "", false
		}
		h := http.Header{}
		h.Set("Content-Type", "application/problem+json")
		return http.StatusBadRequest, h, string(problem), true
	}
}

// startSlowDNS starts a DNS server on 127.0.0.1 (UDP and TCP on one port)
// that answers every A query with 127.0.0.1 and every other query with an
// empty answer, each only after delay: a slow but working resolver for
// certflow's self-check. It is stopped at the end of the test.
func startSlowDNS(t *testing.T, delay time.Duration) string {
	t.Helper()
	var (
		tcp net.Listener
		udp net.PacketConn
		err error
	)
	for range 20 {
		if tcp, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		udp, err = net.ListenPacket("udp", tcp.Addr().String())
		if err == nil {
			break
		}
		_ = tcp.Close()
	}
	if err != nil {
		t.Fatalf("no port free for a slow DNS server over both TCP and UDP: %v", err)
	}
	stop := make(chan struct{})
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		select {
		case <-time.After(delay):
		case <-stop:
		}
		m := new(dns.Msg)
		m.SetReply(r)
		m.Authoritative = true
		for _, q := range r.Question {
			if q.Qtype == dns.TypeA {
				m.Answer = append(m.Answer, &dns.A{
					Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 1},
					A:   net.IPv4(127, 0, 0, 1),
				})
			}
		}
		_ = w.WriteMsg(m)
	})
	servers := []*dns.Server{{Listener: tcp, Handler: handler}, {PacketConn: udp, Handler: handler}}
	for _, s := range servers {
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		go func() { _ = s.ActivateAndServe() }()
		select {
		case <-started:
		case <-time.After(10 * time.Second):
			t.Fatal("the slow DNS server did not start")
		}
	}
	t.Cleanup(func() {
		close(stop)
		for _, s := range servers {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = s.ShutdownContext(ctx)
			cancel()
		}
	})
	return tcp.Addr().String()
}

// schedulerDiag describes the scheduler and the stored challenges of names,
// for a failed wait.
func (e *env) schedulerDiag(names ...string) func() string {
	return func() string {
		live, queued := issuer.DefaultScheduler().Stats()
		var b strings.Builder
		fmt.Fprintf(&b, "scheduler: %d live, %d queued, limits %+v\n", live, queued, issuer.DefaultScheduler().Limits())
		for _, n := range names {
			all, _ := rig.LoadResources(e.storage, "challenges")
			for _, r := range all {
				if r["name"] == n {
					fmt.Fprintf(&b, "challenge %s: state %v, self_checks %v, reason %v\n", n, r["state"], r["self_checks"], r["reason"])
				}
			}
			reqs, _ := rig.LoadResources(e.storage, "requests")
			for _, r := range reqs {
				if r["name"] == n {
					fmt.Fprintf(&b, "request %s: state %v, reason %v\n", n, r["state"], r["reason"])
				}
			}
		}
		return b.String()
	}
}

// reload loads cfg into the running Caddy (a config reload, not a restart)
// and waits until the new servers answer: right after caddy.Load returns,
// the old servers are still shutting down and the first connection can be
// reset (seen on Linux, where Caddy binds with SO_REUSEPORT). A handshake
// for probe, a name whose certificate is cached, must succeed three times
// in a row, each within 2 s, all within 10 s.
func (e *env) reload(cfg rig.CaddyConfig, probe string) {
	e.t.Helper()
	e.run(cfg)
	ok, tries := 0, 0
	for deadline := time.Now().Add(10 * time.Second); ok < 3; tries++ {
		if time.Now().After(deadline) {
			e.t.Fatalf("after the reload, handshakes for %s kept failing (%d tries)", probe, tries)
		}
		if _, err := rig.Handshake(e.addr(), probe, e.ca.IssuerRoots(), 2*time.Second); err != nil {
			e.t.Logf("after the reload: %v", err)
			ok = 0
			time.Sleep(pollEvery)
			continue
		}
		ok++
	}
}
