package integration

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/certflow/certflow/integration/rig"
)

// Bounds of the waits in the DNS-01 tests.
const (
	dnsPollEvery = 20 * time.Millisecond
	dnsWaitMax   = 60 * time.Second
	// txtWatchEvery is how often the watcher asks BIND for the record.
	txtWatchEvery = 2 * time.Millisecond
	txtWatchMax   = 2 * time.Minute
)

// bindEnv is a test world for DNS-01: BIND serving dns.test (names resolve
// to 127.0.0.1, TXT records updated through rfc2136), Pebble resolving
// through that BIND, an ask endpoint, and ports and storage for Caddy.
type bindEnv struct {
	*env
	bind *rig.BIND
}

func newBindEnv(t *testing.T) *bindEnv {
	t.Helper()
	b := requireBIND(t)
	return &bindEnv{env: newEnv(t, envOptions{dnsAddr: b.Addr}), bind: b}
}

// dnsIssuer returns a certflow issuer with only DNS-01 enabled, through
// BIND's dns.providers.rfc2136, checking propagation at BIND (resolvers),
// with the given extra challenges.dns settings.
func (b *bindEnv) dnsIssuer(dnsExtra map[string]any) map[string]any {
	dnsCfg := map[string]any{
		"provider":  b.bind.Provider(),
		"resolvers": []string{b.bind.Addr},
		"ttl":       "60s",
	}
	for k, v := range dnsExtra {
		dnsCfg[k] = v
	}
	return map[string]any{
		"module":                  "certflow",
		"ca":                      b.ca.DirectoryURL,
		"email":                   "ops@example.com",
		"trusted_roots_pem_files": []string{b.ca.ServerRootsFile},
		"challenges": map[string]any{
			"http":     map[string]any{"disabled": true},
			"tls-alpn": map[string]any{"disabled": true},
			"dns":      dnsCfg,
		},
		"self_check": map[string]any{"interval": "100ms"},
	}
}

// waitDNS polls cond until it holds, failing the test after timeout.
func waitDNS(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(dnsPollEvery)
	}
}

// txtWatcher asks BIND for a TXT record every few milliseconds and keeps
// the most values it saw at one moment, and every value it saw.
type txtWatcher struct {
	mu        sync.Mutex
	maxAtOnce []string
	seen      map[string]bool
	samples   int
	stop      chan struct{}
	done      chan struct{}
}

func watchTXT(t *testing.T, b *rig.BIND, name string) *txtWatcher {
	w := &txtWatcher{seen: map[string]bool{}, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		deadline := time.Now().Add(txtWatchMax)
		for time.Now().Before(deadline) {
			select {
			case <-w.stop:
				return
			default:
			}
			if values, err := b.TXT(name); err == nil {
				w.mu.Lock()
				w.samples++
				if len(values) > len(w.maxAtOnce) {
					w.maxAtOnce = values
				}
				for _, v := range values {
					w.seen[v] = true
				}
				w.mu.Unlock()
			}
			time.Sleep(txtWatchEvery)
		}
	}()
	t.Cleanup(w.halt)
	return w
}

// halt stops the watcher and waits for it; calling it again is harmless.
func (w *txtWatcher) halt() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}

func (w *txtWatcher) result() (maxAtOnce []string, seen []string, samples int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for v := range w.seen {
		seen = append(seen, v)
	}
	slices.Sort(seen)
	return slices.Clone(w.maxAtOnce), seen, w.samples
}

// presentedValue returns the TXT value a stored challenge's memo recorded.
func presentedValue(t *testing.T, ch resource) string {
	t.Helper()
	raw, err := json.Marshal(ch["presented"])
	if err != nil {
		t.Fatal(err)
	}
	var memo struct {
		Zone   string `json:"zone"`
		Record struct {
			Name string `json:"name"`
			Type string `json:"type"`
			Data string `json:"data"`
		} `json:"record"`
	}
	if err := json.Unmarshal(raw, &memo); err != nil || memo.Record.Data == "" {
		t.Fatalf("challenge %s has no DNS memo: %s", ch.str("id"), dump(ch))
	}
	if memo.Zone != bindZone || memo.Record.Type != "TXT" {
		t.Errorf("challenge %s memo: %s", ch.str("id"), raw)
	}
	return memo.Record.Data
}

