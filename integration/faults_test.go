package integration

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/certflow/certflow/integration/rig"
)

// Bounds on the CA requests of one issuance, directory and new-nonce
// requests excluded (ARI renewal-info, which certmagic asks for right after
// an issuance, included).
const (
	maxRequestsPerIssuance        = 12
	maxRequestsPerIssuanceFaulted = 24
)

// caRecord is one request the CA got, seen by a caRecorder as it arrived.
type caRecord struct {
	at     time.Time
	kind   string
	ids    []string // new-order identifiers
	action string   // "" when passed to Pebble untouched
}

// caRecorder is a CA fault hook that timestamps every request on arrival
// (including those it drops or answers itself, which the rig's log cannot
// see or sees only after the answer) and injects faults through inject.
type caRecorder struct {
	mu     sync.Mutex
	reqs   []caRecord
	nth    map[string]int
	inject injector
}

// injector decides the fault for the nth request (1-based) of a kind since
// the last reset: it returns the action to record ("" for none) and the
// fault hook's answer. To drop the connection it returns action "drop".
type injector func(kind string, nth int, r *http.Request) (action string, status int, header http.Header, body string, handled bool)

func newCARecorder() *caRecorder { return &caRecorder{nth: map[string]int{}} }

func (c *caRecorder) hook(r *http.Request) (int, http.Header, string, bool) {
	at := time.Now()
	kind := rig.KindOf(r)
	var ids []string
	if kind == rig.KindNewOrder {
		body, _ := io.ReadAll(r.Body)
		ids = rig.OrderIdentifiers(body)
		r.Body = io.NopCloser(bytes.NewReader(body))
	}
	c.mu.Lock()
	c.nth[kind]++
	n, inject := c.nth[kind], c.inject
	c.reqs = append(c.reqs, caRecord{at: at, kind: kind, ids: ids})
	i := len(c.reqs) - 1
	c.mu.Unlock()
	if inject == nil {
		return 0, nil, "", false
	}
	action, status, header, body, handled := inject(kind, n, r)
	if action != "" {
		c.mu.Lock()
		c.reqs[i].action = action
		c.mu.Unlock()
	}
	if action == "drop" {
		// net/http closes the connection without an answer
		panic(http.ErrAbortHandler)
	}
	return status, header, body, handled
}

// reset forgets the requests seen so far and installs inject.
func (c *caRecorder) reset(inject injector) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reqs, c.nth, c.inject = nil, map[string]int{}, inject
}

func (c *caRecorder) records() []caRecord {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]caRecord(nil), c.reqs...)
}

