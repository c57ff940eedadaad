package issuer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"

	"github.com/certflow/certflow/solvers"
)

// recordingSolver remembers what it was asked to clean up.
type recordingSolver struct{ cleaned []string }

func (r *recordingSolver) Present(context.Context, acme.Challenge) (json.RawMessage, error) {
	return nil, nil
}
func (r *recordingSolver) SelfCheck(context.Context, acme.Challenge) error { return nil }
func (r *recordingSolver) CleanUp(_ context.Context, chal acme.Challenge, _ json.RawMessage) error {
	r.cleaned = append(r.cleaned, chal.Identifier.Value+"/"+chal.Token)
	return nil
}

func testStore(t *testing.T) store {
	s := store{storage: &certmagic.FileStorage{Path: t.TempDir()}, issuerKey: "certflow-test"}
	// index markers are written in the background: let them land before
	// the directory is removed
	t.Cleanup(func() { FlushIndex(time.Minute) })
	return s
}

// TestAbandonedAt: when a challenge that is not final is taken as
// abandoned, by its own deadline and its own owner's heartbeat.
func TestAbandonedAt(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	ago := func(d time.Duration) time.Time { return now.Add(-d) }
	const legacy = 5 * time.Minute
	tests := []struct {
		name      string
		ch        Challenge
		owner     ownerView
		abandoned bool
		at        time.Time // when it becomes abandoned; zero: nothing foreseeable
		why       string
	}{
		{"final", Challenge{State: ChallengeValid, Owner: "b", Updated: ago(time.Hour), Deadline: ago(time.Hour)},
			ownerView{known: true}, false, time.Time{}, ""},
		{"run by this process, past its deadline", Challenge{State: ChallengePresented, Owner: "a", Updated: ago(time.Hour), Deadline: ago(time.Hour)},
			ownerView{here: true, running: true}, false, time.Time{}, ""},
		{"written by this process, no longer run", Challenge{State: ChallengePresented, Owner: "a", Updated: ago(time.Second), Deadline: now.Add(time.Minute)},
			ownerView{here: true}, true, ago(time.Second), "the run that had it ended"},
		{"queued for hours, owner's heartbeat fresh", Challenge{State: ChallengeQueued, Owner: "b", Updated: ago(5 * time.Hour)},
			ownerView{known: true, beat: ago(10 * time.Second)}, false, now.Add(heartbeatLapse - 10*time.Second), ""},
		{"queued, owner's heartbeat lapsed", Challenge{State: ChallengeQueued, Owner: "b", Updated: ago(5 * time.Hour)},
			ownerView{known: true, beat: ago(heartbeatLapse + time.Second)}, true, ago(time.Second), "its process (owner b) stopped"},
		{"queued, owner has no heartbeat, recent", Challenge{State: ChallengeQueued, Owner: "b", Updated: ago(time.Minute)},
			ownerView{known: true}, false, now.Add(heartbeatLapse - time.Minute), ""},
		{"queued, owner has no heartbeat, old", Challenge{State: ChallengeQueued, Owner: "b", Updated: ago(time.Hour)},
			ownerView{known: true}, true, ago(time.Hour - heartbeatLapse), "left no heartbeat"},
		{"queued, heartbeats unreadable", Challenge{State: ChallengeQueued, Owner: "b", Updated: ago(5 * time.Hour)},
			ownerView{}, false, time.Time{}, ""},
		{"presented, within deadline and margin, heartbeat fresh", Challenge{State: ChallengePresented, Owner: "b", Updated: ago(time.Minute), Deadline: ago(deadlineMargin / 2)},
			ownerView{known: true, beat: ago(time.Second)}, false, now.Add(deadlineMargin / 2), ""},
		{"presented, past deadline and margin, heartbeat fresh", Challenge{State: ChallengePresented, Owner: "b", Updated: ago(time.Minute), Deadline: ago(deadlineMargin + time.Second)},
			ownerView{known: true, beat: ago(time.Second)}, true, ago(time.Second), "by its deadline"},
		{"presented, deadline far, heartbeat lapsed", Challenge{State: ChallengePresented, Owner: "b", Updated: ago(5 * time.Minute), Deadline: now.Add(time.Hour)},
			ownerView{known: true, beat: ago(3 * time.Minute)}, true, ago(3*time.Minute - heartbeatLapse), "stopped"},
		{"presented, heartbeats unreadable: the deadline alone", Challenge{State: ChallengePresented, Owner: "b", Updated: ago(time.Hour), Deadline: now.Add(time.Minute)},
			ownerView{}, false, now.Add(time.Minute + deadlineMargin), ""},
		// a shorter challenge_timeout of another policy plays no part:
		// only the challenge's own deadline does
		{"a long challenge_timeout of its own", Challenge{State: ChallengeSelfChecked, Owner: "b", Updated: ago(50 * time.Minute), Deadline: now.Add(10 * time.Minute)},
			ownerView{known: true, beat: ago(time.Second)}, false, now.Add(heartbeatLapse - time.Second), ""},
		{"no owner (an older version), recent", Challenge{State: ChallengePresented, Updated: ago(legacy)},
			ownerView{}, false, now.Add(deadlineMargin), ""},
		{"no owner (an older version), old", Challenge{State: ChallengePresented, Updated: ago(time.Hour)},
			ownerView{}, true, ago(time.Hour - legacy - deadlineMargin), "records no owner"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			at, why := abandonedAt(&tt.ch, tt.owner, legacy)
			if !at.Equal(tt.at) {
				t.Errorf("abandoned at %s, want %s", at, tt.at)
			}
			abandoned, why2 := isAbandoned(&tt.ch, tt.owner, legacy, now)
			if abandoned != tt.abandoned {
				t.Fatalf("abandoned = %v (%s), want %v", abandoned, why, tt.abandoned)
			}
			if abandoned && (why2 != why || !strings.Contains(why, tt.why) || !strings.HasPrefix(why, "abandoned: ")) {
				t.Errorf("reason %q, want it to contain %q", why2, tt.why)
			}
		})
	}
}

