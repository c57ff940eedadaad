package issuer

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mholt/acmez/v3/acme"
)

// TestWorkflowBranches drives the engine against a fake CA through the
// branches Pebble cannot produce on demand, each a row: what the CA and the
// storage hold before, one request, and what must come of it — the error
// and whom it is charged to, what is stored, what the CA saw.
func TestWorkflowBranches(t *testing.T) {
	const name = "branch.example"
	problem := func(status int, typ, detail, retryAfter string) fakeFault {
		return fakeFault{status: status, problem: typ, detail: detail, retryAfter: retryAfter}
	}
	tests := []struct {
		desc     string
		tune     func(o *Options)
		setup    func(t *testing.T, r *branchRig)
		onDemand bool
		// wantErr is a part of the error ("" when the request is issued);
		// wantParty whom it is charged to.
		wantErr   string
		wantParty Party
		check     func(t *testing.T, r *branchRig)
	}{
		{
			desc: "an order finalized by an earlier attempt is replaced, not resumed",
			setup: func(t *testing.T, r *branchRig) {
				storeResumable(t, r, name, OrderProcessing, "https://fake.ca/order/none")
			},
			check: func(t *testing.T, r *branchRig) {
				orders := r.orders(name)
				if len(orders) != 2 || orders[0].State != OrderErrored || !strings.Contains(orders[0].Reason, "finalized with the key of an earlier attempt") {
					t.Errorf("orders: %+v", orders)
				}
				if n := r.ca.newOrdersFor(name); n != 1 {
					t.Errorf("%d new-orders, want 1 (the replacement)", n)
				}
			},
		},
		{
			desc: "an order that expired at the CA while stored is replaced by a new one",
			setup: func(t *testing.T, r *branchRig) {
				u := createAtFake(t, r, name)
				storeResumable(t, r, name, OrderPending, u)
				r.ca.setOrderStatus(u, acme.StatusInvalid)
			},
			check: func(t *testing.T, r *branchRig) {
				orders := r.orders(name)
				if len(orders) != 2 || orders[0].State != OrderErrored || !strings.Contains(orders[0].Reason, "invalid at the CA") {
					t.Errorf("orders: %+v", orders)
				}
			},
		},
		{
			desc: "an authorization that already had its share of challenges fails the order, charged to the name",
			setup: func(t *testing.T, r *branchRig) {
				u := createAtFake(t, r, name)
				o := storeResumable(t, r, name, OrderPending, u)
				for i := 1; i <= maxChallengesPerAuthz; i++ {
					ch := Challenge{Version: SchemaVersion, ID: challengeID(o.ID, 0, i), Order: o.ID, Name: name,
						Type: acme.ChallengeTypeHTTP01, State: ChallengeErrored, AuthorizationURL: o.Authorizations[0], Created: time.Now()}
					if err := r.store().save(context.Background(), KindChallenge, ch.ID, &ch); err != nil {
						t.Fatal(err)
					}
				}
			},
			wantErr: "already had 5 challenges", wantParty: PartyName,
			check: func(t *testing.T, r *branchRig) {
				if rec := r.nameRecord(name); rec.Failures != 1 || rec.CurrentOrder != "" {
					t.Errorf("name record: %+v", rec)
				}
				waitUntil(t, "the pending authorization to be deactivated", func() bool { return r.ca.count(fakeDeactivate) == 1 })
			},
		},
		{
			desc: "the CA refused HTTP-01: the next attempt uses TLS-ALPN-01",
			setup: func(t *testing.T, r *branchRig) {
				r.ca.refuse[acme.ChallengeTypeHTTP01] = true
				if _, err := r.issue(name, false); err == nil {
					t.Fatal("issued although the CA refused HTTP-01")
				}
				if rec := r.nameRecord(name); rec.Failures != 1 || rec.TypeOffset != 1 {
					t.Fatalf("after the refusal: %+v", rec)
				}
			},
			check: func(t *testing.T, r *branchRig) {
				chs := r.challenges(name)
				if len(chs) != 2 || chs[0].Type != acme.ChallengeTypeHTTP01 || chs[0].State != ChallengeInvalid ||
					chs[1].Type != acme.ChallengeTypeTLSALPN01 || chs[1].State != ChallengeValid {
					t.Errorf("challenges: %+v", chs)
				}
			},
		},
		{
			desc: "repeated 429s with short Retry-After: waited out, then held, not a failure of the name",
			setup: func(t *testing.T, r *branchRig) {
				f := problem(429, "rateLimited", "certflow test: slow down", "1")
				r.ca.fail(fakeNewOrder, f, f, f)
			},
			onDemand: true, wantErr: "rate limited by the CA", wantParty: PartyHold,
			check: func(t *testing.T, r *branchRig) {
				if n := r.ca.newOrdersFor(name); n != maxRateLimitedOrderAttempts {
					t.Errorf("%d new-orders, want %d", n, maxRateLimitedOrderAttempts)
				}
				if rec := r.nameRecord(name); rec.Failures != 0 {
					t.Errorf("a rate limit counted as a failure: %+v", rec)
				}
			},
		},
		{
			desc: "a 429 longer than a handshake can wait fails at once, and the next request too, without the CA",
			setup: func(t *testing.T, r *branchRig) {
				r.ca.fail(fakeNewOrder, problem(429, "rateLimited", fmt.Sprintf(`too many certificates (5) already issued for %q`, "branch.example"), "3600"))
				if _, err := r.issue(name, true); err == nil {
					t.Fatal("issued during the hold")
				}
			},
			onDemand: true, wantErr: "registered domain branch.example", wantParty: PartyHold,
			check: func(t *testing.T, r *branchRig) {
				if n := r.ca.newOrdersFor(name); n != 1 {
					t.Errorf("%d new-orders, want the one refused", n)
				}
			},
		},
		{
			desc: "an account the CA no longer knows is registered again by the next request",
			setup: func(t *testing.T, r *branchRig) {
				if _, err := r.issue("first.example", true); err != nil {
					t.Fatal(err)
				}
				r.ca.unknownAccount = true
				r.ca.fail(fakeNewOrder, problem(400, "accountDoesNotExist", "no such account", ""))
				_, err := r.issue(name, true)
				if party, _ := chargedTo(err); party != PartyAccount {
					t.Fatalf("charged to %q, want the account: %v", party, err)
				}
			},
			onDemand: true,
			check: func(t *testing.T, r *branchRig) {
				if n := r.ca.count(fakeNewAccount); n != 2 {
					t.Errorf("%d registrations, want 2 (the first, and again)", n)
				}
				if rec := r.nameRecord(name); rec.Failures != 0 {
					t.Errorf("the account's problem counted as a failure of the name: %+v", rec)
				}
			},
		},
		{
			desc: "a deactivated account holds the engine: the next request fails at once",
			setup: func(t *testing.T, r *branchRig) {
				r.ca.fail(fakeNewOrder, problem(403, "unauthorized", `Account is not valid, has status "deactivated"`, ""))
				if _, err := r.issue("first.example", true); err == nil {
					t.Fatal("issued with a deactivated account")
				}
			},
			onDemand: true, wantErr: "the account branch@example.com", wantParty: PartyHold,
			check: func(t *testing.T, r *branchRig) {
				if n := r.ca.newOrdersFor(name); n != 0 {
					t.Errorf("%d new-orders while the account was held", n)
				}
			},
		},
		{
			desc: "a CA outage: a handshake fails at once on the open circuit, charged to the CA",
			setup: func(t *testing.T, r *branchRig) {
				for range BreakerThreshold {
					r.ca.fail(fakeNewOrder, fakeFault{status: 503, problem: "serverInternal", detail: "down"})
				}
				if _, err := r.issue("first.example", false); err == nil {
					t.Fatal("issued during the outage")
				}
			},
			onDemand: true, wantErr: "circuit", wantParty: PartyCA,
			check: func(t *testing.T, r *branchRig) {
				if rec := r.nameRecord(name); rec.Failures != 0 {
					t.Errorf("an outage counted as a failure of the name: %+v", rec)
				}
			},
		},
		{
			desc: "a CA outage: a managed request waits for the circuit and is issued once the CA answers",
			setup: func(t *testing.T, r *branchRig) {
				for range BreakerThreshold + 1 {
					r.ca.fail(fakeNewOrder, fakeFault{status: 503, problem: "serverInternal", detail: "down"})
				}
				if _, err := r.issue("first.example", false); err == nil {
					t.Fatal("issued during the outage")
				}
				if _, err := r.issue("second.example", true); err == nil {
					t.Fatal("issued during the outage")
				}
				if st := r.engine.Breaker(); st.State != breakerOpen {
					t.Fatalf("circuit: %+v", st)
				}
			},
			check: func(t *testing.T, r *branchRig) {
				if st := r.engine.Breaker(); st.State != breakerClosed {
					t.Errorf("circuit after the CA answered: %+v", st)
				}
			},
		},
		{
			desc: "a background renewal of a certificate a handshake asked for respects the name's backoff",
			setup: func(t *testing.T, r *branchRig) {
				rec := NameRecord{Version: SchemaVersion, Name: name, OnDemand: true, Failures: 2,
					LastError: "the CA refused", NextAttempt: time.Now().Add(time.Hour)}
				if err := r.store().save(context.Background(), kindNames, name, &rec); err != nil {
					t.Fatal(err)
				}
			},
			onDemand: false, wantErr: "backing off after 2 failed attempt(s)", wantParty: PartyName,
			check: func(t *testing.T, r *branchRig) {
				if n := r.ca.newOrdersFor(name); n != 0 {
					t.Errorf("%d new-orders during the backoff", n)
				}
			},
		},
		{
			desc: "storage failing: nobody's failure count grows",
			setup: func(t *testing.T, r *branchRig) {
				// the order's first write (with the name's record) fails;
				// the record of the failure goes through
				failed := false
				r.storage.failStore = func(key string) error {
					if strings.Contains(key, "/"+kindNames+"/") && !failed {
						failed = true
						return errors.New("disk full")
					}
					return nil
				}
			},
			onDemand: true, wantErr: "disk full", wantParty: PartyStorage,
			check: func(t *testing.T, r *branchRig) {
				if rec := r.nameRecord(name); rec.Failures != 0 || rec.NextAttempt.After(time.Now()) {
					t.Errorf("a storage failure counted as a failure of the name: %+v", rec)
				}
			},
		},
		{
			desc: "the account lookup honours a handshake's budget",
			tune: func(o *Options) { o.OnDemandBudget = 300 * time.Millisecond },
			setup: func(t *testing.T, r *branchRig) {
				r.ca.block[fakeNewAccount] = make(chan struct{})
				start := time.Now()
				_, err := r.issue("first.example", true)
				if err == nil || !strings.Contains(err.Error(), "still being looked up") || time.Since(start) > 5*time.Second {
					t.Fatalf("a handshake behind a stuck registration: %v after %s", err, time.Since(start))
				}
				close(r.ca.block[fakeNewAccount])
			},
			onDemand: true,
		},
		{
			desc:     "HTTP-01's self-check keeps failing: TLS-ALPN-01 is presented, checked and accepted instead",
			setup:    func(t *testing.T, r *branchRig) { r.solvers[acme.ChallengeTypeHTTP01].set(true) },
			onDemand: true,
			check: func(t *testing.T, r *branchRig) {
				chs := r.challenges(name)
				if len(chs) != 1 || chs[0].Type != acme.ChallengeTypeTLSALPN01 || chs[0].SelfCheckFailures[acme.ChallengeTypeHTTP01] == "" {
					t.Errorf("challenges: %+v", chs)
				}
				if n := r.ca.count(fakeChall); n != 1 {
					t.Errorf("the CA was asked to validate %d challenges, want 1", n)
				}
				if h := r.solvers[acme.ChallengeTypeHTTP01]; h.presented != 1 || h.cleaned != 1 || h.checks != SelfCheckTurn {
					t.Errorf("HTTP-01: presented %d, cleaned up %d, checked %d", h.presented, h.cleaned, h.checks)
				}
			},
		},
		{
			desc: "every type fails its self-check: the challenge fails with every reason, charged to the name, and the CA is never asked",
			tune: func(o *Options) { o.SelfCheckTimeout = 200 * time.Millisecond },
			setup: func(t *testing.T, r *branchRig) {
				r.solvers[acme.ChallengeTypeHTTP01].set(true)
				r.solvers[acme.ChallengeTypeTLSALPN01].set(true)
			},
			onDemand: true, wantErr: "http-01: fake: the answer is not reachable; tls-alpn-01: fake", wantParty: PartyName,
			check: func(t *testing.T, r *branchRig) {
				if n := r.ca.count(fakeChall); n != 0 {
					t.Errorf("the CA was asked to validate %d challenges", n)
				}
				if rec := r.nameRecord(name); rec.Failures != 1 {
					t.Errorf("name record: %+v", rec)
				}
			},
		},
		{
			desc: "self_check advisory: every type fails its self-check, the CA is asked anyway with the first",
			tune: func(o *Options) { o.SelfCheckAdvisory = true },
			setup: func(t *testing.T, r *branchRig) {
				r.solvers[acme.ChallengeTypeHTTP01].set(true)
				r.solvers[acme.ChallengeTypeTLSALPN01].set(true)
			},
			onDemand: true,
			check: func(t *testing.T, r *branchRig) {
				chs := r.challenges(name)
				if len(chs) != 1 || chs[0].Type != acme.ChallengeTypeHTTP01 || len(chs[0].SelfCheckFailures) != 2 {
					t.Errorf("challenges: %+v", chs)
				}
			},
		},
		{
			desc: "a renewal of a certificate from the same CA and account carries replaces, and records what it renews and why",
			tune: func(o *Options) { o.RenewalWindowRatio = 0.999 },
			setup: func(t *testing.T, r *branchRig) {
				leaf := r.issueAndStore(name, nil)
				t.Cleanup(func() {
					reqs := r.ca.newOrderRequests(name)
					if len(reqs) != 1 || reqs[0].Replaces != ariID(t, leaf) {
						t.Errorf("new-order requests %+v, want one with replaces %s", reqs, ariID(t, leaf))
					}
					crs := r.requests(name)
					last := crs[len(crs)-1]
					if last.Kind != RequestRenewal || last.Renews == nil || last.Renews.Serial != fmt.Sprintf("%x", leaf.SerialNumber) ||
						last.Renews.Reason != RenewalLifetime || !last.Renews.Replaces || last.Renews.ARIID != ariID(t, leaf) {
						t.Errorf("the renewal's request: kind %q, renews %+v", last.Kind, last.Renews)
					}
					if crs[0].Kind != RequestIssuance || crs[0].Renews != nil {
						t.Errorf("the first request: kind %q, renews %+v", crs[0].Kind, crs[0].Renews)
					}
					orders := r.orders(name)
					if o := orders[len(orders)-1]; o.Replaces != ariID(t, leaf) || o.ReplacesRefused != "" {
						t.Errorf("the renewal's order: replaces %q, refused %q", o.Replaces, o.ReplacesRefused)
					}
					if rec := r.nameRecord(name); rec.LastRenewal != last.ID {
						t.Errorf("the name's record points at renewal %q, want %q", rec.LastRenewal, last.ID)
					}
				})
			},
		},
		{
			desc: "alreadyReplaced: the order is made again at once without replaces, charged to nobody",
			setup: func(t *testing.T, r *branchRig) {
				r.issueAndStore(name, nil)
				r.ca.fail(fakeNewOrder, problem(409, "alreadyReplaced", "certificate with serial 65 already has a replacement order", ""))
			},
			check: func(t *testing.T, r *branchRig) {
				checkReplacesRetried(t, r, name, "already has a replacement order")
			},
		},
		{
			desc: "unauthorized for another account's certificate: made again without replaces, the account not held",
			setup: func(t *testing.T, r *branchRig) {
				r.issueAndStore(name, nil)
				r.ca.fail(fakeNewOrder, problem(403, "unauthorized", "requester account did not request the certificate being replaced by this order", ""))
			},
			onDemand: true,
			check: func(t *testing.T, r *branchRig) {
				checkReplacesRetried(t, r, name, "did not request the certificate")
				if _, err := r.issue("after.example", true); err != nil {
					t.Errorf("the next request failed: the refusal of replaces held something: %v", err)
				}
			},
		},
		{
			desc: "a server error for a serial the CA does not know: one retry without replaces, not the CA's in-call retries",
			setup: func(t *testing.T, r *branchRig) {
				r.issueAndStore(name, nil)
				r.ca.fail(fakeNewOrder, problem(500, "serverInternal", "could not find an order for the given certificate", ""))
			},
			check: func(t *testing.T, r *branchRig) {
				checkReplacesRetried(t, r, name, "could not find an order")
			},
		},
		{
			desc: "a 429 with replaces is held like any other, and the order keeps replaces",
			setup: func(t *testing.T, r *branchRig) {
				r.issueAndStore(name, nil)
				r.ca.fail(fakeNewOrder, problem(429, "rateLimited", "certflow test: slow down", "1"))
			},
			check: func(t *testing.T, r *branchRig) {
				reqs := r.ca.newOrderRequests(name)
				if len(reqs) != 2 || reqs[0].Replaces == "" || reqs[1].Replaces != reqs[0].Replaces {
					t.Errorf("new-order requests %+v, want two, both with replaces", reqs)
				}
				if rec := r.nameRecord(name); rec.Failures != 0 {
					t.Errorf("the rate limit counted as a failure: %+v", rec)
				}
			},
		},
		{
			desc: "a certificate obtained with another account: no replaces, and the request says why",
			setup: func(t *testing.T, r *branchRig) {
				r.issueAndStore(name, func(m *acme.Certificate) { m.Account = "https://fake.ca/acct/other" })
			},
			check: func(t *testing.T, r *branchRig) {
				reqs := r.ca.newOrderRequests(name)
				if len(reqs) != 1 || reqs[0].Replaces != "" {
					t.Errorf("new-order requests %+v, want one without replaces", reqs)
				}
				crs := r.requests(name)
				if rn := crs[len(crs)-1].Renews; rn == nil || rn.Replaces || !strings.Contains(rn.NoReplaces, "another ACME account") {
					t.Errorf("renews: %+v", rn)
				}
			},
		},
		{
			desc: "a certificate from another CA: no replaces",
			setup: func(t *testing.T, r *branchRig) {
				r.issueAndStore(name, func(m *acme.Certificate) { m.CA = "https://other.ca/directory" })
			},
			check: func(t *testing.T, r *branchRig) {
				if reqs := r.ca.newOrderRequests(name); len(reqs) != 1 || reqs[0].Replaces != "" {
					t.Errorf("new-order requests %+v, want one without replaces", reqs)
				}
			},
		},
		{
			desc: "a renewal interrupted by a crash resumes its order (replaces and all) instead of making another",
			setup: func(t *testing.T, r *branchRig) {
				leaf := r.issueAndStore(name, nil)
				u := createAtFake(t, r, name)
				o := storeResumable(t, r, name, OrderPending, u)
				o.Replaces = ariID(t, leaf)
				if err := r.store().save(context.Background(), KindOrder, o.ID, &o); err != nil {
					t.Fatal(err)
				}
			},
			check: func(t *testing.T, r *branchRig) {
				if n := r.ca.newOrdersFor(name); n != 0 {
					t.Errorf("%d new-orders, want the stored order resumed", n)
				}
				crs := r.requests(name)
				last := crs[len(crs)-1]
				if last.Kind != RequestRenewal || r.nameRecord(name).LastRenewal != last.ID {
					t.Errorf("the resumed renewal: kind %q, the record's last renewal %q (want %q)", last.Kind, r.nameRecord(name).LastRenewal, last.ID)
				}
				orders := r.orders(name)
				if o := orders[len(orders)-1]; o.State != OrderValid || o.Replaces == "" {
					t.Errorf("the resumed order: %+v", o)
				}
			},
		},
		{
			desc: "a renewal waits out its name's hold like any request",
			setup: func(t *testing.T, r *branchRig) {
				r.issueAndStore(name, nil)
				r.ca.fail(fakeNewOrder, problem(429, "rateLimited", fmt.Sprintf(`too many certificates (5) already issued for this exact set of identifiers in the last 168h0m0s: %s`, name), "3600"))
			},
			onDemand: true, wantErr: "held back", wantParty: PartyHold,
			check: func(t *testing.T, r *branchRig) {
				if _, err := r.issue(name, true); err == nil || !strings.Contains(err.Error(), "held") {
					t.Errorf("the next renewal during the hold: %v, want it held without a request", err)
				}
				if n := len(r.ca.newOrderRequests(name)); n != 1 {
					t.Errorf("%d new-orders, want the one refused", n)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			r := newBranchRig(t, tt.tune)
			if tt.setup != nil {
				tt.setup(t, r)
			}
			_, err := r.issue(name, tt.onDemand)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("not issued: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			case tt.wantErr != "":
				if party, _ := chargedTo(err); party != tt.wantParty {
					t.Errorf("charged to %q, want %q: %v", party, tt.wantParty, err)
				}
			}
			if tt.check != nil {
				tt.check(t, r)
			}
		})
	}
}

// TestShutdownIsNobodysFault: a request cut off by a cancellation (Caddy
// stopping or reloading) while its self-check was failing is charged to
// nobody; cut off by its own deadline, to the name whose self-check failed.
func TestShutdownIsNobodysFault(t *testing.T) {
	for _, tt := range []struct {
		desc   string
		cut    func(ctx context.Context) (context.Context, context.CancelFunc)
		want   Party
		failed int
	}{
		{"cancelled", func(ctx context.Context) (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(ctx)
			time.AfterFunc(200*time.Millisecond, cancel)
			return ctx, cancel
		}, PartyNobody, 0},
		{"deadline", func(ctx context.Context) (context.Context, context.CancelFunc) {
			return context.WithTimeout(ctx, 200*time.Millisecond)
		}, PartyName, 1},
	} {
		t.Run(tt.desc, func(t *testing.T) {
			r := newBranchRig(t, func(o *Options) { o.SelfCheckTimeout = time.Minute })
			r.solvers[acme.ChallengeTypeHTTP01].set(true)
			r.solvers[acme.ChallengeTypeTLSALPN01].set(true)
			ctx, cancel := tt.cut(context.Background())
			defer cancel()
			_, err := r.engine.Issue(ctx, Request{CSR: newTestCSR(t, "cut.example"), Options: r.opts})
			if party, _ := chargedTo(err); err == nil || party != tt.want {
				t.Fatalf("charged to %q, want %q: %v", party, tt.want, err)
			}
			if rec := r.nameRecord("cut.example"); rec.Failures != tt.failed {
				t.Errorf("failures %d, want %d", rec.Failures, tt.failed)
			}
		})
	}
}

// storeResumable stores an order for name in state at url, and the name's
// record pointing at it, as an earlier process would have left them.
func storeResumable(t *testing.T, r *branchRig, name, state, url string) Order {
	t.Helper()
	ctx := context.Background()
	now := time.Now()
	o := Order{Version: SchemaVersion, ID: newID(now), Name: name, Identifiers: []string{name}, URL: url, State: state, Created: now}
	r.ca.mu.Lock()
	if fo, ok := r.ca.orders[url]; ok {
		o.Authorizations, o.Finalize = fo.Authorizations, fo.Finalize
	}
	r.ca.mu.Unlock()
	rec := NameRecord{Version: SchemaVersion, Name: name, CurrentOrder: o.ID}
	for _, err := range []error{
		r.store().save(ctx, KindOrder, o.ID, &o),
		r.store().save(ctx, kindNames, name, &rec),
		writeSentinel(ctx, r.store()),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	return o
}

// createAtFake makes an order for name at the fake CA directly (as an
// earlier process did) and returns its URL.
func createAtFake(t *testing.T, r *branchRig, name string) string {
	t.Helper()
	o, err := r.ca.NewOrder(context.Background(), acme.Account{}, acme.Order{Identifiers: []acme.Identifier{{Type: "dns", Value: name}}})
	if err != nil {
		t.Fatal(err)
	}
	r.ca.mu.Lock()
	r.ca.requests[name] = nil // made by the earlier process, not counted
	r.ca.mu.Unlock()
	return o.Location
}

// waitUntil polls cond every few milliseconds for at most 10 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// ariID is leaf's ARI certificate identifier.
func ariID(t *testing.T, leaf *x509.Certificate) string {
	t.Helper()
	id, err := acme.ARIUniqueIdentifier(leaf)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// checkReplacesRetried checks that name's renewal met one refusal of
// replaces (whose detail contains detail) and was ordered again at once
// without it, charged to nobody.
func checkReplacesRetried(t *testing.T, r *branchRig, name, detail string) {
	t.Helper()
	reqs := r.ca.newOrderRequests(name)
	if len(reqs) != 2 || reqs[0].Replaces == "" || reqs[1].Replaces != "" {
		t.Errorf("new-order requests %+v, want two: with replaces, then without", reqs)
	}
	orders := r.orders(name)
	o := orders[len(orders)-1]
	if o.State != OrderValid || o.Replaces != "" || !strings.Contains(o.ReplacesRefused, detail) {
		t.Errorf("order: state %q, replaces %q, refused %q", o.State, o.Replaces, o.ReplacesRefused)
	}
	crs := r.requests(name)
	if rn := crs[len(crs)-1].Renews; rn == nil || rn.Replaces || !strings.Contains(rn.NoReplaces, detail) {
		t.Errorf("renews: %+v", rn)
	}
	if rec := r.nameRecord(name); rec.Failures != 0 || !rec.NextAttempt.IsZero() {
		t.Errorf("the refusal of replaces was charged to the name: %+v", rec)
	}
	if st := r.engine.Breaker(); st.Failures > 1 {
		t.Errorf("the circuit counted %d failures", st.Failures)
	}
}
