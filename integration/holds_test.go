package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	certflow "github.com/certflow/certflow"
	"github.com/certflow/certflow/integration/rig"
	"github.com/certflow/certflow/issuer"
)

// Let's Encrypt's wording of its limits (Boulder, ratelimits/limiter.go),
// as the CA would send it in a 429's problem detail.
const (
	detailNewOrders     = "too many new orders (300) from this account in the last 3h0m0s, retry after 2030-01-01 00:00:00 UTC"
	detailFailedAuthz   = `too many failed authorizations (5) for %q in the last 1h0m0s, retry after 2030-01-01 00:00:00 UTC`
	detailPerDomain     = `too many certificates (50) already issued for %q in the last 168h0m0s, retry after 2030-01-01 00:00:00 UTC`
	detailUnrecognised  = "certflow test: slow down"
	retryAfterOneDay    = "86400"
	holdClockSlack      = 5 * time.Second
	accountHoldCapSlack = time.Minute
)

// problemResponse is a fault answer with an ACME problem document.
func problemResponse(status int, typ, detail, retryAfter string) (int, http.Header, string, bool) {
	h := http.Header{}
	h.Set("Content-Type", "application/problem+json")
	if retryAfter != "" {
		h.Set("Retry-After", retryAfter)
	}
	body, _ := json.Marshal(map[string]any{"type": "urn:ietf:params:acme:error:" + typ, "detail": detail, "status": status})
	return status, h, string(body), true
}

// limitNewOrders answers new-orders naming one of names with a 429 whose
// detail is detail(name); every other request goes to Pebble.
func limitNewOrders(names map[string]bool, retryAfter string, detail func(name string) string) injector {
	return func(kind string, _ int, r *http.Request) (string, int, http.Header, string, bool) {
		if kind != rig.KindNewOrder {
			return "", 0, nil, "", false
		}
		ids := orderIDs(r)
		for _, id := range ids {
			if names[id] {
				s, h, b, ok := problemResponse(http.StatusTooManyRequests, "rateLimited", detail(id), retryAfter)
				return "429", s, h, b, ok
			}
		}
		return "", 0, nil, "", false
	}
}

// observedFaultEnv is faultEnv with the admin endpoint (runObserved).
func observedFaultEnv(t *testing.T) (*observed, *caRecorder) {
	t.Helper()
	schedulerIdle(t)
	e := newEnv(t, envOptions{})
	rec := newCARecorder()
	e.ca.SetFault(rec.hook)
	o := runObserved(t, e, e.issuer(nil))
	o.mustHandshake("warm-up.test")
	waitFor(t, "certmagic's renewal-info request after the warm-up", pollMax, func() bool { return e.ca.Count(rig.KindRenewalInfo) > 0 })
	return o, rec
}

// mustFailFast makes a handshake for name that must fail at once (a hold
// or backoff, decided before anything reaches the CA) and returns its error.
func (e *env) mustFailFast(name string) error {
	e.t.Helper()
	start := time.Now()
	_, err := e.handshake(name)
	if err == nil {
		e.t.Fatalf("handshake for %s succeeded; it should have been refused", name)
	}
	if took := time.Since(start); took > 5*time.Second {
		e.t.Errorf("handshake for %s took %s to fail; a hold must refuse it at once", name, took.Round(time.Millisecond))
	}
	return err
}

func (o *observed) holds() certflow.HoldsResponse {
	o.t.Helper()
	var resp certflow.HoldsResponse
	o.get("/certflow/holds", &resp)
	return resp
}

// holdOf returns the listed hold with key, or fails.
func (o *observed) holdOf(key string) certflow.HoldView {
	o.t.Helper()
	for _, h := range o.holds().Holds {
		if h.Key == key {
			return h
		}
	}
	o.t.Fatalf("no hold %q in %s", key, dump(o.holds()))
	return certflow.HoldView{}
}

func (o *observed) nameRecord(name string) *issuer.NameRecord {
	o.t.Helper()
	st := o.status(name)
	return st.Record
}