// leftoverRig is one engine's maintenance of a store, with two policies
// sharing it: "http" with an HTTP-01 solver and "dns" with a DNS-01 one.
type leftoverRig struct {
	t        *testing.T
	s        store
	e        *Engine
	m        *maintenance
	http     *recordingSolver
	dns      *recordingSolver
	otherDNS *recordingSolver
	now      time.Time
}

func newLeftoverRig(t *testing.T) *leftoverRig {
	r := &leftoverRig{t: t, s: testStore(t), http: &recordingSolver{}, dns: &recordingSolver{}, otherDNS: &recordingSolver{},
		now: time.Now()}
	r.e = &Engine{owner: "me", logger: zap.NewNop(), breaker: newBreaker(), maint: map[string]*maintenance{}}
	r.m = &maintenance{wake: make(chan struct{}, 1), policies: map[string]*Options{}, watch: map[string]int{}}
	if err := writeSentinel(context.Background(), r.s); err != nil {
		t.Fatal(err)
	}
	// the DNS policy's options arrive first, the HTTP policy's last
	r.setPolicy("dns", map[string]solvers.Solver{"dns-01": r.dns})
	r.setPolicy("http", map[string]solvers.Solver{"http-01": r.http})
	return r
}

func (r *leftoverRig) setPolicy(id string, sv map[string]solvers.Solver) {
	opts := &Options{Storage: r.s.storage, IssuerKey: r.s.issuerKey, PolicyID: id, Solvers: sv, ChallengeTimeout: time.Minute}
	opts.SetDefaults()
	r.m.setOptions(opts)
}

func (r *leftoverRig) put(ch Challenge) {
	r.t.Helper()
	ch.Version = SchemaVersion
	if ch.Created.IsZero() {
		ch.Created = ch.Updated
	}
	if err := r.s.saveResource(context.Background(), KindChallenge, ch.ID, ch.Name, ch.State, &ch); err != nil {
		r.t.Fatal(err)
	}
}

