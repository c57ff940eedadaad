package integration

import (
	"encoding/json"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/certflow/certflow/integration/rig"
)

// Tests of tls.permission.certflow, the on-demand permission module: real
// Caddy in process, real handshakes, a counting ask endpoint (rig.AskServer)
// in front of Pebble.

// admissionEnv is an env whose Caddy asks permission through certflow's
// module, with an admin endpoint (for /metrics and status), Caddy's log in
// a file and the test event recorder subscribed to the module.
type admissionEnv struct {
	*env
	ask     *rig.AskServer
	admin   string
	logFile string
}

// newAdmissionEnv starts the env and an ask server allowing the names
// allow accepts (nil: all).
func newAdmissionEnv(t *testing.T, o envOptions, allow func(name string) bool) *admissionEnv {
	t.Helper()
	a := &admissionEnv{env: newEnv(t, o), logFile: filepath.Join(t.TempDir(), "caddy.log")}
	var err error
	if a.ask, err = rig.StartAskServer(allow); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.ask.Stop)
	port, err := rig.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	a.admin = fmt.Sprintf("127.0.0.1:%d", port)
	return a
}

// admissionRun is what a test changes in the config.
type admissionRun struct {
	permission map[string]any // fields of the certflow permission module besides module and ask
	issuer     map[string]any // extra issuer fields
	logLevel   string         // Caddy's log level; default ERROR
	adjust     func(cfg map[string]any)
}

// run starts (or reloads) Caddy with certflow as the catch-all on-demand
// issuer and tls.permission.certflow asking a.ask.
func (a *admissionEnv) run(r admissionRun) {
	a.t.Helper()
	cfg := a.config(a.issuer(r.issuer))
	cfg.AdminListen = a.admin
	cfg.LogFile = a.logFile
	cfg.LogLevel = r.logLevel
	if cfg.LogLevel == "" {
		cfg.LogLevel = "ERROR"
	}
	m, err := cfg.Build()
	if err != nil {
		a.t.Fatal(err)
	}
	perm := map[string]any{"module": "certflow", "ask": a.ask.URL}
	for k, v := range r.permission {
		perm[k] = v
	}
	apps := m["apps"].(map[string]any)
	apps["tls"].(map[string]any)["automation"].(map[string]any)["on_demand"] = map[string]any{"permission": perm}
	apps["events"] = map[string]any{
		"subscriptions": []any{map[string]any{
			"modules":  []string{"tls.permission.certflow"},
			"handlers": []any{map[string]any{"handler": "certflow_test_recorder"}},
		}},
	}
	if r.adjust != nil {
		r.adjust(m)
	}
	b, err := json.Marshal(m)
	if err != nil {
		a.t.Fatal(err)
	}
	resetEventLog()
	if err := rig.RunCaddy(b); err != nil {
		a.t.Fatalf("starting Caddy: %v", err)
	}
	if !a.running {
		a.running = true
		a.t.Cleanup(func() { _ = rig.StopCaddy() })
	}
}

// observed gives the observe tests' admin functions (scrape, status, cli).
func (a *admissionEnv) observed() *observed { return &observed{env: a.env, admin: a.admin} }

// logLines returns the lines of Caddy's log containing every one of subs.
func (a *admissionEnv) logLines(subs ...string) []string {
	a.t.Helper()
	raw, err := os.ReadFile(a.logFile)
	if err != nil && !os.IsNotExist(err) {
		a.t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(raw), "\n") {
		all := line != ""
		for _, s := range subs {
			all = all && strings.Contains(line, s)
		}
		if all {
			out = append(out, line)
		}
	}
	return out
}

// refusals reads certflow_admission_refusals_total by reason.
func refusals(snap metricsSnapshot, reason string) float64 {
	return snap[metricSeries("certflow_admission_refusals_total", "reason", reason)]
}