// chalTime returns one of a stored challenge's times.
func chalTime(t *testing.T, ch resource, step string) time.Time {
	t.Helper()
	times, _ := ch["times"].(map[string]any)
	s, _ := times[step].(string)
	if s == "" {
		t.Fatalf("challenge %s (%s) never reached %s: %s", ch.str("id"), ch.str("name"), step, dump(ch))
	}
	ts, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

// selfChecks returns how many self-checks of a stored challenge failed.
func selfChecks(ch resource) int {
	n, _ := ch["self_checks"].(float64)
	return int(n)
}

// checkDNSChallenge checks a finished DNS-01 challenge: valid, cleaned up,
// through every lifecycle step, and logs its timings.
func checkDNSChallenge(t *testing.T, ch resource) {
	t.Helper()
	if ch.str("type") != "dns-01" || ch.str("state") != "valid" || ch["cleaned_up"] != true {
		t.Fatalf("challenge: want a valid, cleaned-up dns-01 challenge: %s", dump(ch))
	}
	presented := chalTime(t, ch, "presented")
	selfChecked := chalTime(t, ch, "self_checked")
	accepted := chalTime(t, ch, "accepted")
	finished := chalTime(t, ch, "finished")
	if !(presented.Before(selfChecked) && !selfChecked.After(accepted) && !accepted.After(finished)) {
		t.Errorf("challenge steps out of order: %s", dump(ch["times"]))
	}
	t.Logf("%s %s: presented → self-checked %s, self-checked → accepted %s, presented → accepted %s, accepted → valid %s (%v self-check failures)",
		ch.str("name"), ch.str("type"), selfChecked.Sub(presented).Round(time.Microsecond),
		accepted.Sub(selfChecked).Round(time.Microsecond), accepted.Sub(presented).Round(time.Microsecond),
		finished.Sub(accepted).Round(time.Microsecond), selfChecks(ch))
}

// TestDNS01WildcardAndApex: a wildcard and its apex, managed (not on
// demand), DNS-01 only through the real rfc2136 provider into BIND, with
// Pebble validating against that BIND. By default both challenges run at
// once, each adding its own value to _acme-challenge.dns.test: the watcher
// sees both values at the same moment. With dns_serialize they take turns:
// never two values at once. A 300 ms propagation_delay keeps each record
// up long enough for the overlap, or its absence, to be seen.
func TestDNS01WildcardAndApex(t *testing.T) {
	for _, tc := range []struct {
		name      string
		serialize bool
	}{
		{"parallel", false},
		{"dns_serialize", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBindEnv(t)
			names := []string{"*.dns.test", "dns.test"}
			iss := b.dnsIssuer(map[string]any{"propagation_delay": "300ms", "serialize": tc.serialize})
			cfg := b.config(nil)
			cfg.Policies = []rig.Policy{{Subjects: names, Issuers: []map[string]any{iss}}}
			cfg.Automate = names
			w := watchTXT(t, b.bind, "_acme-challenge.dns.test.")
			b.run(cfg)

			waitDNS(t, "both certificates to be issued", dnsWaitMax, func() bool {
				for _, n := range names {
					reqs := b.resources("requests", n)
					if len(reqs) != 1 || reqs[0].str("state") != "ready" {
						return false
					}
				}
				return true
			})
			w.halt()

			var values []string
			var chals []resource
			for _, n := range names {
				cs := b.resources("challenges", n)
				if len(cs) != 1 {
					t.Fatalf("challenges for %s: %s", n, dump(cs))
				}
				checkDNSChallenge(t, cs[0])
				values = append(values, presentedValue(t, cs[0]))
				chals = append(chals, cs[0])
			}
			if chals[0]["wildcard"] != true {
				t.Errorf("the wildcard's challenge is not marked wildcard: %s", dump(chals[0]))
			}
			slices.Sort(values)
			if values[0] == values[1] {
				t.Fatalf("both challenges presented the same value %q", values[0])
			}
			atOnce, seen, samples := w.result()
			t.Logf("watched _acme-challenge.dns.test %d times: at most %d values at once; values seen %q", samples, len(atOnce), seen)
			if !slices.Equal(seen, values) {
				t.Errorf("values seen in BIND %q, want exactly the two challenges' %q", seen, values)
			}
			overlap := chalTime(t, chals[0], "presented").Before(chalTime(t, chals[1], "finished")) &&
				chalTime(t, chals[1], "presented").Before(chalTime(t, chals[0], "finished"))
			if tc.serialize {
				if len(atOnce) > 1 || overlap {
					t.Errorf("with dns_serialize, both values were in BIND at once (%q) or the challenges overlapped (%v)", atOnce, overlap)
				}
			} else if !slices.Equal(atOnce, values) || !overlap {
				t.Errorf("without dns_serialize, want both values in BIND at the same moment, got at most %q (challenges overlapped: %v)", atOnce, overlap)
			}

			// Caddy serves the wildcard for any name below dns.test, and
			// the apex
			for _, sni := range []string{"www.dns.test", "dns.test"} {
				var err error
				for deadline := time.Now().Add(5 * time.Second); ; {
					if _, err = b.handshake(sni); err == nil || time.Now().After(deadline) {
						break
					}
					time.Sleep(100 * time.Millisecond)
				}
				if err != nil {
					t.Errorf("handshake for %s: %v", sni, err)
				}
			}
		})
	}
}