// counted returns the number of requests since the last reset, directory
// and nonce excluded, and a breakdown by kind (nonces included) for the log.
func (c *caRecorder) counted() (int, string) {
	byKind := map[string]int{}
	n := 0
	for _, r := range c.records() {
		byKind[r.kind]++
		if r.kind != rig.KindDirectory && r.kind != rig.KindNonce {
			n++
		}
	}
	kinds := make([]string, 0, len(byKind))
	for k := range byKind {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	parts := make([]string, 0, len(kinds))
	for _, k := range kinds {
		parts = append(parts, fmt.Sprintf("%s=%d", k, byKind[k]))
	}
	return n, strings.Join(parts, " ")
}

// rateLimited is a 429 rateLimited problem with a Retry-After header.
func rateLimited(retryAfter string) (int, http.Header, string, bool) {
	h := http.Header{}
	h.Set("Content-Type", "application/problem+json")
	h.Set("Retry-After", retryAfter)
	return http.StatusTooManyRequests, h,
		`{"type":"urn:ietf:params:acme:error:rateLimited","detail":"certflow test: slow down","status":429}`, true
}

// serverError is a 500 serverInternal problem.
func serverError() (int, http.Header, string, bool) {
	h := http.Header{}
	h.Set("Content-Type", "application/problem+json")
	return http.StatusInternalServerError, h,
		`{"type":"urn:ietf:params:acme:error:serverInternal","detail":"certflow test: injected failure","status":500}`, true
}

// faultEnv starts an in-process Caddy with certflow against a fresh Pebble
// with a caRecorder in front, and issues a warm-up name so the ACME account
// and directory are in place before the recorder is reset.
func faultEnv(t *testing.T) (*env, *caRecorder) {
	t.Helper()
	schedulerIdle(t)
	e := newEnv(t, envOptions{})
	rec := newCARecorder()
	e.ca.SetFault(rec.hook)
	e.run(e.config(e.issuer(nil)))
	e.mustHandshake("warm-up.test")
	time.Sleep(300 * time.Millisecond) // certmagic's ARI request after the issuance
	return e, rec
}

// TestFaultRequestBounds: one on-demand issuance costs at most 12 requests
// to the CA (directory and nonces excluded) without faults, and at most 24
// under each fault, and succeeds under each: a 500 on finalize (once),
// dropped connections on the first three authorization requests, and a
// 500 ms delay on every new-order.
func TestFaultRequestBounds(t *testing.T) {
	for _, tc := range []struct {
		name   string
		inject injector
		bound  int
		check  func(t *testing.T, recs []caRecord)
	}{
		{name: "no fault", bound: maxRequestsPerIssuance},
		{
			name: "500 on finalize once",
			inject: func(kind string, nth int, _ *http.Request) (string, int, http.Header, string, bool) {
				if kind == rig.KindFinalize && nth == 1 {
					s, h, b, ok := serverError()
					return "500", s, h, b, ok
				}
				return "", 0, nil, "", false
			},
			bound: maxRequestsPerIssuanceFaulted,
			check: func(t *testing.T, recs []caRecord) {
				if countKind(recs, rig.KindFinalize) < 2 {
					t.Errorf("the failed finalize was never retried")
				}
			},
		},
		{
			name: "dropped connections on authz",
			inject: func(kind string, nth int, _ *http.Request) (string, int, http.Header, string, bool) {
				if kind == rig.KindAuthz && nth <= 3 {
					return "drop", 0, nil, "", false
				}
				return "", 0, nil, "", false
			},
			bound: maxRequestsPerIssuanceFaulted,
			check: func(t *testing.T, recs []caRecord) {
				if n := countAction(recs, "drop"); n != 3 {
					t.Errorf("%d connections were dropped, want 3", n)
				}
			},
		},
		{
			name: "slow new-order",
			inject: func(kind string, _ int, _ *http.Request) (string, int, http.Header, string, bool) {
				if kind == rig.KindNewOrder {
					time.Sleep(500 * time.Millisecond)
					return "slow", 0, nil, "", false
				}
				return "", 0, nil, "", false
			},
			bound: maxRequestsPerIssuanceFaulted,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, rec := faultEnv(t)
			name := strings.ReplaceAll(tc.name, " ", "-") + ".test"
			rec.reset(tc.inject)
			start := time.Now()
			e.mustHandshake(name)
			took := time.Since(start)
			time.Sleep(300 * time.Millisecond)
			n, breakdown := rec.counted()
			t.Logf("%s: issued in %s with %d CA requests (directory and nonces excluded): %s",
				tc.name, took.Round(time.Millisecond), n, breakdown)
			if n > tc.bound {
				t.Errorf("%d CA requests for one issuance, bound %d", n, tc.bound)
			}
			if got := e.ca.NewOrders(name); got != 1 {
				t.Errorf("the CA saw %d new-orders for %s, want 1", got, name)
			}
			if tc.check != nil {
				tc.check(t, rec.records())
			}
		})
	}
}

// TestFaultRetryAfter: a 429 with Retry-After: 3 on a new-order, in
// wording certflow does not recognise, holds back that name's new orders
// (the scope of the order's own names) until the 3 s have passed; then it
// is issued within the request bound. A name of another registered domain
// whose handshake starts during the hold is not held.
func TestFaultRetryAfter(t *testing.T) {
	e, rec := faultEnv(t)

	var limitedAt stamp
	limitFirst := func(kind string, nth int, _ *http.Request) (string, int, http.Header, string, bool) {
		if kind == rig.KindNewOrder && nth == 1 {
			limitedAt.set(time.Now())
			s, h, b, ok := rateLimited("3")
			return "429", s, h, b, ok
		}
		return "", 0, nil, "", false
	}
	rec.reset(limitFirst)
	waitLimited := e.handshakeAsync("limited.test")
	waitFor(t, "the 429", pollMax, func() bool { return countAction(rec.records(), "429") == 1 })
	// while it waits, its request says why and until when
	waitFor(t, "the held request to record its wait", pollMax, func() bool {
		reqs := e.resources("requests", "limited.test")
		return len(reqs) == 1 && reqs[0].str("state") == "pending" &&
			strings.Contains(reqs[0].str("reason"), "held") && reqs[0].str("next_attempt") != ""
	})
	start := time.Now()
	e.mustHandshake("free.test")
	if held := time.Since(start); limitedAt.get().Add(3*time.Second).Before(time.Now()) && held > 3*time.Second {
		t.Errorf("another registered domain waited %s: it was held by the other name's 429", held)
	}
	r := waitLimited()["limited.test"]
	if r.err != nil {
		t.Fatalf("handshake for limited.test: %v", r.err)
	}
	if r.took < 3*time.Second {
		t.Errorf("limited.test issued %s after its handshake started: the Retry-After of 3 s was not honoured", r.took)
	}
	recs := rec.records()
	for _, rr := range recs {
		if rr.kind == rig.KindNewOrder && rr.action == "" && contains(rr.ids, "limited.test") && rr.at.Before(limitedAt.get().Add(3*time.Second)) {
			t.Errorf("a new-order for the held name reached the CA before its Retry-After ended")
		}
	}
	for name, want := range map[string]int{"limited.test": 2, "free.test": 1} {
		if got := newOrdersFor(recs, name); got != want {
			t.Errorf("the CA saw %d new-orders for %s, want %d", got, name, want)
		}
	}
	n, breakdown := rec.counted()
	if n > 2*maxRequestsPerIssuanceFaulted {
		t.Errorf("%d CA requests for two issuances, bound %d: %s", n, 2*maxRequestsPerIssuanceFaulted, breakdown)
	}
}

