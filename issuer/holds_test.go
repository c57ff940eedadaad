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