// TestDNS01OnDemand: an on-demand name with only DNS-01 enabled (HTTP-01 and
// TLS-ALPN-01 disabled) is issued while the handshake waits; the stored
// lifecycle shows presented → self-checked → accepted, and the record is
// gone afterwards.
func TestDNS01OnDemand(t *testing.T) {
	b := newBindEnv(t)
	b.run(b.config(b.dnsIssuer(nil)))
	const name = "od.dns.test"
	b.mustHandshake(name)

	chals := b.resources("challenges", name)
	if len(chals) != 1 {
		t.Fatalf("challenges: %s", dump(chals))
	}
	checkDNSChallenge(t, chals[0])
	if n := selfChecks(chals[0]); n != 0 {
		t.Errorf("BIND had the record at once, yet %v self-checks failed: %s", n, dump(chals[0]))
	}
	reqs := b.resources("requests", name)
	if len(reqs) != 1 || reqs[0].str("state") != "ready" || reqs[0]["on_demand"] != true {
		t.Fatalf("certificate requests: %s", dump(reqs))
	}
	if got, err := b.bind.TXT("_acme-challenge.od"); err != nil || len(got) != 0 {
		t.Errorf("TXT _acme-challenge.od after issuance: %q, %v", got, err)
	}
}

// lagProxy is a DNS server in front of BIND that serves every query from
// BIND, except that it answers TXT queries with no records until released:
// a resolver or secondary that lags behind the primary.
type lagProxy struct {
	addr     string
	upstream string
	released atomic.Bool
	held     atomic.Int64 // TXT queries answered empty
}

func startLagProxy(t *testing.T, upstream string) *lagProxy {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &lagProxy{addr: pc.LocalAddr().String(), upstream: upstream}
	started := make(chan struct{})
	srv := &dns.Server{PacketConn: pc, NotifyStartedFunc: func() { close(started) }, Handler: dns.HandlerFunc(p.serve)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.ActivateAndServe()
	}()
	select {
	case <-started:
	case <-time.After(5 * time.Second):
		t.Fatal("lagging DNS server did not start")
	}
	t.Cleanup(func() {
		_ = srv.Shutdown()
		<-done
	})
	return p
}