// TestRateLimitHoldsOnlyTheNamesLimited: a 429 with a Retry-After of a day
// on one name's new-order, in wording certflow does not recognise, holds
// that name alone: its handshakes fail at once with the hold and its end,
// nothing more of it reaches the CA, and names of other registered domains
// are issued meanwhile without waiting. The hold is stored, shown in
// status, counts no failure of the name, and POST /certflow/retry/<name>
// clears it.
func TestRateLimitHoldsOnlyTheNamesLimited(t *testing.T) {
	o, rec := observedFaultEnv(t)
	const limited = "limited.test"
	rec.reset(limitNewOrders(map[string]bool{limited: true}, retryAfterOneDay, func(string) string { return detailUnrecognised }))

	limitedAt := time.Now()
	o.mustFailFast(limited)
	hold := o.holdOf(issuer.NameHoldKey(limited))
	if want := limitedAt.Add(24 * time.Hour); hold.Until.Before(want.Add(-holdClockSlack)) || hold.Until.After(want.Add(holdClockSlack)) {
		t.Errorf("hold ends %s, want about %s (the CA's Retry-After)", hold.Until, want)
	}
	if hold.Scope.Kind != issuer.ScopeNames || hold.Limit != "unrecognised" {
		t.Errorf("hold: %s", dump(hold))
	}
	if !fileExists(filepath.Join(o.storage, "certflow", certmagic.StorageKeys.Safe(o.stateKey()), "holds", issuer.NameHoldKey(limited)+".json")) {
		t.Error("the hold is not stored, so other nodes would not honour it")
	}
	st := o.status(limited)
	if len(st.Holds) != 1 || !st.Failing || st.Request == nil || st.Request.ChargedTo != issuer.PartyHold {
		t.Errorf("status of the held name: %s", dump(st))
	}
	if st.Record == nil || st.Record.Failures != 0 {
		t.Errorf("a rate limit counted as a failure of the name: %s", dump(st.Record))
	}

	// other registered domains go on at once
	for _, name := range []string{"other-one.test", "other-two.test"} {
		o.mustHandshake(name)
		if n := newOrdersFor(rec.records(), name); n != 1 {
			t.Errorf("the CA saw %d new-orders for %s, want 1", n, name)
		}
		if reqs := o.resources("requests", name); len(reqs) != 1 || strings.Contains(reqs[0].str("reason"), "waiting") {
			t.Errorf("requests of %s: %s", name, dump(reqs))
		}
	}

	// the held name fails fast again, and nothing of it reaches the CA
	o.mustFailFast(limited)
	if n := newOrdersFor(rec.records(), limited); n != 1 {
		t.Errorf("the CA saw %d new-orders for the held name, want the one it refused", n)
	}

	// retry clears the name's hold (and backoff); the CA no longer limits it
	rec.reset(nil)
	if status, _, body := o.call(http.MethodPost, "/certflow/retry/"+limited); status != http.StatusOK {
		t.Fatalf("POST retry: HTTP %d: %s", status, body)
	}
	for _, h := range o.holds().Holds {
		if h.Key == issuer.NameHoldKey(limited) {
			t.Fatalf("the hold survived retry: %s", dump(h))
		}
	}
	o.mustHandshake(limited)
}

// TestRateLimitHoldsTheRegisteredDomain: a 429 in Let's Encrypt's wording
// for certificates per registered domain holds every name of that
// registered domain (found with the Public Suffix List), not others; the
// hold is listed and DELETE /certflow/holds/<key> clears it.
func TestRateLimitHoldsTheRegisteredDomain(t *testing.T) {
	o, rec := observedFaultEnv(t)
	rec.reset(limitNewOrders(map[string]bool{"a.shop.test": true}, retryAfterOneDay, func(string) string {
		return fmt.Sprintf(detailPerDomain, "shop.test")
	}))
	o.mustFailFast("a.shop.test")
	hold := o.holdOf("domain-shop.test")
	if hold.Scope.Kind != issuer.ScopeDomain || hold.Limit != "certificates per registered domain" {
		t.Errorf("hold: %s", dump(hold))
	}
	o.mustFailFast("b.shop.test") // same registered domain: held without asking the CA
	if n := newOrdersFor(rec.records(), "b.shop.test"); n != 0 {
		t.Errorf("the CA saw %d new-orders for a name of the held domain", n)
	}
	if st := o.status("b.shop.test"); len(st.Holds) != 1 || st.Holds[0].Scope.Value != "shop.test" {
		t.Errorf("status of a name of the held domain: %s", dump(st))
	}
	o.mustHandshake("elsewhere.test")

	rec.reset(nil)
	if status, _, body := o.call(http.MethodDelete, "/certflow/holds/domain-shop.test"); status != http.StatusOK {
		t.Fatalf("DELETE hold: HTTP %d: %s", status, body)
	}
	o.mustHandshake("b.shop.test")
}