// TestAdmissionFloodOfDeniedNames: 10 000 handshakes cycling over 100
// names the endpoint denies reach the endpoint once per name (the denials
// are cached for longer than the flood lasts, so there are no expiries),
// write nothing to storage and send nothing to the CA. The per-client
// budget is off: every handshake comes from 127.0.0.1, and the cache, not
// the budget, is under test.
func TestAdmissionFloodOfDeniedNames(t *testing.T) {
	const (
		names       = 100
		rounds      = 100
		concurrency = 50
	)
	schedulerIdle(t)
	a := newAdmissionEnv(t, envOptions{}, func(name string) bool { return !strings.HasPrefix(name, "denied-") })
	listsAtStart := maintenanceLists()
	a.run(admissionRun{
		permission: map[string]any{
			"cache_denied":     "10m",
			"client_new_names": map[string]any{"disabled": true},
		},
		adjust: func(m map[string]any) {
			m["storage"] = map[string]any{"module": "certflow_rig_counting", "root": a.storage}
		},
	})
	// what any first issuance writes (account, certmagic's bookkeeping) is
	// written before the flood, and certflow's start-up maintenance (3 s
	// after start) is over
	a.mustHandshake("allowed.test")
	waitMaintenancePass(t, a.storage, listsAtStart)
	o := a.observed()
	before := o.scrape()
	stores0, deletes0, locks0 := rig.StorageWrites()
	asks0 := a.ask.Requests()
	ca0 := len(a.ca.Requests())

	work := make(chan string)
	var succeeded atomic.Int64
	var wg sync.WaitGroup
	for range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for name := range work {
				if _, err := rig.Handshake(a.addr(), name, a.ca.IssuerRoots(), 10*time.Second); err == nil {
					succeeded.Add(1)
				}
			}
		}()
	}
	start := time.Now()
	for i := range names * rounds {
		work <- fmt.Sprintf("denied-%03d.test", i%names)
	}
	close(work)
	wg.Wait()
	took := time.Since(start)

	stores, deletes, locks := rig.StorageWrites()
	asks := a.ask.Requests() - asks0
	after := o.scrape()
	t.Logf("%d handshakes over %d denied names (concurrency %d) in %s (%.0f/s): %d asks, storage writes %d/%d/%d (store/delete/lock), %d CA requests",
		names*rounds, names, concurrency, took.Round(time.Millisecond), float64(names*rounds)/took.Seconds(),
		asks, stores-stores0, deletes-deletes0, locks-locks0, len(a.ca.Requests())-ca0)
	if n := succeeded.Load(); n != 0 {
		t.Errorf("%d handshakes for denied names succeeded", n)
	}
	if asks > names {
		t.Errorf("the endpoint got %d requests for %d denied names, want at most %d", asks, names, names)
	}
	for i := range names {
		if n := a.ask.RequestsFor(fmt.Sprintf("denied-%03d.test", i)); n != 1 {
			t.Errorf("denied-%03d.test was asked %d times, want once", i, n)
		}
	}
	if stores != stores0 || deletes != deletes0 || locks != locks0 {
		t.Errorf("the flood wrote to storage: %d stores, %d deletes, %d locks", stores-stores0, deletes-deletes0, locks-locks0)
	}
	if n := len(a.ca.Requests()) - ca0; n != 0 {
		t.Errorf("the flood sent %d requests to the CA", n)
	}
	// certmagic lets concurrent handshakes for one name share one lookup,
	// so the module is consulted at most once per handshake
	metricDelta(t, before, after, map[string]float64{
		metricSeries("certflow_admission_asks_total", "outcome", "denied"): names,
		metricSeries("certflow_admission_asks_total", "outcome", "error"):  0,
	})
	delta := func(series string) float64 { return after[series] - before[series] }
	hits := delta(metricSeries("certflow_admission_cache_total", "result", "hit"))
	misses := delta(metricSeries("certflow_admission_cache_total", "result", "miss"))
	denied := delta(metricSeries("certflow_admission_refusals_total", "reason", "denied"))
	t.Logf("admission cache: %v hits, %v misses; %v denials", hits, misses, denied)
	if misses < names || hits+misses > names*rounds || denied != hits+misses {
		t.Errorf("cache hits %v and misses %v, denials %v: want at least %d misses, at most %d lookups, each denied",
			hits, misses, denied, names, names*rounds)
	}
}

