package integration

import (
	"bytes"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mholt/acmez/v3/acme"

	"github.com/certflow/certflow/integration/rig"
)

// Renewals end to end: Pebble issuing short-lived certificates, certmagic
// checking for renewals every second, and a CA fault hook that sees the
// `replaces` of every new order.

// sentOrder is a new-order request as the CA received it.
type sentOrder struct {
	name     string // the first identifier
	replaces string
	at       time.Time
	status   int // the hook's own answer; 0 when Pebble answered
}

// orderLog is a CA fault hook recording every new-order request's first
// identifier and replaces, in arrival order. answer, when set, may answer
// a new-order itself (n is the number of new-orders for the same name so
// far, 1-based).
type orderLog struct {
	mu     sync.Mutex
	orders []sentOrder
	answer func(o sentOrder, n int) (status int, header http.Header, body string, handled bool)
}

func (l *orderLog) hook(r *http.Request) (int, http.Header, string, bool) {
	if rig.KindOf(r) != rig.KindNewOrder {
		return 0, nil, "", false
	}
	body, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(body))
	o := sentOrder{replaces: rig.OrderReplaces(body), at: time.Now()}
	if ids := rig.OrderIdentifiers(body); len(ids) > 0 {
		o.name = ids[0]
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 1
	for _, prev := range l.orders {
		if prev.name == o.name {
			n++
		}
	}
	status, h, b, handled := 0, http.Header(nil), "", false
	if l.answer != nil {
		status, h, b, handled = l.answer(o, n)
		if handled {
			o.status = status
		}
	}
	l.orders = append(l.orders, o)
	return status, h, b, handled
}

// of returns the new-orders for name, oldest first.
func (l *orderLog) of(name string) []sentOrder {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []sentOrder
	for _, o := range l.orders {
		if o.name == name {
			out = append(out, o)
		}
	}
	return out
}

// count is the number of new-orders received.
func (l *orderLog) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.orders)
}

// ariID is leaf's ARI certificate identifier (RFC 9773).
func ariID(t *testing.T, leaf *x509.Certificate) string {
	t.Helper()
	id, err := acme.ARIUniqueIdentifier(leaf)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// served is what handshakes for one name saw: each certificate once, in
// the order first seen.
type served struct {
	mu       sync.Mutex
	leaves   []*x509.Certificate
	ok, fail int
	failures []string
}

func (s *served) note(leaf *x509.Certificate, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.fail++
		if len(s.failures) < 5 {
			s.failures = append(s.failures, err.Error())
		}
		return
	}
	s.ok++
	if len(s.leaves) == 0 || !s.leaves[len(s.leaves)-1].Equal(leaf) {
		for _, seen := range s.leaves {
			if seen.Equal(leaf) {
				s.fail++
				s.failures = append(s.failures, fmt.Sprintf("served serial %x again after a newer one", leaf.SerialNumber))
				return
			}
		}
		s.leaves = append(s.leaves, leaf)
	}
}

func (s *served) certs() []*x509.Certificate {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.leaves)
}

// watchHandshakes makes a handshake for each name every interval until
// stop is closed, each checked against Pebble's roots and for an
// unexpired certificate of the name.
func (e *env) watchHandshakes(names []string, interval time.Duration, stop <-chan struct{}) (map[string]*served, *sync.WaitGroup) {
	seen := map[string]*served{}
	var wg sync.WaitGroup
	for _, n := range names {
		s := new(served)
		seen[n] = s
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(interval)
			defer tick.Stop()
			for {
				leaf, err := e.handshake(n)
				switch {
				case err != nil:
				case !contains(leaf.DNSNames, n):
					err = fmt.Errorf("a certificate for %v", leaf.DNSNames)
				case !time.Now().Before(leaf.NotAfter):
					err = fmt.Errorf("an expired certificate (serial %x, not after %s)", leaf.SerialNumber, leaf.NotAfter)
				}
				s.note(leaf, err)
				select {
				case <-stop:
					return
				case <-tick.C:
				}
			}
		}()
	}
	return seen, &wg
}

// runTuned runs cfg with changes made to its JSON form.
func (e *env) runTuned(cfg rig.CaddyConfig, tune func(m map[string]any)) {
	e.t.Helper()
	m, err := cfg.Build()
	if err != nil {
		e.t.Fatal(err)
	}
	tune(m)
	b, err := json.Marshal(m)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := rig.RunCaddy(b); err != nil {
		e.t.Fatalf("starting Caddy: %v", err)
	}
	if !e.running {
		e.running = true
		e.t.Cleanup(func() { _ = rig.StopCaddy() })
	}
}

// renewEvery makes certmagic check for renewals every interval and renew
// at ratio of a certificate's lifetime left, in every policy.
func renewEvery(interval time.Duration, ratio float64) func(m map[string]any) {
	return func(m map[string]any) {
		automation := m["apps"].(map[string]any)["tls"].(map[string]any)["automation"].(map[string]any)
		automation["renew_interval"] = interval.String()
		for _, p := range automation["policies"].([]any) {
			p.(map[string]any)["renewal_window_ratio"] = ratio
		}
	}
}