// TestRateLimitAccountWide: a 429 in the wording of an account-wide limit
// (new orders per account) holds the account at once: every name fails
// fast, with a hold capped at issuer.AccountHoldMax whatever the
// Retry-After. Cleared, new orders go one probing order at a time until
// one succeeds.
func TestRateLimitAccountWide(t *testing.T) {
	o, rec := observedFaultEnv(t)
	rec.reset(limitNewOrders(map[string]bool{"first.test": true}, retryAfterOneDay, func(string) string { return detailNewOrders }))
	limitedAt := time.Now()
	o.mustFailFast("first.test")
	o.mustFailFast("second.test")
	if n := newOrdersFor(rec.records(), "second.test"); n != 0 {
		t.Errorf("the CA saw %d new-orders for another name while the account was held", n)
	}
	key := "account-ops@example.com"
	hold := o.holdOf(key)
	if hold.Until.After(limitedAt.Add(issuer.AccountHoldMax + accountHoldCapSlack)) {
		t.Errorf("the account's hold ends %s, beyond the cap of %s", hold.Until, issuer.AccountHoldMax)
	}
	clearAndProbe(t, o, rec, key)
}

// clearAndProbe clears the account's hold and checks the probing that
// follows: with new-orders slowed, of three concurrent handshakes for new
// names exactly one reaches the CA; the others fail at once; once it is
// issued, orders flow again.
func clearAndProbe(t *testing.T, o *observed, rec *caRecorder, key string) {
	t.Helper()
	var slowed atomic.Int32
	rec.reset(func(kind string, _ int, _ *http.Request) (string, int, http.Header, string, bool) {
		if kind == rig.KindNewOrder {
			slowed.Add(1)
			time.Sleep(time.Second)
		}
		return "", 0, nil, "", false
	})
	if status, _, body := o.call(http.MethodDelete, "/certflow/holds/"+key); status != http.StatusOK {
		t.Fatalf("DELETE account hold: HTTP %d: %s", status, body)
	}
	probes := []string{"probe-1.test", "probe-2.test", "probe-3.test"}
	results := o.handshakeAsync(probes...)()
	issued := 0
	for _, r := range results {
		if r.err == nil {
			issued++
		}
	}
	if issued != 1 || slowed.Load() != 1 {
		t.Fatalf("after the account's hold, %d of 3 concurrent names were issued and %d new-orders sent; want one probing order: %s",
			issued, slowed.Load(), dump(results))
	}
	for _, r := range results {
		if r.err != nil {
			o.mustHandshake(r.name) // probing ended with the first success
		}
	}
}

// TestRateLimitScopeDecidesTheAccount: recognised per-name 429s for many
// registered domains never hold the account; 429s of unrecognised scope for
// most of the recent new-orders (10 of the last 20, across several
// registered domains) do, capped, then one probing order at a time.
func TestRateLimitScopeDecidesTheAccount(t *testing.T) {
	o, rec := observedFaultEnv(t)
	perName := map[string]bool{}
	for i := range 12 {
		perName[fmt.Sprintf("stale-%d.test", i)] = true
	}
	rec.reset(limitNewOrders(perName, retryAfterOneDay, func(name string) string { return fmt.Sprintf(detailFailedAuthz, name) }))
	for name := range perName {
		o.mustFailFast(name)
	}
	o.mustHandshake("healthy.test") // the fleet goes on
	for _, h := range o.holds().Holds {
		if h.Scope.Kind == issuer.ScopeAccount {
			t.Fatalf("per-name limits held the account: %s", dump(h))
		}
	}

	unknown := map[string]bool{}
	var order []string
	for i := range 10 {
		n := fmt.Sprintf("odd-%d.test", i)
		unknown[n] = true
		order = append(order, n)
	}
	rec.reset(limitNewOrders(unknown, retryAfterOneDay, func(string) string { return detailUnrecognised }))
	limitedAt := time.Now()
	for _, name := range order {
		o.mustFailFast(name)
	}
	key := "account-ops@example.com"
	hold := o.holdOf(key)
	if !strings.Contains(hold.Limit, "unrecognised scope") {
		t.Errorf("account hold: %s", dump(hold))
	}
	if hold.Until.After(limitedAt.Add(issuer.AccountHoldMax + accountHoldCapSlack)) {
		t.Errorf("the account's hold ends %s, beyond the cap of %s", hold.Until, issuer.AccountHoldMax)
	}
	o.mustFailFast("innocent.test")
	clearAndProbe(t, o, rec, key)
}