// TestAdmissionKeepsNameWithCertificate: a name whose certificate is valid
// but whose renewal fails (the CA refuses it) is held back by certflow;
// when its certificate has to be loaded from storage again, the module
// lets the handshake through and the stored certificate is served. The TLS
// app's certificate cache holds one certificate, so each handshake for
// another name pushes it out of memory; Pebble's 40-minute certificates
// are always due for renewal (certmagic renews what expires within five
// renewal check intervals, 50 minutes), so every handshake served from
// memory starts a background renewal.
func TestAdmissionKeepsNameWithCertificate(t *testing.T) {
	schedulerIdle(t)
	a := newAdmissionEnv(t, envOptions{certValidity: 40 * time.Minute}, nil)
	a.run(admissionRun{
		issuer:   map[string]any{"failure_backoff": map[string]any{"initial": "1h"}},
		logLevel: "DEBUG",
		adjust: func(m map[string]any) {
			m["apps"].(map[string]any)["tls"].(map[string]any)["cache"] = map[string]any{"capacity": 1}
		},
	})
	const name = "held.test"
	leaf := a.mustHandshake(name)
	if err := a.ca.BlockDomain(name); err != nil {
		t.Fatal(err)
	}
	o := a.observed()
	before := o.scrape()

	// served from memory, which starts a renewal the CA refuses
	if got := a.mustHandshake(name); got.SerialNumber.Cmp(leaf.SerialNumber) != 0 {
		t.Fatalf("handshake served serial %s, want the stored %s", got.SerialNumber, leaf.SerialNumber)
	}
	waitForDiag(t, "the failed renewal to hold the name back", pollMax, func() bool {
		rec := nameRecordOf(t, a.storage, name)
		next, _ := rec["next_attempt"].(string)
		at, err := time.Parse(time.RFC3339Nano, next)
		return err == nil && at.After(time.Now().Add(30*time.Minute))
	}, func() string { return dump(nameRecordOf(t, a.storage, name)) })

	for i := range 3 {
		other := fmt.Sprintf("evict-%d.test", i)
		a.mustHandshake(other) // pushes held.test out of the certificate cache
		got, err := a.handshake(name)
		if err != nil {
			t.Fatalf("round %d: handshake for %s, held back by certflow but with a valid certificate in storage: %v", i, name, err)
		}
		if got.SerialNumber.Cmp(leaf.SerialNumber) != 0 {
			t.Fatalf("round %d: served serial %s, want the stored %s", i, got.SerialNumber, leaf.SerialNumber)
		}
	}
	after := o.scrape()
	// the module did see the name held back each time, and let it through
	if lines := a.logLines("it has a certificate in storage: not refused", `"name":"`+name+`"`); len(lines) < 3 {
		t.Errorf("the module saw %s held back with a stored certificate %d times, want at least 3 (once per round)", name, len(lines))
	}
	for _, reason := range []string{"held", "cannot_issue", "client_budget", "denied"} {
		if d := refusals(after, reason) - refusals(before, reason); d != 0 {
			t.Errorf("the module refused %v times for %s", d, reason)
		}
	}
	if n := a.ask.RequestsFor(name); n != 1 {
		t.Errorf("%s was asked %d times, want once (the answer is cached)", name, n)
	}
	if n := a.ca.NewOrders(name); n < 2 {
		t.Errorf("the CA saw %d new orders for %s: the renewal was never tried", n, name)
	}
}

// TestAdmissionOneAskForConcurrentHandshakes: 100 concurrent handshakes
// for one new allowed name make one ask, and all get the certificate.
func TestAdmissionOneAskForConcurrentHandshakes(t *testing.T) {
	schedulerIdle(t)
	a := newAdmissionEnv(t, envOptions{}, nil)
	a.run(admissionRun{})
	const name = "burst.test"
	names := make([]string, 100)
	results := make([]error, len(names))
	var wg sync.WaitGroup
	for i := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			leaf, err := a.handshake(name)
			if err == nil && !contains(leaf.DNSNames, name) {
				err = fmt.Errorf("got a certificate for %v", leaf.DNSNames)
			}
			results[i] = err
		}()
	}
	wg.Wait()
	for i, err := range results {
		if err != nil {
			t.Errorf("handshake %d: %v", i, err)
		}
	}
	if n := a.ask.RequestsFor(name); n != 1 {
		t.Errorf("100 concurrent handshakes for %s made %d asks, want 1", name, n)
	}
}