func (p *lagProxy) serve(w dns.ResponseWriter, r *dns.Msg) {
	if !p.released.Load() && len(r.Question) == 1 && r.Question[0].Qtype == dns.TypeTXT {
		p.held.Add(1)
		m := new(dns.Msg)
		m.SetReply(r)
		m.Authoritative = true
		_ = w.WriteMsg(m)
		return
	}
	c := &dns.Client{Net: "udp", Timeout: 2 * time.Second}
	resp, _, err := c.Exchange(r, p.upstream)
	if err != nil {
		m := new(dns.Msg)
		m.SetRcode(r, dns.RcodeServerFailure)
		_ = w.WriteMsg(m)
		return
	}
	_ = w.WriteMsg(resp)
}

// TestDNS01LaggingResolver: with resolvers naming BIND and a server that
// lags behind it, the challenge stays presented, and the CA is not asked to
// validate, with the lagging server named in the reason, for as long as the
// record is visible on BIND only; once the lagging server serves it too, the
// challenge is accepted and the certificate issued.
func TestDNS01LaggingResolver(t *testing.T) {
	b := newBindEnv(t)
	lag := startLagProxy(t, b.bind.Addr)
	b.run(b.config(b.dnsIssuer(map[string]any{"resolvers": []string{b.bind.Addr, lag.addr}})))
	const name = "lag.dns.test"

	var hsErr error
	var hsTook time.Duration
	done := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(done)
		_, hsErr = b.handshake(name) // bounded by the harness's 30 s
		hsTook = time.Since(start)
	}()
	t.Cleanup(func() {
		lag.released.Store(true)
		<-done
	})

	wantReason := fmt.Sprintf("self-check failed: dns-01 self-check: _acme-challenge.%s. TXT not yet visible at %s (no TXT record) (visible at 1 of 2 servers)", name, lag.addr)
	waitDNS(t, "the challenge to be held by the lagging server", 30*time.Second, func() bool {
		chals := b.resources("challenges", name)
		return len(chals) == 1 && chals[0].str("state") == "presented" && selfChecks(chals[0]) >= 3
	})
	ch := b.resources("challenges", name)[0]
	if ch.str("reason") != wantReason {
		t.Errorf("reason %q, want %q", ch.str("reason"), wantReason)
	}
	if got, err := b.bind.TXT("_acme-challenge.lag"); err != nil || len(got) != 1 || got[0] != presentedValue(t, ch) {
		t.Errorf("BIND serves %q (%v), want the presented value", got, err)
	}
	// three self-checks later: still held, and the CA never asked to validate
	checked := selfChecks(ch)
	waitDNS(t, "three more self-checks of the held challenge", 30*time.Second, func() bool {
		return selfChecks(b.resources("challenges", name)[0]) >= checked+3
	})
	ch = b.resources("challenges", name)[0]
	if ch.str("state") != "presented" || !strings.Contains(ch.str("reason"), lag.addr) {
		t.Errorf("challenge moved on while the lagging server lacked the record: %s", dump(ch))
	}
	if n := b.ca.Count(rig.KindChall); n != 0 {
		t.Errorf("the CA was asked to validate %d times while the record was not visible everywhere", n)
	}
	held := time.Since(chalTime(t, ch, "presented"))

	lag.released.Store(true)
	<-done
	if hsErr != nil {
		t.Fatalf("handshake for %s: %v", name, hsErr)
	}
	ch = b.resources("challenges", name)[0]
	checkDNSChallenge(t, ch)
	if waited := chalTime(t, ch, "self_checked").Sub(chalTime(t, ch, "presented")); waited < held {
		t.Errorf("self-checked %s after presenting, but the lagging server held it for %s", waited, held)
	}
	t.Logf("held for %s by the lagging server (%d TXT queries answered empty); handshake took %s",
		held.Round(time.Millisecond), lag.held.Load(), hsTook.Round(time.Millisecond))
}