// TestRenewalCycles: managed and on-demand names with 30-second
// certificates, renewal checks every second and renewal at half the
// lifetime (or earlier, at the time Pebble's ARI window selects): every
// name is renewed at least twice while handshakes go on every 150 ms, and
// each of them gets an unexpired certificate of its name; every renewal's
// order carries replaces, the ARI identifier of the certificate it
// replaces, as the CA received it. The first renewal of one name is
// answered alreadyReplaced (by the fault hook): certflow orders again at
// once without replaces, charged to nobody.
func TestRenewalCycles(t *testing.T) {
	schedulerIdle(t)
	const validity = 30 * time.Second
	e := newEnv(t, envOptions{certValidity: validity})
	log := &orderLog{}
	const refusedName = "o1.cycle.test"
	log.answer = func(o sentOrder, n int) (int, http.Header, string, bool) {
		if o.name == refusedName && n == 2 {
			return problemResponse(http.StatusConflict, "alreadyReplaced", "certflow test: already replaced", "")
		}
		return 0, nil, "", false
	}
	e.ca.SetFault(log.hook)

	managed := []string{"m1.cycle.test", "m2.cycle.test"}
	onDemand := []string{refusedName, "o2.cycle.test"}
	cfg := e.config(e.issuer(nil))
	cfg.Policies = []rig.Policy{{Subjects: managed, Issuers: []map[string]any{e.issuer(nil)}}}
	cfg.Automate = managed
	start := time.Now()
	e.runTuned(cfg, renewEvery(time.Second, 0.5))
	for _, n := range managed {
		waitFor(t, "the managed name "+n+" to be issued", pollMax, func() bool { return fileExists(e.certPath(n)) })
	}

	all := append(slices.Clone(managed), onDemand...)
	stop := make(chan struct{})
	seen, wg := e.watchHandshakes(all, 150*time.Millisecond, stop)
	stopped := false
	halt := func() {
		if !stopped {
			stopped = true
			close(stop)
			wg.Wait()
		}
	}
	t.Cleanup(halt)
	const cycles = 2
	waitForDiag(t, fmt.Sprintf("every name to be renewed %d times", cycles), 75*time.Second, func() bool {
		for _, n := range all {
			if len(seen[n].certs()) < cycles+1 {
				return false
			}
		}
		return true
	}, func() string {
		var b strings.Builder
		for _, n := range all {
			fmt.Fprintf(&b, "%s: %d certificates served, %d new-orders\n", n, len(seen[n].certs()), len(log.of(n)))
		}
		return b.String()
	})
	halt()
	took := time.Since(start)

	renewals, withReplaces := 0, 0
	for _, n := range all {
		s := seen[n]
		certs := s.certs()
		if s.fail > 0 {
			t.Errorf("%s: %d of %d handshakes failed: %v", n, s.fail, s.ok+s.fail, s.failures)
		}
		orders := log.of(n)
		// Pebble issued one certificate per accepted order; the
		// handshakes saw each of them, except perhaps the last
		accepted := slices.DeleteFunc(slices.Clone(orders), func(o sentOrder) bool { return o.status != 0 })
		if len(accepted) < len(certs) || len(accepted) > len(certs)+1 {
			t.Errorf("%s: %d orders accepted by the CA for %d certificates served", n, len(accepted), len(certs))
			continue
		}
		if accepted[0].replaces != "" {
			t.Errorf("%s: the first order carries replaces %q", n, accepted[0].replaces)
		}
		for i := 1; i < len(accepted); i++ {
			want := ariID(t, certs[i-1])
			switch {
			case n == refusedName && i == 1:
				// the refused order had it; the one made again at once has not
				if accepted[i].replaces != "" {
					t.Errorf("%s: the order made again after alreadyReplaced carries replaces %q", n, accepted[i].replaces)
				}
			case accepted[i].replaces != want:
				t.Errorf("%s: renewal %d's order replaces %q, want %q (serial %x)", n, i, accepted[i].replaces, want, certs[i-1].SerialNumber)
			default:
				withReplaces++
			}
			renewals++
		}
		t.Logf("%s: %d certificates served over %d handshakes, %d new-orders (%d refused by the hook)",
			n, len(certs), s.ok, len(orders), len(orders)-len(accepted))
	}

	// alreadyReplaced: one order with replaces refused, the next one sent
	// at once without it, and nobody charged
	orders := log.of(refusedName)
	if len(orders) < 3 || orders[1].status != http.StatusConflict || orders[1].replaces == "" || orders[2].replaces != "" ||
		orders[2].at.Sub(orders[1].at) > 2*time.Second {
		t.Errorf("%s: want the first renewal's order (with replaces) refused and sent again at once without: %+v", refusedName, orders)
	}
	for _, r := range e.resources("requests", refusedName) {
		if r.str("state") == "failed" {
			t.Errorf("%s: a request failed: %s", refusedName, dump(r))
		}
	}
	if rec := nameRecordOf(t, e.storage, refusedName); rec != nil && rec["failures"] != nil {
		t.Errorf("%s: the refusal of replaces counted as a failure: %s", refusedName, dump(rec))
	}

	// certflow's own view: a request per certificate, each renewal one a
	// renewal of the certificate served before it
	for _, n := range all {
		certs := seen[n].certs()
		reqs := e.resources("requests", n)
		renewing := map[string]bool{}
		for _, r := range reqs {
			if r.str("kind") == "renewal" {
				renews, _ := r["renews"].(map[string]any)
				s, _ := renews["serial"].(string)
				renewing[s] = true
			}
		}
		for _, c := range certs[:len(certs)-1] {
			if !renewing[hex.EncodeToString(c.SerialNumber.Bytes())] {
				t.Errorf("%s: no renewal request renews serial %x: %s", n, c.SerialNumber, dump(reqs))
			}
		}
	}
	t.Logf("%d names, %d renewals in %s: %d renewal orders accepted by the CA, %d of them with the right replaces "+
		"(the other: sent again without after the one refused alreadyReplaced)",
		len(all), renewals, took.Round(time.Second), renewals, withReplaces)
}