func (r *leftoverRig) beat(owner string, at time.Time) {
	r.t.Helper()
	if err := writeHeartbeat(context.Background(), r.s, ownerRecord{Owner: owner, Started: at, Updated: at}); err != nil {
		r.t.Fatal(err)
	}
}

func (r *leftoverRig) get(id string) Challenge {
	r.t.Helper()
	var ch Challenge
	if err := r.s.load(context.Background(), KindChallenge, id, &ch); err != nil {
		r.t.Fatal(err)
	}
	return ch
}

func (r *leftoverRig) pass(full bool) (time.Time, bool) {
	FlushIndex(time.Minute) // the in-flight markers
	return r.m.leftoverPass(context.Background(), r.e, r.s, full, r.now)
}

// TestLeftoverPass: one pass over the leftovers of several processes and
// policies: each abandoned challenge is ended and its answer removed with
// the solver of the policy that presented it, whichever policy's options
// arrived last; challenges live elsewhere or here are left alone however
// old; a gone process's heartbeat record is removed once everything was
// listed.
func TestLeftoverPass(t *testing.T) {
	r := newLeftoverRig(t)
	now := r.now
	ago := func(d time.Duration) time.Time { return now.Add(-d) }
	r.beat("live", ago(10*time.Second))
	r.beat("gone", ago(heartbeatLapse+time.Minute))
	plan := json.RawMessage(`{"planned":true}`)
	presented := ChallengeTimes{Scheduled: ago(time.Hour), Presented: ago(time.Hour)}
	chals := []Challenge{
		{ID: "dns-gone", Name: "a.test", Type: "dns-01", Token: "t1", Policy: "dns", Owner: "gone", State: ChallengePresented,
			Presented: plan, Times: presented, Deadline: now.Add(time.Hour), Updated: ago(time.Hour)},
		{ID: "dns-deadline", Name: "b.test", Type: "dns-01", Token: "t2", Policy: "dns", Owner: "live", State: ChallengeSelfChecked,
			Presented: plan, Times: presented, Deadline: ago(deadlineMargin + time.Second), Updated: ago(time.Hour)},
		{ID: "dns-unknown-policy", Name: "c.test", Type: "dns-01", Token: "t3", Policy: "unloaded", Owner: "gone", State: ChallengePresented,
			Presented: plan, Times: presented, Updated: ago(time.Hour)},
		{ID: "http-gone", Name: "d.test", Type: "http-01", Token: "t4", Policy: "http", Owner: "gone", State: ChallengePresented,
			Times: presented, Updated: ago(time.Hour)},
		{ID: "queued-live", Name: "e.test", Type: "dns-01", Token: "t5", Policy: "dns", Owner: "live", State: ChallengeQueued,
			Updated: ago(5 * time.Hour)},
		{ID: "queued-gone", Name: "f.test", Type: "dns-01", Token: "t6", Policy: "dns", Owner: "gone", State: ChallengeQueued,
			Updated: ago(5 * time.Hour)},
		{ID: "queued-here", Name: "g.test", Type: "http-01", Token: "t7", Policy: "http", Owner: "me", State: ChallengeQueued,
			Updated: ago(5 * time.Hour)},
		{ID: "presented-here-ended", Name: "h.test", Type: "http-01", Token: "t8", Policy: "http", Owner: "me", State: ChallengePresented,
			Times: presented, Deadline: now.Add(time.Minute), Updated: ago(time.Second)},
		{ID: "valid-uncleaned", Name: "i.test", Type: "dns-01", Token: "t9", Policy: "dns", Owner: "live", State: ChallengeValid,
			Presented: plan, Times: presented, Updated: ago(time.Minute)},
		{ID: "presented-live", Name: "j.test", Type: "dns-01", Token: "t10", Policy: "dns", Owner: "live", State: ChallengePresented,
			Presented: plan, Times: presented, Deadline: now.Add(time.Minute), Updated: ago(time.Minute)},
	}
	for _, ch := range chals {
		r.put(ch)
	}
	done := r.e.running(r.s, "queued-here")
	defer waitHeartbeatStopped(t, r.e)
	defer done()

	next, listedAll := r.pass(true)
	if !listedAll {
		t.Fatal("the full listing failed")
	}
	tests := []struct {
		id      string
		state   string
		cleaned bool
		why     string
	}{
		{"dns-gone", ChallengeErrored, true, "its process (owner gone) stopped"},
		{"dns-deadline", ChallengeErrored, true, "by its deadline"},
		{"dns-unknown-policy", ChallengeErrored, true, "stopped"},
		{"http-gone", ChallengeErrored, true, "stopped"},
		{"queued-live", ChallengeQueued, false, ""},
		{"queued-gone", ChallengeErrored, false, "stopped"},
		{"queued-here", ChallengeQueued, false, ""},
		{"presented-here-ended", ChallengeErrored, true, "the run that had it ended"},
		{"valid-uncleaned", ChallengeValid, true, ""},
		{"presented-live", ChallengePresented, false, ""},
	}
	for _, tt := range tests {
		ch := r.get(tt.id)
		if ch.State != tt.state || ch.CleanedUp != tt.cleaned || !strings.Contains(ch.Reason, tt.why) {
			t.Errorf("%s: state %s, cleaned up %v, reason %q; want %s, %v, %q", tt.id, ch.State, ch.CleanedUp, ch.Reason, tt.state, tt.cleaned, tt.why)
		}
	}
	// each with its own policy's solver; the unknown policy's with the
	// only policy that has a dns-01 solver
	slices.Sort(r.dns.cleaned)
	if want := []string{"a.test/t1", "b.test/t2", "c.test/t3", "i.test/t9"}; !slices.Equal(r.dns.cleaned, want) {
		t.Errorf("dns policy cleaned %v, want %v", r.dns.cleaned, want)
	}
	slices.Sort(r.http.cleaned)
	if want := []string{"d.test/t4", "h.test/t8"}; !slices.Equal(r.http.cleaned, want) {
		t.Errorf("http policy cleaned %v, want %v", r.http.cleaned, want)
	}
	// the next pass is due when the first watched challenge would be
	// abandoned: the live one presented, past its deadline
	if want := now.Add(time.Minute + deadlineMargin); !next.Equal(want) {
		t.Errorf("next pass due %s, want %s", next, want)
	}
	if r.s.storage.Exists(context.Background(), r.s.ownerKey("gone")) {
		t.Error("the gone process's heartbeat record was not removed")
	}
	if !r.s.storage.Exists(context.Background(), r.s.ownerKey("live")) {
		t.Error("the live process's heartbeat record was removed")
	}

	// the same pass again finds nothing more to do
	r.dns.cleaned, r.http.cleaned = nil, nil
	r.pass(true)
	if len(r.dns.cleaned)+len(r.http.cleaned) != 0 {
		t.Errorf("a second pass cleaned up again: %v %v", r.dns.cleaned, r.http.cleaned)
	}
}

