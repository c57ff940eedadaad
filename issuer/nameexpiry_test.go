package issuer

import (
	"context"
	"encoding/json"
	"fmt"
	"path"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"
)

// newTestMaintenance is a store's maintenance as StartMaintenance makes
// it, with the options of the given policies, without its loop: a test
// runs its passes at the times it chooses.
func newTestMaintenance(policies ...*Options) *maintenance {
	m := &maintenance{wake: make(chan struct{}, 1), policies: map[string]*Options{}, watch: map[string]int{},
		tokens: map[string]time.Time{}}
	for _, o := range policies {
		m.setOptions(o)
	}
	return m
}

// trimAt runs maintenance's hourly trim at now, waits for the names'
// sweep it may start, and has the expiry notes it made written.
func trimAt(t *testing.T, m *maintenance, s store, opts *Options, now time.Time) {
	t.Helper()
	m.trim(context.Background(), s, opts, now)
	waitUntil(t, "the names' sweep to end", func() bool {
		m.mu.Lock()
		defer m.mu.Unlock()
		return !m.sweeping
	})
	FlushIndex(10 * time.Second)
}

// keysMentioning returns the keys under certflow's prefix whose key or
// value mentions name.
func keysMentioning(ms *memStorage, name string) []string {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	var out []string
	for k, v := range ms.m {
		if strings.HasPrefix(k, "certflow/") && (strings.Contains(k, name) || strings.Contains(string(v), name)) {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// TestFailedNameLeavesNothingBehind is issue 14's target end to end: a
// name asked for once, failed, and never again leaves no key under
// certflow's prefix that mentions it (its record, its request with its
// order and challenges, challenges and orders of their own, catalog
// entries, holds, expiry notes) once maintenance's hourly trim runs after
// the documented time: max(last write, next attempt) + max(retention age,
// longest failure backoff). Just before that time its record is still
// there, so no backoff it could have been given is forgotten early.
func TestFailedNameLeavesNothingBehind(t *testing.T) {
	const name = "once.example"
	tests := []struct {
		desc     string
		onDemand bool
		setup    func(r *branchRig)
		// check looks at what the failure left, before any trim
		check func(t *testing.T, r *branchRig)
	}{
		{
			desc:  "the CA refused the challenge: a backoff",
			setup: func(r *branchRig) { r.ca.refuse[acme.ChallengeTypeHTTP01] = true },
			check: func(t *testing.T, r *branchRig) {
				if rec := r.nameRecord(name); rec.Failures != 1 || rec.NextAttempt.IsZero() {
					t.Fatalf("name record after the failure: %+v", rec)
				}
			},
		},
		{
			desc: "every self-check failed: challenges of their own",
			setup: func(r *branchRig) {
				r.solvers[acme.ChallengeTypeHTTP01].set(true)
				r.solvers[acme.ChallengeTypeTLSALPN01].set(true)
			},
			check: func(t *testing.T, r *branchRig) {
				ids, err := r.store().list(context.Background(), KindChallenge)
				if err != nil || len(ids) == 0 {
					t.Fatalf("no challenge record of its own after failed self-checks (%v)", err)
				}
			},
		},
		{
			desc:     "an unrecognised 429: a hold on the name",
			onDemand: true,
			setup: func(r *branchRig) {
				r.ca.fail(fakeNewOrder, fakeFault{status: 429, problem: "rateLimited", detail: "certflow test: slow down", retryAfter: "3600"})
			},
			check: func(t *testing.T, r *branchRig) {
				ids, err := r.store().list(context.Background(), kindHolds)
				if err != nil || !slices.ContainsFunc(ids, func(id string) bool { return strings.Contains(id, name) }) {
					t.Fatalf("no hold of the name after a 429: %v (%v)", ids, err)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			// a longest backoff longer than the retention age, and a
			// next attempt an hour after the failure: both count
			r := newBranchRig(t, func(o *Options) {
				o.BackoffInitial = time.Hour
				o.BackoffMax = 10 * 24 * time.Hour
			})
			tt.setup(r)
			if _, err := r.issue(name, tt.onDemand); err == nil {
				t.Fatal("issued")
			}
			FlushIndex(10 * time.Second)
			tt.check(t, r)
			// what the failure left: the name's record, its request's
			// record, a catalog record and an expiry note at least
			before := keysMentioning(r.storage, name)
			for _, folder := range []string{kindNames, KindRequest, catalogDir, expiryDir} {
				if !slices.ContainsFunc(before, func(k string) bool { return strings.HasPrefix(k, path.Join(r.store().prefix(), folder)+"/") }) {
					t.Fatalf("nothing under %s/ mentions %s after the failure: %v", folder, name, before)
				}
			}
			rec := r.nameRecord(name)
			from := rec.Updated
			if rec.NextAttempt.After(from) {
				from = rec.NextAttempt
			}
			documented := from.Add(max(r.opts.BackoffMax, r.opts.RetentionAge, DefaultRetentionAge, DefaultBackoffMax))
			s := r.store()
			m := newTestMaintenance(r.opts)

			trimAt(t, m, s, r.opts, documented.Add(-time.Second))
			if !s.storage.Exists(context.Background(), s.key(kindNames, name)) {
				t.Fatalf("the name's record was deleted a second before %s", documented)
			}
			// the hourly pass after the documented time: its note's
			// hour is over
			trimAt(t, m, s, r.opts, documented.Truncate(time.Hour).Add(time.Hour))
			if left := keysMentioning(r.storage, name); len(left) > 0 {
				t.Fatalf("keys still mention %s after the documented time: %v", name, left)
			}
		})
	}
}

// TestIssuedNameKeptUntilItsTime: a name issued once (its record still
// holds the request and order it made, as in flight) whose request is
// trimmed early, for the retention count, keeps its record until the
// documented time all the same; after it, nothing mentions the name.
func TestIssuedNameKeptUntilItsTime(t *testing.T) {
	r := newBranchRig(t, func(o *Options) { o.RetentionCount = 1 })
	for _, name := range []string{"first.example", "second.example"} {
		if _, err := r.issue(name, false); err != nil {
			t.Fatal(err)
		}
	}
	FlushIndex(10 * time.Second)
	rec := r.nameRecord("first.example")
	if rec.Request == nil {
		t.Fatalf("the issued name's record does not hold its request: %+v", rec)
	}
	documented := rec.Updated.Add(DefaultRetentionAge)
	s := r.store()
	m := newTestMaintenance(r.opts)
	// a day later: first.example's request goes for the count
	trimAt(t, m, s, r.opts, rec.Updated.Add(24*time.Hour))
	if ids, _ := s.list(context.Background(), KindRequest); len(ids) != 1 {
		t.Fatalf("requests left after trimming for the count: %v, want the newest", ids)
	}
	if !hasNameRecord(s, "first.example") {
		t.Fatalf("the record went a day after its last write, before %s", documented)
	}
	if left := r.nameRecord("first.example"); left.Request != nil || left.Order != nil {
		t.Errorf("the record still holds the trimmed request as in flight: %+v", left)
	}
	trimAt(t, m, s, r.opts, documented.Add(-time.Second))
	if !hasNameRecord(s, "first.example") {
		t.Fatalf("the record went a second before %s", documented)
	}
	trimAt(t, m, s, r.opts, endOfHour(documented))
	if left := keysMentioning(r.storage, "first.example"); len(left) > 0 {
		t.Fatalf("keys still mention the name after the documented time: %v", left)
	}
}

// TestNameExpiry: a name's record may go once nothing was written to it
// for the longer of the retention age and the longest failure backoff,
// counted from its last write or from the end of its backoff, whichever
// is later.
func TestNameExpiry(t *testing.T) {
	base := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	const day = 24 * time.Hour
	tests := []struct {
		desc                  string
		updated, nextAttempt  time.Time
		backoffMax, retention time.Duration
		want                  time.Time
	}{
		{"no backoff: the retention age after the last write", base, time.Time{}, 6 * time.Hour, 7 * day, base.Add(7 * day)},
		{"a backoff ending after the last write: from its end", base, base.Add(3 * time.Hour), 6 * time.Hour, 7 * day, base.Add(3*time.Hour + 7*day)},
		{"a backoff that ended before the last write: from the write", base, base.Add(-time.Hour), 6 * time.Hour, 7 * day, base.Add(7 * day)},
		{"a longest backoff longer than the retention age", base, base.Add(time.Hour), 10 * day, 7 * day, base.Add(time.Hour + 10*day)},
		{"a retention age longer than the longest backoff", base, base.Add(time.Hour), day, 30 * day, base.Add(time.Hour + 30*day)},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			rec := &NameRecord{Updated: tt.updated, NextAttempt: tt.nextAttempt}
			if got := nameExpiry(rec, tt.backoffMax, tt.retention); !got.Equal(tt.want) {
				t.Fatalf("nameExpiry = %s, want %s", got, tt.want)
			}
		})
	}
}

// TestExpiryTerms: maintenance judges a record by the longest failure
// backoff and retention age of the policies it knows, with the defaults
// as floors (a name may have been given the default by a policy it no
// longer has).
func TestExpiryTerms(t *testing.T) {
	const day = 24 * time.Hour
	type policy struct{ backoffMax, retention time.Duration }
	tests := []struct {
		desc     string
		policies []policy
		want     expiryTerms
	}{
		{"no policy: the defaults", nil, expiryTerms{DefaultBackoffMax, DefaultRetentionAge}},
		{"shorter than the defaults: the defaults", []policy{{time.Hour, day}}, expiryTerms{DefaultBackoffMax, DefaultRetentionAge}},
		{"a longer backoff", []policy{{10 * day, day}}, expiryTerms{10 * day, DefaultRetentionAge}},
		{"a longer retention age", []policy{{time.Hour, 30 * day}}, expiryTerms{DefaultBackoffMax, 30 * day}},
		{"several policies: the longest of each", []policy{{10 * day, day}, {time.Hour, 30 * day}, {2 * day, 8 * day}},
			expiryTerms{10 * day, 30 * day}},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			var opts []*Options
			for i, p := range tt.policies {
				o := &Options{PolicyID: fmt.Sprint("p", i), BackoffInitial: time.Minute, BackoffMax: p.backoffMax, RetentionAge: p.retention}
				o.SetDefaults()
				opts = append(opts, o)
			}
			if got := newTestMaintenance(opts...).expiryTerms(); got != tt.want {
				t.Fatalf("expiryTerms = %+v, want %+v", got, tt.want)
			}
		})
	}
}

