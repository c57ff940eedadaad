package issuer

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/certflow/certflow/internal/dirsnap"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap/zaptest"
)

// newerVersion is a resource as a later certflow with schema version 2
// might write it.
func newerVersion(id, name string) string {
	return fmt.Sprintf(`{"version":%d,"id":%q,"name":%q,"state":"pending","something_new":{"a":1}}`, SchemaVersion+1, id, name)
}

// TestStatusAndListsChangeNothing: the status of names whose records are
// corrupt, older or newer than this binary, and every list, leave the
// storage exactly as it was (before, a status read set such records aside),
// and say what they found.
func TestStatusAndListsChangeNothing(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := store{storage: &certmagic.FileStorage{Path: dir}, issuerKey: "certflow-test"}
	t.Cleanup(func() { FlushIndex(time.Minute) })
	if err := writeSentinel(ctx, s); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	// x.test: a current record whose request is newer and whose order is
	// garbage; its challenge is of an older version
	rec := &NameRecord{Version: SchemaVersion, Name: "x.test", LastRequest: "r1", CurrentOrder: "o1", Failures: 1, Updated: now}
	if err := s.save(ctx, kindNames, "x.test", rec); err != nil {
		t.Fatal(err)
	}
	raw := map[string]string{
		s.key(KindRequest, "r1"):         newerVersion("r1", "x.test"),
		s.key(KindOrder, "o1"):           `{"version":1,"id":"o1","name":"x.test","state":"pend`,
		s.key(KindChallenge, "c1"):       `{"version":0,"id":"c1","name":"x.test","state":"presented"}`,
		s.key(kindNames, "garbage.test"): "\x00not json",
		s.key(kindNames, "older.test"):   `{"version":0,"name":"older.test"}`,
		s.key(kindNames, "newer.test"):   fmt.Sprintf(`{"version":%d,"name":"newer.test","failures":7}`, SchemaVersion+1),
		s.key(kindNames, "other.test"):   `{"version":1,"name":"another.test"}`,
	}
	for k, v := range raw {
		if err := s.storage.Store(ctx, k, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	// index markers, so that the lists load the resources too
	for _, m := range []struct{ kind, id, state string }{{KindRequest, "r1", RequestPending}, {KindOrder, "o1", OrderPending}, {KindChallenge, "c1", ChallengePresented}} {
		catalog.submit(s, m.kind, m.id, "x.test", m.state, "")
	}
	FlushIndex(time.Minute)

	before := dirsnap.Take(t, dir, nil)
	r := NewReader(s.storage, s.issuerKey)
	tests := []struct {
		name     string
		problems []string // pieces of each problem, in order
	}{
		{"x.test", []string{"requests/r1.json: written by a newer certflow (schema version 2", "orders/o1.json", "left in place"}},
		{"garbage.test", []string{"names/garbage.test.json", "decoding"}},
		{"older.test", []string{"schema version 0, want 1"}},
		{"newer.test", []string{"names/newer.test.json: written by a newer certflow"}},
		{"other.test", []string{"not the resource of this key"}},
	}
	for _, tt := range tests {
		st, err := r.Status(ctx, tt.name)
		if err != nil {
			t.Errorf("Status(%s): %v", tt.name, err)
			continue
		}
		all := strings.Join(st.Problems, "\n")
		for _, want := range tt.problems {
			if !strings.Contains(all, want) {
				t.Errorf("Status(%s) problems %q, want one saying %q", tt.name, st.Problems, want)
			}
		}
	}
	for _, q := range []Query{{Kind: KindRequest}, {Kind: KindOrder}, {Kind: KindChallenge}, {Kind: KindOrder, Name: "x.test"},
		{Kind: KindChallenge, State: ChallengePresented}, {Kind: KindRequest, State: RequestPending}} {
		if _, err := r.List(ctx, q); err != nil {
			t.Errorf("List(%+v): %v", q, err)
		}
	}
	if diff := dirsnap.Diff(before, dirsnap.Take(t, dir, nil)); diff != "" {
		t.Fatalf("reading changed the storage: %s", diff)
	}

	// the workflow, by contrast, sets aside what is corrupt or older, and
	// leaves what is newer
	w := &workflow{store: s, name: "older.test", logger: zaptest.NewLogger(t)}
	if got, err := w.loadNameRecord(ctx); err != nil || got.Failures != 0 {
		t.Fatalf("the workflow on an older record: %+v, %v; want a fresh one", got, err)
	}
	if _, err := s.storage.Load(ctx, s.key(kindNames, "older.test")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the workflow left an older record in place: %v", err)
	}
}

// TestWorkflowLeavesNewerRecords: a name record or an order written by a
// newer certflow fails the step with a clear error, stays where it is
// byte for byte, and is nobody's failure: the name's backoff does not grow.
func TestWorkflowLeavesNewerRecords(t *testing.T) {
	ctx := context.Background()
	s, _ := corruptTestStore(t)
	newerRec := fmt.Sprintf(`{"version":%d,"name":"newer.test","failures":7}`, SchemaVersion+1)
	newerOrder := newerVersion("o1", "x.test")
	if err := s.storage.Store(ctx, s.key(kindNames, "newer.test"), []byte(newerRec)); err != nil {
		t.Fatal(err)
	}
	if err := s.storage.Store(ctx, s.key(KindOrder, "o1"), []byte(newerOrder)); err != nil {
		t.Fatal(err)
	}
	unchanged := func(key, want string) {
		t.Helper()
		b, err := s.storage.Load(ctx, key)
		if err != nil || string(b) != want {
			t.Errorf("%s is now %q (%v), want it left as it was", key, b, err)
		}
	}

	w := &workflow{store: s, name: "newer.test", logger: zaptest.NewLogger(t)}
	_, err := w.loadNameRecord(ctx)
	if !errors.Is(err, ErrNewerSchema) || !strings.Contains(err.Error(), "written by a newer certflow") {
		t.Fatalf("loadNameRecord of a newer record: %v, want ErrNewerSchema", err)
	}
	unchanged(s.key(kindNames, "newer.test"), newerRec)

	now := time.Now()
	w = &workflow{
		store:   s,
		name:    "x.test",
		logger:  zaptest.NewLogger(t),
		opts:    &Options{Storage: s.storage, IssuerKey: s.issuerKey, BackoffInitial: time.Minute, BackoffMax: time.Hour},
		rec:     &NameRecord{Version: SchemaVersion, Name: "x.test", CurrentOrder: "o1", Failures: 1},
		cr:      &CertificateRequest{Version: SchemaVersion, ID: newID(now), Name: "x.test", State: RequestPending, Created: now},
		started: now,
		engine:  &Engine{},
	}
	_, err = w.resumeOrder(ctx, "o1")
	if !errors.Is(err, ErrNewerSchema) {
		t.Fatalf("resumeOrder of a newer order: %v, want ErrNewerSchema", err)
	}
	unchanged(s.key(KindOrder, "o1"), newerOrder)
	failed := w.recordFailure(ctx, err)
	if !errors.Is(failed, ErrNewerSchema) {
		t.Errorf("the failure returned: %v", failed)
	}
	if w.rec.Failures != 1 || !w.rec.NextAttempt.IsZero() {
		t.Errorf("a newer record was charged to the name: failures %d, next attempt %s", w.rec.Failures, w.rec.NextAttempt)
	}
	if len(asideKeys(t, s)) != 0 {
		t.Errorf("something was set aside: %v", asideKeys(t, s))
	}
}

// noTryLock hides a storage's TryLock, like a backend without one.
type noTryLock struct{ certmagic.Storage }

// lockingStorage is a memStorage whose locks exclude as a real backend's
// do: Lock polls until the lock is free or ctx ends, TryLock never waits.
// Unlike certmagic's FileStorage it leaves no goroutine behind (that one
// keeps a lock file fresh for up to 5 s after it is released), which the
// goroutine counts of the scheduler's memory test would see.
type lockingStorage struct {
	*memStorage
	mu   sync.Mutex
	held map[string]bool
}

func newLockingStorage() *lockingStorage {
	return &lockingStorage{memStorage: newMemStorage(), held: map[string]bool{}}
}

func (s *lockingStorage) TryLock(_ context.Context, name string) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.held[name] {
		return false, nil
	}
	s.held[name] = true
	return true, nil
}

func (s *lockingStorage) Lock(ctx context.Context, name string) error {
	for {
		if ok, _ := s.TryLock(ctx, name); ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (s *lockingStorage) Unlock(_ context.Context, name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.held, name)
	return nil
}

// TestClearBackoffDoesNotWaitForAnIssuance: while certmagic's lock on the
// name is held (an issuance in flight) ClearBackoff answers ErrInFlight at
// once and changes nothing; the lock is not left taken by the probe; once
// the issuance ends the backoff is cleared. A record a newer certflow wrote
// is left alone; a corrupt one is set aside (the name starts clean).
func TestClearBackoffDoesNotWaitForAnIssuance(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		wrap func(certmagic.Storage) certmagic.Storage
	}{
		{"with TryLock", func(s certmagic.Storage) certmagic.Storage { return s }},
		{"without TryLock", func(s certmagic.Storage) certmagic.Storage { return noTryLock{s} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := store{storage: tc.wrap(newLockingStorage()), issuerKey: "certflow-test"}
			if err := writeSentinel(ctx, s); err != nil {
				t.Fatal(err)
			}
			rec := &NameRecord{Version: SchemaVersion, Name: "x.test", Failures: 3, NextAttempt: time.Now().Add(time.Hour)}
			if err := s.save(ctx, kindNames, "x.test", rec); err != nil {
				t.Fatal(err)
			}
			r := NewReader(s.storage, s.issuerKey)
			const lock = "issue_cert_x.test"
			if err := s.storage.Lock(ctx, lock); err != nil { // the issuance in flight
				t.Fatal(err)
			}
			// bounded, so that a ClearBackoff that waits for the lock fails
			// the test instead of hanging it
			bounded, cancelBounded := context.WithTimeout(ctx, 10*time.Second)
			defer cancelBounded()
			start := time.Now()
			err := r.ClearBackoff(bounded, "x.test")
			took := time.Since(start)
			if !errors.Is(err, ErrInFlight) {
				t.Fatalf("ClearBackoff while the name is locked: %v, want ErrInFlight", err)
			}
			// the bound is the probe's, not the issuance's (which here
			// would never end): a blocking call would not return at all
			if took > 10*lockProbeWait {
				t.Errorf("ClearBackoff took %s while the name was locked", took)
			}
			st, err := r.Status(ctx, "x.test")
			if err != nil || st.Record.Failures != 3 {
				t.Fatalf("the record changed while in flight: %+v, %v", st.Record, err)
			}
			if err := s.storage.Unlock(ctx, lock); err != nil {
				t.Fatal(err)
			}
			if err := r.ClearBackoff(ctx, "x.test"); err != nil {
				t.Fatalf("ClearBackoff once the issuance ended: %v", err)
			}
			if st, _ := r.Status(ctx, "x.test"); st.Record == nil || st.Record.Failures != 0 || st.BackingOff {
				t.Fatalf("after ClearBackoff: %+v", st.Record)
			}
			// the lock is free again: the probe did not keep it
			lockCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			if err := s.storage.Lock(lockCtx, lock); err != nil {
				t.Fatalf("the name's lock is still taken after ClearBackoff: %v", err)
			}
			_ = s.storage.Unlock(ctx, lock)

			newer := fmt.Sprintf(`{"version":%d,"name":"x.test","failures":7}`, SchemaVersion+1)
			_ = s.storage.Store(ctx, s.key(kindNames, "x.test"), []byte(newer))
			if err := r.ClearBackoff(ctx, "x.test"); !errors.Is(err, ErrNewerSchema) {
				t.Errorf("ClearBackoff of a newer record: %v, want ErrNewerSchema", err)
			}
			if b, _ := s.storage.Load(ctx, s.key(kindNames, "x.test")); string(b) != newer {
				t.Errorf("a newer record was changed: %s", b)
			}
			_ = s.storage.Store(ctx, s.key(kindNames, "x.test"), []byte("garbage"))
			if err := r.ClearBackoff(ctx, "x.test"); err != nil {
				t.Errorf("ClearBackoff of a corrupt record: %v, want it set aside and cleared", err)
			}
			if _, err := s.storage.Load(ctx, s.key(kindNames, "x.test")); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("the corrupt record is still in place: %v", err)
			}
		})
	}
}