// TestLeftoverPassPolicyOrder: the DNS policy's leftover is cleaned with
// its own solver whichever policy's options arrived last, and a policy
// reloaded with other settings (another ID) does not take its place.
func TestLeftoverPassPolicyOrder(t *testing.T) {
	for _, last := range []string{"dns", "http", "other-dns"} {
		t.Run(last+" last", func(t *testing.T) {
			r := newLeftoverRig(t)
			r.setPolicy("other-dns", map[string]solvers.Solver{"dns-01": r.otherDNS})
			switch last {
			case "dns":
				r.setPolicy("dns", map[string]solvers.Solver{"dns-01": r.dns})
			case "http":
				r.setPolicy("http", map[string]solvers.Solver{"http-01": r.http})
			}
			r.put(Challenge{ID: "c", Name: "a.test", Type: "dns-01", Token: "t", Policy: "dns", Owner: "gone", State: ChallengePresented,
				Presented: json.RawMessage(`{}`), Times: ChallengeTimes{Presented: r.now.Add(-time.Hour)}, Updated: r.now.Add(-time.Hour)})
			r.pass(true)
			if len(r.dns.cleaned) != 1 || len(r.otherDNS.cleaned) != 0 {
				t.Fatalf("cleaned by the dns policy %v, by the other %v", r.dns.cleaned, r.otherDNS.cleaned)
			}
		})
	}
}