// TestFaultRetryAfterBeyondBudget: when the CA's Retry-After for a name is
// longer than a waiting handshake can afford (120 s, against a budget of
// 45 s), the handshake fails at once, with the next attempt time recorded;
// a second handshake for it fails at once without reaching the CA, and a
// name of another registered domain is issued meanwhile.
func TestFaultRetryAfterBeyondBudget(t *testing.T) {
	e, rec := faultEnv(t)
	var limitedAt stamp
	rec.reset(func(kind string, nth int, _ *http.Request) (string, int, http.Header, string, bool) {
		if kind == rig.KindNewOrder && nth == 1 {
			limitedAt.set(time.Now())
			s, h, b, ok := rateLimited("120")
			return "429", s, h, b, ok
		}
		return "", 0, nil, "", false
	})
	const name = "long-hold.test"
	for attempt := 1; attempt <= 2; attempt++ {
		e.mustFailFast(name)
		// the second is refused by the stored hold before anything is
		// written: still one request
		reqs := e.resources("requests", name)
		if len(reqs) != 1 || reqs[0].str("state") != "failed" {
			t.Fatalf("certificate requests for %s: %s", name, dump(reqs))
		}
		latest := reqs[0]
		next := timeField(t, latest, "next_attempt")
		want := limitedAt.get().Add(120 * time.Second)
		if next.Before(want.Add(-time.Second)) || next.After(want.Add(2*time.Second)) {
			t.Errorf("request for %s: next attempt %s, want about %s (the CA's Retry-After)", name,
				next.Format(time.RFC3339), want.Format(time.RFC3339))
		}
		if !strings.Contains(latest.str("reason"), "held") || latest.str("charged_to") != "hold" {
			t.Errorf("request for %s: the reason should say new orders are held, charged to the hold: %s", name, dump(latest))
		}
	}
	if n := newOrdersFor(rec.records(), name); n != 1 {
		t.Errorf("the CA got %d new-orders for the held name, want only the one it refused", n)
	}
	e.mustHandshake("other-domain.test")
	n, breakdown := rec.counted()
	t.Logf("429 Retry-After 120: %d CA requests (directory and nonces excluded): %s", n, breakdown)
}

func assertNoNewOrderBefore(t *testing.T, recs []caRecord, until time.Time) {
	t.Helper()
	for _, r := range recs {
		if r.kind == rig.KindNewOrder && r.action == "" && r.at.Before(until) {
			t.Errorf("a new-order for %v reached the CA %s before the Retry-After ended", r.ids, until.Sub(r.at).Round(time.Millisecond))
		}
	}
}

func countKind(recs []caRecord, kind string) int {
	n := 0
	for _, r := range recs {
		if r.kind == kind {
			n++
		}
	}
	return n
}

func countAction(recs []caRecord, action string) int {
	n := 0
	for _, r := range recs {
		if r.action == action {
			n++
		}
	}
	return n
}

func newOrdersFor(recs []caRecord, name string) int {
	n := 0
	for _, r := range recs {
		if r.kind == rig.KindNewOrder && contains(r.ids, name) {
			n++
		}
	}
	return n
}

// stamp is a time shared between a CA fault hook and the test.
type stamp struct {
	mu sync.Mutex
	t  time.Time
}

func (s *stamp) set(t time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.t = t
}

func (s *stamp) get() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.t
}