// expiryTestStore is a store with locks that exclude, for the expiry
// tests, and a sentinel.
func expiryTestStore(t *testing.T) (store, *lockingStorage) {
	t.Helper()
	ls := newLockingStorage()
	s := store{storage: ls, issuerKey: "certflow-expiry"}
	if err := writeSentinel(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	return s, ls
}

// futureBase is a time on the hour a month ahead: the expiry notes the
// tests make are for hours to come, as the engine's always are.
func futureBase() time.Time { return time.Now().UTC().Truncate(time.Hour).Add(30 * 24 * time.Hour) }

// endOfHour is the first instant after at's hour: when maintenance first
// reads the notes of that hour.
func endOfHour(at time.Time) time.Time { return at.UTC().Truncate(time.Hour).Add(time.Hour) }

// expiryNoteDir is the documented folder of the notes of at's hour:
// certflow/<issuer key>/expiry/<YYYYMMDD-HH>.
func expiryNoteDir(s store, at time.Time) string {
	return path.Join(s.prefix(), "expiry", at.UTC().Format("20060102-15"))
}

// notedNames returns the names the notes of at's hour hold, of every
// writer.
func notedNames(t *testing.T, s store, at time.Time) []string {
	t.Helper()
	ctx := context.Background()
	keys, err := s.storage.List(ctx, expiryNoteDir(s, at), false)
	if isNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, k := range keys {
		b, err := s.storage.Load(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		var rec struct {
			Names []string `json:"names"`
		}
		if err := json.Unmarshal(b, &rec); err != nil {
			t.Fatalf("note %s: %v", k, err)
		}
		names = append(names, rec.Names...)
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// putNameRecord writes a name's record as the workflow's last write left
// it, without its expiry note.
func putNameRecord(t *testing.T, s store, name string, updated, nextAttempt time.Time) {
	t.Helper()
	rec := NameRecord{Version: SchemaVersion, Name: name, Updated: updated, NextAttempt: nextAttempt}
	if !nextAttempt.IsZero() {
		rec.Failures, rec.LastError = 1, "the CA refused"
	}
	if err := s.save(context.Background(), kindNames, name, &rec); err != nil {
		t.Fatal(err)
	}
}

func hasNameRecord(s store, name string) bool {
	return s.storage.Exists(context.Background(), s.key(kindNames, name))
}

// TestExpireNameAtItsTime: a record is never deleted before its time,
// and is at its time; one looked at before it is noted for the hour of
// its time, so the hourly pass after that hour finds it.
func TestExpireNameAtItsTime(t *testing.T) {
	base := futureBase()
	const day = 24 * time.Hour
	tests := []struct {
		desc                 string
		updated, nextAttempt time.Time
		terms                expiryTerms
		at                   time.Time // the documented time
	}{
		{"last written, no backoff", base, time.Time{}, expiryTerms{DefaultBackoffMax, DefaultRetentionAge}, base.Add(7 * day)},
		{"backing off past its last write", base, base.Add(90 * time.Minute), expiryTerms{DefaultBackoffMax, DefaultRetentionAge},
			base.Add(90*time.Minute + 7*day)},
		{"a longest backoff longer than the retention age", base, base.Add(time.Hour), expiryTerms{12 * day, DefaultRetentionAge},
			base.Add(time.Hour + 12*day)},
	}
	for i, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			ctx := context.Background()
			s, _ := expiryTestStore(t)
			name := fmt.Sprintf("at-%d.example", i)
			putNameRecord(t, s, name, tt.updated, tt.nextAttempt)

			gone, decided, err := expireName(ctx, s, name, tt.terms, zap.NewNop(), tt.at.Add(-time.Nanosecond))
			if err != nil || gone || !decided {
				t.Fatalf("just before its time: gone %v, decided %v, %v; want kept and decided", gone, decided, err)
			}
			if !hasNameRecord(s, name) {
				t.Fatal("deleted before its time")
			}
			FlushIndex(10 * time.Second)
			if noted := notedNames(t, s, tt.at); !slices.Contains(noted, name) {
				t.Fatalf("not noted for the hour of its time %s: %v", tt.at, noted)
			}

			gone, decided, err = expireName(ctx, s, name, tt.terms, zap.NewNop(), tt.at)
			if err != nil || !gone || !decided {
				t.Fatalf("at its time: gone %v, decided %v, %v; want deleted", gone, decided, err)
			}
			if hasNameRecord(s, name) {
				t.Fatal("still there at its time")
			}
		})
	}
}

// TestExpireNamesFromNotes: the hourly pass reads the notes of the hours
// that are over: a due record is deleted with its note; one rewritten
// since its note is noted again for its new hour and kept; one whose
// issue_cert lock is held is left undecided, its note kept for the next
// pass; a note a newer certflow wrote is left alone.
func TestExpireNamesFromNotes(t *testing.T) {
	ctx := context.Background()
	terms := expiryTerms{DefaultBackoffMax, DefaultRetentionAge}
	base := futureBase()
	at := base.Add(DefaultRetentionAge) // the time of a record last written at base

	t.Run("due: deleted once its hour is over, with its note", func(t *testing.T) {
		s, _ := expiryTestStore(t)
		putNameRecord(t, s, "due.example", base, time.Time{})
		catalog.noteExpiry(s, "due.example", at)
		FlushIndex(10 * time.Second)
		if n, err := expireNames(ctx, s, terms, zap.NewNop(), endOfHour(at).Add(-time.Nanosecond)); err != nil || n != 0 {
			t.Fatalf("before the note's hour is over: deleted %d (%v)", n, err)
		}
		if !hasNameRecord(s, "due.example") || len(notedNames(t, s, at)) == 0 {
			t.Fatal("the record or its note went before the note's hour was over")
		}
		if n, err := expireNames(ctx, s, terms, zap.NewNop(), endOfHour(at)); err != nil || n != 1 {
			t.Fatalf("once the note's hour is over: deleted %d (%v), want 1", n, err)
		}
		if hasNameRecord(s, "due.example") {
			t.Fatal("the record is still there")
		}
		if keys, _ := s.storage.List(ctx, expiryNoteDir(s, at), true); len(keys) > 0 {
			t.Fatalf("notes left: %v", keys)
		}
	})

	t.Run("rewritten since its note: noted again, kept", func(t *testing.T) {
		s, _ := expiryTestStore(t)
		putNameRecord(t, s, "again.example", base, time.Time{})
		catalog.noteExpiry(s, "again.example", at)
		FlushIndex(10 * time.Second)
		// written again two days later without a note of its own (as
		// ClearBackoff writes, or a note lost in a crash)
		later := base.Add(2 * 24 * time.Hour)
		putNameRecord(t, s, "again.example", later, time.Time{})
		newAt := later.Add(DefaultRetentionAge)
		if n, err := expireNames(ctx, s, terms, zap.NewNop(), endOfHour(at)); err != nil || n != 0 {
			t.Fatalf("deleted %d (%v), want none: it was written since", n, err)
		}
		FlushIndex(10 * time.Second)
		if !hasNameRecord(s, "again.example") {
			t.Fatal("deleted although written since its note")
		}
		if noted := notedNames(t, s, at); len(noted) > 0 {
			t.Errorf("the settled note is still there: %v", noted)
		}
		if noted := notedNames(t, s, newAt); !slices.Contains(noted, "again.example") {
			t.Fatalf("not noted for its new hour %s: %v", newAt, noted)
		}
		if n, err := expireNames(ctx, s, terms, zap.NewNop(), endOfHour(newAt)); err != nil || n != 1 || hasNameRecord(s, "again.example") {
			t.Fatalf("after its new hour: deleted %d (%v), want it gone", n, err)
		}
	})

	t.Run("its issue_cert lock held: undecided, looked at again", func(t *testing.T) {
		s, ls := expiryTestStore(t)
		putNameRecord(t, s, "busy.example", base, time.Time{})
		catalog.noteExpiry(s, "busy.example", at)
		FlushIndex(10 * time.Second)
		if err := ls.Lock(ctx, "issue_cert_busy.example"); err != nil { // an issuance in flight
			t.Fatal(err)
		}
		if n, err := expireNames(ctx, s, terms, zap.NewNop(), endOfHour(at)); err != nil || n != 0 {
			t.Fatalf("while locked: deleted %d (%v)", n, err)
		}
		if !hasNameRecord(s, "busy.example") || !slices.Contains(notedNames(t, s, at), "busy.example") {
			t.Fatal("the record or its note went while an issuance held its lock")
		}
		if err := ls.Unlock(ctx, "issue_cert_busy.example"); err != nil {
			t.Fatal(err)
		}
		if n, err := expireNames(ctx, s, terms, zap.NewNop(), endOfHour(at).Add(time.Hour)); err != nil || n != 1 || hasNameRecord(s, "busy.example") {
			t.Fatalf("the next pass, unlocked: deleted %d (%v), want it gone", n, err)
		}
	})

	t.Run("a newer certflow's note: left alone", func(t *testing.T) {
		s, _ := expiryTestStore(t)
		putNameRecord(t, s, "newer.example", base, time.Time{})
		putNameRecord(t, s, "mine.example", base, time.Time{})
		catalog.noteExpiry(s, "mine.example", at)
		FlushIndex(10 * time.Second)
		newer := path.Join(expiryNoteDir(s, at), "zzzznewer.json")
		body := fmt.Sprintf(`{"version":%d,"writer":"zzzznewer","names":["newer.example"]}`, SchemaVersion+1)
		if err := s.storage.Store(ctx, newer, []byte(body)); err != nil {
			t.Fatal(err)
		}
		for pass := range 2 {
			if _, err := expireNames(ctx, s, terms, zap.NewNop(), endOfHour(at).Add(time.Duration(pass)*time.Hour)); err != nil {
				t.Fatal(err)
			}
		}
		if hasNameRecord(s, "mine.example") {
			t.Error("the name of this version's note was kept")
		}
		if !hasNameRecord(s, "newer.example") {
			t.Error("the name only a newer note tells of was deleted")
		}
		if b, err := s.storage.Load(ctx, newer); err != nil || string(b) != body {
			t.Errorf("the newer note was changed: %q, %v", b, err)
		}
	})
}

// TestSweepNamesFindsUnnotedRecords: the weekly sweep looks at every
// name's record, whatever the notes say: one an older release wrote (no
// note ever) and due is deleted, one not due is noted for its hour, one
// whose lock is held is left; the sweep runs again only a
// nameSweepInterval later.
func TestSweepNamesFindsUnnotedRecords(t *testing.T) {
	ctx := context.Background()
	terms := expiryTerms{DefaultBackoffMax, DefaultRetentionAge}
	now := futureBase()
	s, ls := expiryTestStore(t)
	// the previous release's record, exactly as it wrote it: no note
	oldUpdated := now.Add(-8 * 24 * time.Hour)
	old := fmt.Sprintf(`{"version":1,"name":"old.example","last_request":"20250101-000000.000000000-00000000","failures":2,`+
		`"next_attempt":%q,"last_error":"the CA refused","on_demand":true,"updated":%q}`,
		oldUpdated.Add(2*time.Hour).Format(time.RFC3339Nano), oldUpdated.Format(time.RFC3339Nano))
	if err := ls.Store(ctx, s.key(kindNames, "old.example"), []byte(old)); err != nil {
		t.Fatal(err)
	}
	recent := now.Add(-time.Hour)
	putNameRecord(t, s, "recent.example", recent, time.Time{})
	putNameRecord(t, s, "busy.example", oldUpdated, time.Time{})
	if err := ls.Lock(ctx, "issue_cert_busy.example"); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ls.Unlock(ctx, "issue_cert_busy.example") }()

	sweepNamesIfDue(ctx, s, terms, zap.NewNop(), now)
	FlushIndex(10 * time.Second)
	if hasNameRecord(s, "old.example") {
		t.Error("the older release's due record was kept")
	}
	if !hasNameRecord(s, "recent.example") {
		t.Error("a record not due was deleted")
	}
	if !hasNameRecord(s, "busy.example") {
		t.Error("a record whose issue_cert lock is held was deleted")
	}
	if noted := notedNames(t, s, recent.Add(DefaultRetentionAge)); !slices.Contains(noted, "recent.example") {
		t.Errorf("the record not due was not noted for its hour: %v", noted)
	}

	// a due record with no note: the next sweep is a week later
	putNameRecord(t, s, "later.example", oldUpdated, time.Time{})
	sweepNamesIfDue(ctx, s, terms, zap.NewNop(), now.Add(nameSweepInterval-time.Hour))
	if !hasNameRecord(s, "later.example") {
		t.Fatal("swept again before nameSweepInterval")
	}
	sweepNamesIfDue(ctx, s, terms, zap.NewNop(), now.Add(nameSweepInterval))
	if hasNameRecord(s, "later.example") {
		t.Fatal("not swept a nameSweepInterval after the last sweep")
	}
}