// helperCaddyEnv names the environment variable that makes
// TestHelperProcessCaddy act as the first Caddy of TestDNS01CaddyRestart.
const helperCaddyEnv = "CERTFLOW_HELPER_CADDY"

type caddyJob struct {
	Config  json.RawMessage `json:"config"`
	Storage string          `json:"storage"`
	Addr    string          `json:"addr"`
	Name    string          `json:"name"`
}

// killHelperCaddyAt runs TestHelperProcessCaddy with job in a child
// process, waits (at most dnsWaitMax) for the line it prints with prefix,
// and kills the process (SIGKILL) there. It returns the rest of that line
// and the PID killed. what says what the line stands for, for failures;
// logFile is the child Caddy's log, shown when it ends early.
func killHelperCaddyAt(t *testing.T, job caddyJob, logFile, prefix, what string) (value string, pid int) {
	t.Helper()
	raw, err := json.Marshal(job)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*dnsWaitMax)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHelperProcessCaddy$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperCaddyEnv+"="+string(raw))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), prefix); ok {
				lines <- v
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
		close(lines)
	}()
	select {
	case v, ok := <-lines:
		if !ok {
			_ = cmd.Wait()
			log, _ := os.ReadFile(logFile)
			t.Fatalf("the first Caddy ended before %s: %s\n%s\n%s", what, cmd.ProcessState, stderr.String(), log)
		}
		value = v
	case <-time.After(dnsWaitMax):
		t.Fatalf("the first Caddy did not reach %s within %s: %s", what, dnsWaitMax, stderr.String())
	}
	pid = cmd.Process.Pid
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	return value, pid
}

// TestHelperProcessCaddy is not a test: run by TestDNS01CaddyRestart (and
// TestDNS01LeftoverAfterKill) in a child process, it runs Caddy with
// certflow, starts an on-demand handshake, prints a line once the name's
// dns-01 challenge is stored as presented with the record the provider
// returned, and waits to be killed. Without its environment variable it
// does nothing.
func TestHelperProcessCaddy(t *testing.T) {
	raw := os.Getenv(helperCaddyEnv)
	if raw == "" {
		return
	}
	var job caddyJob
	if err := json.Unmarshal([]byte(raw), &job); err != nil {
		t.Fatal(err)
	}
	if err := rig.RunCaddy(job.Config); err != nil {
		t.Fatal(err)
	}
	go func() {
		d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second},
			Config: &tls.Config{ServerName: job.Name, InsecureSkipVerify: true}} //nolint:gosec // only triggers issuance
		ctx, cancel := context.WithTimeout(context.Background(), dnsWaitMax)
		defer cancel()
		if c, err := d.DialContext(ctx, "tcp", job.Addr); err == nil {
			_ = c.Close()
		}
	}()
	deadline := time.Now().Add(dnsWaitMax)
	for time.Now().Before(deadline) {
		chals, _ := rig.LoadResources(job.Storage, rig.ResourceChallenges)
		for _, ch := range chals {
			// presented, and Present returned: the record the provider
			// returned is stored (the challenge is stored as presented
			// with its plan before the record is added)
			memo, _ := ch["presented"].(map[string]any)
			if ch["name"] == job.Name && ch["state"] == "presented" && memo["zone"] != nil {
				fmt.Printf("CERTFLOW-PRESENTED %s\n", ch["id"])
				// the parent kills this process now: nothing to wait for
				// but that, bounded
				time.Sleep(dnsWaitMax)
				os.Exit(3)
			}
		}
		time.Sleep(dnsPollEvery)
	}
	os.Exit(2)
}

