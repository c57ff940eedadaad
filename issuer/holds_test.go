package issuer

import (
	"context"
	"testing"
	"time"
)

// TestTrimHolds: maintenance deletes holds that ended over an hour ago, and
// leaves holds in force, holds that just ended, and holds it cannot read or
// a newer certflow wrote.
func TestTrimHolds(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	s := store{storage: newMemStorage(), issuerKey: "certflow-trim"}
	put := func(h Hold) string {
		h.Version = SchemaVersion
		if err := s.save(ctx, kindHolds, h.Scope.Key(), h); err != nil {
			t.Fatal(err)
		}
		return h.Scope.Key()
	}
	old := put(Hold{Scope: HoldScope{ScopeNames, "old.example"}, Until: now.Add(-2 * time.Hour)})
	recent := put(Hold{Scope: HoldScope{ScopeNames, "recent.example"}, Until: now.Add(-time.Minute)})
	active := put(Hold{Scope: HoldScope{ScopeDomain, "example.com"}, Until: now.Add(time.Hour)})
	newer := HoldScope{ScopeNames, "newer.example"}.Key()
	if err := s.storage.Store(ctx, s.key(kindHolds, newer), []byte(`{"version":2,"until":"2000-01-01T00:00:00Z"}`)); err != nil {
		t.Fatal(err)
	}
	garbage := "names-garbage.example"
	if err := s.storage.Store(ctx, s.key(kindHolds, garbage), []byte("not json")); err != nil {
		t.Fatal(err)
	}
	n, err := trimHolds(ctx, s, now)
	if err != nil || n != 1 {
		t.Fatalf("trimHolds deleted %d (%v), want 1", n, err)
	}
	for key, want := range map[string]bool{old: false, recent: true, active: true, newer: true, garbage: true} {
		if got := s.storage.Exists(ctx, s.key(kindHolds, key)); got != want {
			t.Errorf("%s: exists %v, want %v", key, got, want)
		}
	}
}

// TestHoldsWatchDropsClearedHolds: a hold cleared in storage (by another
// node's admin API) leaves this process's view within a refresh period
// although nothing here reads the holds meanwhile (PreCheck and the
// permission module answer from the view alone).
func TestHoldsWatchDropsClearedHolds(t *testing.T) {
	ctx := context.Background()
	stopped := make(chan struct{})
	defer close(stopped)
	s := store{storage: newMemStorage(), issuerKey: "certflow-watch"}
	table := newHoldTable(stopped)
	h := Hold{Scope: HoldScope{ScopeDomain, "example.com"}, Until: time.Now().Add(time.Hour), Reason: "429"}
	if err := table.put(ctx, s, h); err != nil {
		t.Fatal(err)
	}
	if _, held := table.covering([]string{"a.example.com"}, "acct", time.Now()); !held {
		t.Fatal("the hold is not in the view")
	}
	if err := s.delete(ctx, kindHolds, h.Scope.Key()); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2*holdRefresh + time.Second)
	for {
		if _, held := table.covering([]string{"a.example.com"}, "acct", time.Now()); !held {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the cleared hold is still in the view after %s", 2*holdRefresh)
		}
		time.Sleep(50 * time.Millisecond) // the watch runs on its own period: polled, bounded
	}
	waitUntil(t, "the watch to end once the view is empty", func() bool {
		table.mu.Lock()
		defer table.mu.Unlock()
		return !table.watching
	})
}