// TestRateLimitWithoutProblemDocument: a 429 from something in front of
// the CA (a proxy's plain-text page) is still a rate limit: the name is
// held until its Retry-After, and no failure of the name is counted; a
// Retry-After too large to represent holds for the longest certflow
// honours, not for nothing.
func TestRateLimitWithoutProblemDocument(t *testing.T) {
	o, rec := observedFaultEnv(t)
	plain := func(retryAfter string) injector {
		return func(kind string, _ int, _ *http.Request) (string, int, http.Header, string, bool) {
			if kind != rig.KindNewOrder {
				return "", 0, nil, "", false
			}
			h := http.Header{}
			h.Set("Content-Type", "text/plain")
			h.Set("Retry-After", retryAfter)
			return "429", http.StatusTooManyRequests, h, "Too Many Requests", true
		}
	}
	rec.reset(plain("600"))
	at := time.Now()
	o.mustFailFast("proxied.test")
	hold := o.holdOf(issuer.NameHoldKey("proxied.test"))
	if want := at.Add(10 * time.Minute); hold.Until.Before(want.Add(-holdClockSlack)) || hold.Until.After(want.Add(holdClockSlack)) {
		t.Errorf("hold ends %s, want about %s", hold.Until, want)
	}
	if rec := o.nameRecord("proxied.test"); rec == nil || rec.Failures != 0 {
		t.Errorf("a proxy's 429 counted as a failure of the name: %s", dump(rec))
	}

	rec.reset(plain("99999999999999999999999"))
	at = time.Now()
	o.mustFailFast("absurd.test")
	hold = o.holdOf(issuer.NameHoldKey("absurd.test"))
	if want := at.Add(issuer.MaxRetryAfter); hold.Until.Before(want.Add(-holdClockSlack)) || hold.Until.After(want.Add(holdClockSlack)) {
		t.Errorf("an unrepresentable Retry-After held until %s, want about %s", hold.Until, want)
	}
}

// TestLongRetryAfterOnPollGivesTheSlotBack: a 503 with a Retry-After of two
// minutes on the authorization poll does not keep the challenge's scheduler
// slot: with one slot, another name is issued meanwhile; the held name's
// request is charged to the hold (no failure of the name), and its order
// stays resumable.
func TestLongRetryAfterOnPollGivesTheSlotBack(t *testing.T) {
	schedulerIdle(t)
	e := newEnv(t, envOptions{})
	rec := newCARecorder()
	e.ca.SetFault(rec.hook)
	o := runObserved(t, e, e.issuer(schedulerExtra(1)))
	o.mustHandshake("warm-up.test")

	const name = "slow-poll.test"
	var accepted atomic.Bool
	rec.reset(func(kind string, _ int, r *http.Request) (string, int, http.Header, string, bool) {
		switch {
		case kind == rig.KindChall:
			accepted.Store(true)
		case kind == rig.KindAuthz && accepted.Load():
			s, h, b, ok := problemResponse(http.StatusServiceUnavailable, "serverInternal", "certflow test: busy", "120")
			return "503", s, h, b, ok
		}
		return "", 0, nil, "", false
	})
	heldAt := time.Now()
	if _, err := o.handshake(name); err == nil {
		t.Fatal("the handshake succeeded although every poll was answered 503")
	}
	if live, _ := currentScheduler().Stats(); live != 0 {
		t.Errorf("%d challenges still hold a slot after the long Retry-After", live)
	}
	rec.reset(nil)
	o.mustHandshake("meanwhile.test")

	st := o.status(name)
	if st.Request == nil || st.Request.ChargedTo != issuer.PartyHold || st.Record == nil || st.Record.Failures != 0 {
		t.Fatalf("status of the held name: %s", dump(st))
	}
	if want := heldAt.Add(2 * time.Minute); st.Request.NextAttempt.Before(want.Add(-holdClockSlack)) {
		t.Errorf("next attempt %s, want about %s (the Retry-After)", st.Request.NextAttempt, want)
	}
	if st.Order == nil || st.Order.State != issuer.OrderPending {
		t.Errorf("the order should stay pending (resumable): %s", dump(st.Order))
	}
	// the next attempt resumes the order (the CA validated meanwhile)
	o.mustHandshake(name)
	if n := e.ca.NewOrders(name); n != 1 {
		t.Errorf("the CA saw %d new-orders for %s, want 1 (resumed)", n, name)
	}
}

// orderIDs are the identifiers of a new-order request; its body is
// restored for Pebble.
func orderIDs(r *http.Request) []string {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return nil
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	return rig.OrderIdentifiers(body)
}