// TestAdmissionFailingEndpoint: with an endpoint that hangs, and then one
// that answers 500, handshakes fail within ask_timeout plus a small
// margin, Caddy's log names the endpoint for each name, at most
// max_concurrent_asks requests were in flight, and nothing was cached: the
// same names are issued once the endpoint answers again.
func TestAdmissionFailingEndpoint(t *testing.T) {
	const (
		askTimeout    = time.Second
		margin        = time.Second
		maxConcurrent = 4
		handshakes    = 12
	)
	for _, mode := range []struct {
		name string
		mode rig.AskMode
	}{{"hang", rig.AskHang}, {"500", rig.AskFail}} {
		t.Run(mode.name, func(t *testing.T) {
			schedulerIdle(t)
			a := newAdmissionEnv(t, envOptions{}, nil)
			a.run(admissionRun{permission: map[string]any{
				"ask_timeout":         askTimeout.String(),
				"ask_queue_timeout":   "300ms",
				"max_concurrent_asks": maxConcurrent,
			}})
			a.ask.SetMode(mode.mode)
			names := make([]string, handshakes)
			for i := range names {
				names[i] = fmt.Sprintf("%s-%02d.test", mode.name, i)
			}
			results := a.handshakeAsync(names...)()
			for _, n := range names {
				r := results[n]
				if r.err == nil {
					t.Errorf("handshake for %s succeeded with a failing endpoint", n)
				}
				if r.took > askTimeout+margin {
					t.Errorf("handshake for %s failed after %s, want within %s", n, r.took.Round(time.Millisecond), askTimeout+margin)
				}
				if len(a.logLines(n, a.ask.URL)) == 0 {
					t.Errorf("Caddy's log has no error naming the endpoint %s for %s", a.ask.URL, n)
				}
			}
			if mode.mode == rig.AskHang {
				// the first asks time out, the others find every slot taken
				timedOut, busy := len(a.logLines("no answer within ask_timeout", a.ask.URL)), len(a.logLines("every ask slot is taken", a.ask.URL))
				if timedOut == 0 || busy == 0 || timedOut+busy < handshakes {
					t.Errorf("%d timed-out and %d busy errors logged for %d handshakes", timedOut, busy, handshakes)
				}
			}
			if got := a.ask.MaxInFlight(); got > maxConcurrent || got == 0 {
				t.Errorf("the endpoint had at most %d requests in flight, want 1..%d", got, maxConcurrent)
			}
			t.Logf("%s: %d asks, at most %d in flight; example error: %s", mode.name, a.ask.Requests(), a.ask.MaxInFlight(),
				head(a.logLines(names[0], a.ask.URL), 1))

			// nothing was cached as a denial: once the endpoint answers,
			// the same names are asked again and issued
			a.ask.SetMode(rig.AskAnswer)
			waitFor(t, "the hanging requests to end", pollMax, func() bool { return a.ask.InFlight() == 0 })
			for _, n := range names[:3] {
				before := a.ask.RequestsFor(n)
				if _, err := a.handshake(n); err != nil {
					t.Fatalf("handshake for %s once the endpoint answers: %v; Caddy's log about it:\n%s", n, err, strings.Join(a.logLines(n), "\n"))
				}
				if a.ask.RequestsFor(n) != before+1 {
					t.Errorf("%s was not asked again after the failure (a failure was cached)", n)
				}
			}
		})
	}
}

// TestAdmissionRefusesNameInBackoff: a name certflow backs off (the CA
// refused it) and whose allowed answer has expired is refused without
// asking the endpoint, with the next attempt time in the error.
func TestAdmissionRefusesNameInBackoff(t *testing.T) {
	schedulerIdle(t)
	a := newAdmissionEnv(t, envOptions{}, nil)
	a.run(admissionRun{
		permission: map[string]any{"cache_allowed": "200ms"},
		logLevel:   "DEBUG",
	})
	const name = "backoff.test"
	if err := a.ca.BlockDomain(name); err != nil {
		t.Fatal(err)
	}
	if _, err := a.handshake(name); err == nil {
		t.Fatal("handshake for a name the CA refuses succeeded")
	}
	rec := nameRecordOf(t, a.storage, name)
	next, _ := rec["next_attempt"].(string)
	nextAt, err := time.Parse(time.RFC3339Nano, next)
	if err != nil || !nextAt.After(time.Now()) {
		t.Fatalf("the name does not back off: %s", dump(rec))
	}
	time.Sleep(300 * time.Millisecond) // the allowed answer expires
	o := a.observed()
	before := o.scrape()
	asks := a.ask.RequestsFor(name)
	orders := a.ca.NewOrders(name)

	for range 5 {
		start := time.Now()
		if _, err := a.handshake(name); err == nil {
			t.Fatal("handshake for a name in backoff succeeded")
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("refusal took %s; it should be immediate", took)
		}
	}
	after := o.scrape()
	if n := a.ask.RequestsFor(name) - asks; n != 0 {
		t.Errorf("the endpoint was asked %d times about a name in backoff", n)
	}
	if n := a.ca.NewOrders(name) - orders; n != 0 {
		t.Errorf("the CA saw %d new orders for a name in backoff", n)
	}
	if d := refusals(after, "held") - refusals(before, "held"); d != 5 {
		t.Errorf("held refusals grew by %v, want 5", d)
	}
	want := "certflow holds back " + name + " until " + nextAt.UTC().Format(time.RFC3339)
	if lines := a.logLines(want); len(lines) < 5 {
		t.Errorf("Caddy's log has %d lines with %q, want one per refused handshake (5)", len(lines), want)
	} else {
		t.Logf("logged: %s", lines[0])
	}
}