// TestLeftoverPassFindsInFlight: between full listings a pass looks at the
// challenges in flight (index markers) and those it watches, not at every
// stored one; a failing clean-up is retried from the watch list.
func TestLeftoverPassFindsInFlight(t *testing.T) {
	r := newLeftoverRig(t)
	old := r.now.Add(-time.Hour)
	presented := ChallengeTimes{Presented: old}
	// indexed as in flight
	r.put(Challenge{ID: "indexed", Name: "a.test", Type: "http-01", Token: "t1", Policy: "http", Owner: "gone", State: ChallengePresented,
		Times: presented, Updated: old})
	// no marker: its process died before the marker was written
	unindexed := Challenge{Version: SchemaVersion, ID: "unindexed", Name: "b.test", Type: "http-01", Token: "t2", Policy: "http", Owner: "gone",
		State: ChallengePresented, Times: presented, Updated: old}
	if err := r.s.save(context.Background(), KindChallenge, unindexed.ID, &unindexed); err != nil {
		t.Fatal(err)
	}
	r.pass(false)
	if want := []string{"a.test/t1"}; !slices.Equal(r.http.cleaned, want) {
		t.Fatalf("cleaned %v, want %v (only the indexed one)", r.http.cleaned, want)
	}
	r.pass(true)
	if want := []string{"a.test/t1", "b.test/t2"}; !slices.Equal(r.http.cleaned, want) {
		t.Fatalf("cleaned %v, want %v", r.http.cleaned, want)
	}

	// a clean-up that fails is retried by the next passes, from the
	// watch list
	failing := &failingSolver{}
	r.setPolicy("http", map[string]solvers.Solver{"http-01": failing})
	r.put(Challenge{ID: "failing", Name: "c.test", Type: "http-01", Token: "t3", Policy: "http", Owner: "gone", State: ChallengePresented,
		Times: presented, Updated: old})
	r.pass(false)
	ch := r.get("failing")
	if ch.State != ChallengeErrored || ch.CleanedUp || !strings.Contains(ch.Reason, "could not be removed yet") {
		t.Fatalf("after a failed clean-up: %s, cleaned up %v, %q", ch.State, ch.CleanedUp, ch.Reason)
	}
	failing.fail = false
	r.pass(false) // no longer in flight: found in the watch list
	if ch := r.get("failing"); !ch.CleanedUp || failing.calls != 2 {
		t.Fatalf("after the retry: cleaned up %v after %d calls", ch.CleanedUp, failing.calls)
	}
}

