package issuer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"

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

func TestCleanUpLeftovers(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	presented := ChallengeTimes{Presented: now.Add(-time.Hour)}
	tests := []struct {
		name        string
		ch          Challenge
		wantCleaned bool
		wantState   string
	}{
		{"valid, never cleaned up", Challenge{State: ChallengeValid, Times: presented, Updated: now.Add(-time.Minute)}, true, ChallengeValid},
		{"valid, cleaned up", Challenge{State: ChallengeValid, Times: presented, CleanedUp: true, Updated: now}, false, ChallengeValid},
		{"in flight, recent", Challenge{State: ChallengePresented, Times: presented, Updated: now.Add(-time.Minute)}, false, ChallengePresented},
		{"in flight, abandoned", Challenge{State: ChallengePresented, Times: presented, Updated: now.Add(-time.Hour)}, true, ChallengeErrored},
		{"errored before presenting", Challenge{State: ChallengeErrored, Updated: now.Add(-time.Hour)}, false, ChallengeErrored},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := testStore(t)
			solver := &recordingSolver{}
			opts := &Options{Solvers: map[string]solvers.Solver{"http-01": solver}, ChallengeTimeout: 5 * time.Minute}
			opts.SetDefaults()
			ch := tt.ch
			ch.Version, ch.ID, ch.Type, ch.Name, ch.Token = SchemaVersion, fmt.Sprintf("c%d", i), "http-01", "x.test", "tok"
			ctx := context.Background()
			if err := s.save(ctx, KindChallenge, ch.ID, &ch); err != nil {
				t.Fatal(err)
			}
			cleanUpLeftovers(ctx, s, opts, now)
			if got := len(solver.cleaned) == 1; got != tt.wantCleaned {
				t.Fatalf("cleaned = %v, want %v", solver.cleaned, tt.wantCleaned)
			}
			var after Challenge
			if err := s.load(ctx, KindChallenge, ch.ID, &after); err != nil {
				t.Fatal(err)
			}
			if after.State != tt.wantState {
				t.Fatalf("state = %s, want %s", after.State, tt.wantState)
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