// TestAdmissionClientBudget: one client address spraying names is refused
// past its budget (5 new names per minute here), without the endpoint being
// asked, while a second address's new names are issued; the refusal is
// logged at WARN and emitted once, and never cached as a denial of the
// name.
func TestAdmissionClientBudget(t *testing.T) {
	const (
		sprayer = "127.0.0.3"
		other   = "127.0.0.4"
		budget  = 5
	)
	schedulerIdle(t)
	a := newAdmissionEnv(t, envOptions{}, func(name string) bool { return strings.HasPrefix(name, "ok-") })
	a.run(admissionRun{
		permission: map[string]any{"client_new_names": map[string]any{"names": budget, "window": "1m"}},
		logLevel:   "WARN",
	})
	o := a.observed()
	before := o.scrape()
	from := func(src, name string) (*big.Int, error) {
		state, err := rig.HandshakeFrom(src, a.addr(), name, a.ca.IssuerRoots(), 30*time.Second)
		if err != nil {
			return nil, err
		}
		return state.PeerCertificates[0].SerialNumber, nil
	}

	spray := make([]string, 10)
	for i := range spray {
		spray[i] = fmt.Sprintf("spray-%02d.test", i)
		start := time.Now()
		if _, err := from(sprayer, spray[i]); err == nil {
			t.Fatalf("handshake for %s succeeded", spray[i])
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("refusing %s took %s", spray[i], took)
		}
	}
	// an allowed name is refused too: the client's budget is spent
	if _, err := from(sprayer, "ok-a.test"); err == nil {
		t.Fatal("the sprayer got a new name past its budget")
	}
	for i, n := range spray {
		want := 0
		if i < budget {
			want = 1
		}
		if got := a.ask.RequestsFor(n); got != want {
			t.Errorf("%s was asked %d times, want %d", n, got, want)
		}
	}
	if n := a.ask.RequestsFor("ok-a.test"); n != 0 {
		t.Errorf("ok-a.test was asked %d times while the sprayer was over its budget", n)
	}

	// the other client is unaffected, and the budget refusal was not
	// cached as a denial of ok-a.test
	for _, n := range []string{"ok-a.test", "ok-b1.test", "ok-b2.test", "ok-b3.test"} {
		if _, err := from(other, n); err != nil {
			t.Errorf("handshake from %s for %s: %v", other, n, err)
		}
	}
	after := o.scrape()
	if d := refusals(after, "client_budget") - refusals(before, "client_budget"); d != 6 {
		t.Errorf("client_budget refusals grew by %v, want 6", d)
	}
	warned := a.logLines("exceeded its budget of new names", sprayer)
	if len(warned) != 1 || !strings.Contains(warned[0], `"level":"warn"`) {
		t.Errorf("want one WARN line for %s, got %d:\n%s", sprayer, len(warned), strings.Join(warned, "\n"))
	}
	if lines := a.logLines("exceeded its budget of new names", other); len(lines) != 0 {
		t.Errorf("the other client was reported: %s", lines)
	}
	eventLog.mu.Lock()
	var budgetEvents []recordedEvent
	for _, e := range eventLog.events {
		if e.Name == "certflow_client_budget_exceeded" {
			budgetEvents = append(budgetEvents, e)
		}
	}
	eventLog.mu.Unlock()
	if len(budgetEvents) != 1 || budgetEvents[0].Data["client"] != sprayer || budgetEvents[0].Origin != "tls.permission.certflow" {
		t.Errorf("budget events: %s", dump(budgetEvents))
	}

	// status shows the cached answers and their age
	if st := o.status("spray-00.test"); st.Admission == nil || st.Admission.Allowed || st.Admission.Source != a.ask.URL {
		t.Errorf("status of spray-00.test: %s", dump(st))
	}
	out, code := o.cli("spray-00.test")
	if code != 0 || !strings.Contains(out, "Admission:") || !strings.Contains(out, "denied by "+a.ask.URL) {
		t.Errorf("caddy certflow status spray-00.test (exit %d):\n%s", code, out)
	}
	t.Logf("caddy certflow status spray-00.test:\n%s", out)
	out, _ = o.cli("ok-b1.test")
	if !strings.Contains(out, "allowed by "+a.ask.URL) || !strings.Contains(out, "Ready") {
		t.Errorf("caddy certflow status ok-b1.test:\n%s", out)
	}
}