// waitHeartbeatStopped waits (bounded) until the engine's heartbeat
// goroutines have stopped and removed their records.
func waitHeartbeatStopped(t *testing.T, e *Engine) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		e.presence.mu.Lock()
		beating := 0
		var all []*storePresence
		for _, sp := range e.presence.stores {
			all = append(all, sp)
			if sp.beating {
				beating++
			}
		}
		e.presence.mu.Unlock()
		if beating == 0 {
			// the record is deleted under writeMu, taken before the
			// flag was cleared
			for _, sp := range all {
				sp.writeMu.Lock()
				sp.writeMu.Unlock()
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d heartbeat goroutines still running", beating)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestHeartbeat: an engine's heartbeat record exists while it runs a
// challenge or its maintenance in the store, and is removed when it stops
// doing both.
func TestHeartbeat(t *testing.T) {
	s := testStore(t)
	e := &Engine{owner: "me", logger: zap.NewNop()}
	ctx := context.Background()
	key := s.ownerKey("me")
	waitRecord := func(want bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for s.storage.Exists(ctx, key) != want {
			if time.Now().After(deadline) {
				t.Fatalf("heartbeat record exists: %v, want %v", !want, want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	done := e.running(s, "c1")
	waitRecord(true)
	beats, err := readHeartbeats(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	if rec := beats["me"]; rec.Owner != "me" || time.Since(rec.Updated) > time.Minute || rec.Started.IsZero() {
		t.Fatalf("heartbeat record %+v", rec)
	}
	if !e.runs(s, "c1") || e.runs(s, "c2") {
		t.Fatal("runs does not tell the challenges this engine runs")
	}
	e.maintained(s, true)
	done()
	if e.runs(s, "c1") {
		t.Fatal("a finished challenge is still run")
	}
	time.Sleep(50 * time.Millisecond)
	waitRecord(true) // maintenance still runs here
	e.maintained(s, false)
	waitHeartbeatStopped(t, e)
	waitRecord(false)

	// a corrupt record reads as a heartbeat that lapsed long ago
	if err := s.storage.Store(ctx, s.ownerKey("odd"), []byte("{{")); err != nil {
		t.Fatal(err)
	}
	beats, err = readHeartbeats(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	if rec, ok := beats["odd"]; !ok || !rec.Updated.IsZero() {
		t.Fatalf("corrupt heartbeat read as %+v (%v)", rec, ok)
	}
}

type failingSolver struct {
	recordingSolver
	fail  bool
	calls int
}

func (f *failingSolver) CleanUp(ctx context.Context, chal acme.Challenge, memo json.RawMessage) error {
	f.calls++
	if f.calls == 1 || f.fail {
		return errors.New("the provider is down")
	}
	return f.recordingSolver.CleanUp(ctx, chal, memo)
}

// TestLeftoverOrphanedOrder: the order of an abandoned challenge is ended
// when no request will resume it, and left resumable when the name's
// record points at it.
func TestLeftoverOrphanedOrder(t *testing.T) {
	for _, current := range []bool{true, false} {
		t.Run(fmt.Sprintf("current %v", current), func(t *testing.T) {
			r := newLeftoverRig(t)
			ctx := context.Background()
			orderID := newID(r.now.Add(-time.Hour))
			o := Order{Version: SchemaVersion, ID: orderID, Name: "a.test", State: OrderPending, Created: r.now.Add(-time.Hour)}
			if err := r.s.save(ctx, KindOrder, orderID, &o); err != nil {
				t.Fatal(err)
			}
			rec := NameRecord{Version: SchemaVersion, Name: "a.test", CurrentOrder: "another"}
			if current {
				rec.CurrentOrder = orderID
			}
			if err := r.s.save(ctx, kindNames, "a.test", &rec); err != nil {
				t.Fatal(err)
			}
			r.put(Challenge{ID: orderID + "-a0-1", Order: orderID, Name: "a.test", Type: "http-01", Token: "t", Policy: "http",
				Owner: "gone", State: ChallengeQueued, Updated: r.now.Add(-time.Hour)})
			r.pass(true)
			var after Order
			if err := r.s.load(ctx, KindOrder, orderID, &after); err != nil {
				t.Fatal(err)
			}
			want := OrderErrored
			if current {
				want = OrderPending
			}
			if after.State != want {
				t.Fatalf("order %s (%s), want %s", after.State, after.Reason, want)
			}
		})
	}
}
func TestTrimHistory(t *testing.T) {
	s := testStore(t)
	ctx := context.Background()
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	opts := &Options{RetentionCount: 3, RetentionAge: 24 * time.Hour}
	opts.SetDefaults()
	var ids []string
	for i := range 6 {
		state := RequestReady
		if i == 1 {
			state = RequestPending // in flight: never trimmed
		}
		id := newID(now.Add(time.Duration(i-6) * time.Hour))
		ids = append(ids, id)
		if err := s.save(ctx, KindRequest, id, &CertificateRequest{Version: SchemaVersion, ID: id, State: state}); err != nil {
			t.Fatal(err)
		}
	}
	old := newID(now.Add(-48 * time.Hour))
	if err := s.save(ctx, KindRequest, old, &CertificateRequest{Version: SchemaVersion, ID: old, State: RequestFailed}); err != nil {
		t.Fatal(err)
	}
	trimHistory(ctx, s, opts, now)
	left, err := s.list(ctx, KindRequest)
	if err != nil {
		t.Fatal(err)
	}
	// the 48 h old one goes for age; of the six, the oldest finished ones
	// go until three are left, but the pending one stays
	want := []string{ids[1], ids[3], ids[4], ids[5]}
	if fmt.Sprint(left) != fmt.Sprint(want) {
		t.Fatalf("left %v, want %v", left, want)
	}
}

func TestStoreSetsAsideCorruptResources(t *testing.T) {
	s := testStore(t)
	ctx := context.Background()
	tests := map[string]string{
		"not json":      "{{{",
		"older version": `{"version": 0, "id": "bad"}`, // a newer one is left in place (readonly_test.go)
		"wrong shape":   `{"version": 1, "attempt": "many"}`,
	}
	for name, body := range tests {
		t.Run(name, func(t *testing.T) {
			key := s.key(KindRequest, "bad")
			if err := s.storage.Store(ctx, key, []byte(body)); err != nil {
				t.Fatal(err)
			}
			var cr CertificateRequest
			err := s.load(ctx, KindRequest, "bad", &cr)
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("err = %v, want ErrCorrupt", err)
			}
			if s.storage.Exists(ctx, key) {
				t.Fatal("corrupt resource left in place")
			}
			aside, _ := s.storage.List(ctx, s.prefix()+"/corrupt", false)
			if len(aside) == 0 {
				t.Fatal("corrupt resource was not set aside")
			}
		})
	}
}

// listsEntries is a FileStorage whose List also returns listing entries
// that have no value, as a backend that writes an entry and its value in
// two steps (the Redis module) leaves when it dies between them.
type listsEntries struct {
	*certmagic.FileStorage
	mu      sync.Mutex
	entries map[string]bool
}

func (l *listsEntries) List(ctx context.Context, dir string, recursive bool) ([]string, error) {
	keys, err := l.FileStorage.List(ctx, dir, recursive)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for k := range l.entries {
		if path.Dir(k) == dir {
			keys = append(keys, k)
		}
	}
	return keys, nil
}

func (l *listsEntries) Delete(ctx context.Context, key string) error {
	l.mu.Lock()
	delete(l.entries, key)
	l.mu.Unlock()
	return l.FileStorage.Delete(ctx, key)
}

func TestTrimHistoryDropsDanglingEntries(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name     string
		created  time.Time
		sentinel bool // the store answers
		dropped  bool
	}{
		{"old entry, store answering: removed", now.Add(-48 * time.Hour), true, true},
		{"recent entry: a write may be completing it", now.Add(-time.Minute), true, false},
		{"store not answering: absence is not proof", now.Add(-48 * time.Hour), false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			storage := &listsEntries{FileStorage: &certmagic.FileStorage{Path: t.TempDir()}, entries: map[string]bool{}}
			s := store{storage: storage, issuerKey: "certflow-test"}
			if tt.sentinel {
				if err := writeSentinel(ctx, s); err != nil {
					t.Fatal(err)
				}
			}
			id := newID(tt.created)
			key := s.key(KindOrder, id)
			storage.entries[key] = true
			// retention age 30 s: every entry here is beyond it, so each
			// is examined
			opts := &Options{RetentionCount: 1, RetentionAge: 30 * time.Second}
			opts.SetDefaults()
			trimHistory(ctx, s, opts, now)
			storage.mu.Lock()
			dropped := !storage.entries[key]
			storage.mu.Unlock()
			if dropped != tt.dropped {
				t.Fatalf("entry dropped: %v, want %v", dropped, tt.dropped)
			}
		})
	}
}