// TestDNS01CaddyRestart: a Caddy process presents a dns-01 challenge into
// BIND and is killed (SIGKILL) before it can clean up: the record stays in
// BIND. The next Caddy, on the same storage, resumes the stored order and
// challenge for the name on its first handshake and removes the record when
// the challenge is final.
func TestDNS01CaddyRestart(t *testing.T) {
	b := newBindEnv(t)
	const name = "restart.dns.test"
	lag := startLagProxy(t, b.bind.Addr) // holds the first process before accepting

	first := b.config(b.dnsIssuer(map[string]any{"resolvers": []string{b.bind.Addr, lag.addr}}))
	first.LogFile = filepath.Join(t.TempDir(), "first-caddy.log")
	cfgJSON, err := first.JSON()
	if err != nil {
		t.Fatal(err)
	}
	chalID, pid := killHelperCaddyAt(t, caddyJob{Config: cfgJSON, Storage: b.storage, Addr: b.addr(), Name: name},
		first.LogFile, "CERTFLOW-PRESENTED ", "presenting")
	t.Logf("first Caddy (pid %d) killed with challenge %s presented", pid, chalID)

	// what the dead process left: the record, and the challenge as it was
	left, err := b.bind.TXT("_acme-challenge.restart")
	if err != nil || len(left) != 1 {
		t.Fatalf("after the kill BIND serves %q (%v), want the first process's value", left, err)
	}
	chals := b.resources("challenges", name)
	if len(chals) != 1 || chals[0].str("id") != chalID || chals[0].str("state") != "presented" || chals[0]["cleaned_up"] == true {
		t.Fatalf("after the kill: %s", dump(chals))
	}
	if presentedValue(t, chals[0]) != left[0] {
		t.Fatalf("BIND has %q, the stored memo another value: %s", left, dump(chals[0]))
	}
	deadOwner := chals[0].str("owner")

	// the next process: the same storage, BIND alone as resolver
	start := time.Now()
	b.run(b.config(b.dnsIssuer(nil)))
	b.mustHandshake(name)
	t.Logf("the next Caddy issued %s in %s (certmagic's lock of the dead process goes stale after 10 s)",
		name, time.Since(start).Round(time.Millisecond))

	if got, err := b.bind.TXT("_acme-challenge.restart"); err != nil || len(got) != 0 {
		t.Errorf("after the next process finished, BIND still serves %q (%v)", got, err)
	}
	chals = b.resources("challenges", name)
	if len(chals) != 1 || chals[0].str("id") != chalID {
		t.Fatalf("want the stored challenge resumed, got: %s", dump(chals))
	}
	checkDNSChallenge(t, chals[0])
	// run by the next process: its owner now (maintenance judges it by
	// that process's heartbeat)
	if o := chals[0].str("owner"); o == "" || o == deadOwner {
		t.Errorf("the resumed challenge's owner is %q, the dead process's was %q", o, deadOwner)
	}
	if n := b.ca.NewOrders(name); n != 1 {
		t.Errorf("the CA saw %d new orders for %s, want 1 (the order resumed)", n, name)
	}
}

// TestDNS01ConfigErrors: DNS settings without a provider, or with a provider
// module that is not compiled in, are refused when the config is loaded.
func TestDNS01ConfigErrors(t *testing.T) {
	b := newBindEnv(t)
	for _, tc := range []struct {
		name string
		dns  map[string]any
		want string
	}{
		{"no provider", map[string]any{"propagation_timeout": "2m"}, "no DNS provider"},
		{"unknown provider", map[string]any{"provider": map[string]any{"name": "nosuchprovider"}}, "dns.providers.nosuchprovider"},
		{"bad propagation_timeout", map[string]any{"provider": b.bind.Provider(), "propagation_timeout": -5}, "propagation_timeout must be positive, or -1"},
		{"bad resolver", map[string]any{"provider": b.bind.Provider(), "resolvers": []string{"127.0.0.1:dns"}}, `dns resolver "127.0.0.1:dns"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			iss := b.dnsIssuer(nil)
			iss["challenges"].(map[string]any)["dns"] = tc.dns
			cfg, err := b.config(iss).JSON()
			if err != nil {
				t.Fatal(err)
			}
			err = rig.RunCaddy(cfg)
			if err == nil {
				_ = rig.StopCaddy()
				t.Fatalf("config loaded, want an error containing %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}