// TestAdmissionWithStockIssuer: the module works when the policy issues
// through Caddy's stock acme issuer: certflow's refusals do not apply, the
// answer is cached, and the certificate is issued.
func TestAdmissionWithStockIssuer(t *testing.T) {
	schedulerIdle(t)
	a := newAdmissionEnv(t, envOptions{}, nil)
	stock := map[string]any{
		"module":                  "acme",
		"ca":                      a.ca.DirectoryURL,
		"email":                   "ops@example.com",
		"trusted_roots_pem_files": []string{a.ca.ServerRootsFile},
	}
	a.run(admissionRun{adjust: func(m map[string]any) {
		policies := m["apps"].(map[string]any)["tls"].(map[string]any)["automation"].(map[string]any)["policies"].([]any)
		policies[len(policies)-1].(map[string]any)["issuers"] = []any{stock}
	}})
	const name = "stock-issued.test"
	a.mustHandshake(name)
	a.mustHandshake(name)
	if n := a.ask.RequestsFor(name); n != 1 {
		t.Errorf("%s was asked %d times, want once", name, n)
	}
	if reqs := a.resources("requests", name); len(reqs) != 0 {
		t.Errorf("certflow's issuer took part: %s", dump(reqs))
	}
}

// TestAdmissionLeavesFallbackToServe: in a policy with a fallback issuer
// (certflow at CA 1, then acme at CA 2), a name certflow backs off is not
// refused by the module: the fallback may still obtain it. certflow backs
// the name off under a first config without the fallback; the reload that
// adds it keeps certflow's engine, and so the backoff.
func TestAdmissionLeavesFallbackToServe(t *testing.T) {
	schedulerIdle(t)
	a := newAdmissionEnv(t, envOptions{}, nil)
	ca2 := startCA(t, rig.CAOptions{HTTPPort: a.httpPort, TLSPort: a.httpsPort, DNSAddr: a.dns.Addr})
	const name, probe = "fallback.test", "probe.test"
	if err := a.ca.BlockDomain(name); err != nil {
		t.Fatal(err)
	}
	perm := map[string]any{"cache_allowed": "200ms"}
	a.run(admissionRun{permission: perm})
	a.mustHandshake(probe)
	if _, err := a.handshake(name); err == nil {
		t.Fatal("handshake for a name CA 1 refuses succeeded")
	}
	if rec := nameRecordOf(t, a.storage, name); rec == nil || rec["next_attempt"] == nil {
		t.Fatalf("certflow does not back the name off: %s", dump(rec))
	}

	a.run(admissionRun{permission: perm, adjust: func(m map[string]any) {
		policies := m["apps"].(map[string]any)["tls"].(map[string]any)["automation"].(map[string]any)["policies"].([]any)
		last := policies[len(policies)-1].(map[string]any)
		last["issuers"] = append(last["issuers"].([]map[string]any), map[string]any{
			"module":                  "acme",
			"ca":                      ca2.DirectoryURL,
			"email":                   "ops@example.com",
			"trusted_roots_pem_files": []string{ca2.ServerRootsFile},
		})
	}})
	// right after a reload the old servers may still reset a connection
	ok := 0
	for deadline := time.Now().Add(10 * time.Second); ok < 3; {
		if time.Now().After(deadline) {
			t.Fatalf("after the reload, handshakes for %s kept failing", probe)
		}
		if _, err := rig.Handshake(a.addr(), probe, a.ca.IssuerRoots(), 2*time.Second); err != nil {
			ok = 0
			time.Sleep(pollEvery)
			continue
		}
		ok++
	}
	time.Sleep(300 * time.Millisecond) // the allowed answer expires
	if _, err := rig.Handshake(a.addr(), name, ca2.IssuerRoots(), 30*time.Second); err != nil {
		t.Fatalf("handshake for %s, which the fallback issuer can obtain: %v", name, err)
	}
	if n := a.ask.RequestsFor(name); n != 2 {
		t.Errorf("%s was asked %d times, want 2 (once per expired answer)", name, n)
	}
}
