package issuer

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Hold stops new orders for a scope (names, a registered domain, the
// account) until a time, because the CA limited it (a 429) or the account
// needs attention. Holds are stored under certflow/<issuer key>/holds/, so
// every node sharing the storage honours them; for one scope the latest
// deadline wins. They are visible in status and can be cleared through the
// admin API.
type Hold struct {
	Version int       `json:"version"`
	Scope   HoldScope `json:"scope"`
	Until   time.Time `json:"until"`
	// Reason is the CA's own words.
	Reason string `json:"reason"`
	// Limit is the limit recognised (see knownLimits), "unrecognised",
	// or what else held the scope ("account problem", "unrecognised 429s
	// for most recent new orders").
	Limit   string    `json:"limit"`
	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`
}

const kindHolds = "holds"

// AccountHoldMax caps how long the account is held, whatever the CA's
// Retry-After: a hold of the whole fleet must not outlast a few hours
// without someone deciding so.
const AccountHoldMax = 3 * time.Hour

// holdRefresh is how stale this process's view of the stored holds may be
// before a request lists them again: another node's new hold reaches this
// one within it (meanwhile the CA would refuse again, and that refusal is
// recorded here at once).
const holdRefresh = 5 * time.Second

func (h Hold) activeAt(now time.Time) bool { return h.Until.After(now) }

// holdTable is this process's view of the holds of one store.
type holdTable struct {
	mu       sync.Mutex
	holds    map[string]Hold // by scope key
	loaded   time.Time       // when storage was last listed
	gen      uint64          // bumped by every local change
	changed  map[string]uint64
	s        store           // the latest store the table was used with, for watch
	watching bool            // watch's goroutine runs
	stopped  <-chan struct{} // the engine's: closed when it is destructed
}

func newHoldTable(stopped <-chan struct{}) *holdTable {
	return &holdTable{holds: map[string]Hold{}, changed: map[string]uint64{}, stopped: stopped}
}

// holdsFor returns the engine's hold table for a store, and keeps it fresh
// while it holds anything (watch).
func (e *Engine) holdsFor(s store) *holdTable {
	id := StorageIdentity(s.storage) + "|" + s.issuerKey
	v, ok := e.holdTables.Load(id)
	if !ok {
		v, _ = e.holdTables.LoadOrStore(id, newHoldTable(e.stopped))
	}
	t := v.(*holdTable)
	t.mu.Lock()
	t.s = s
	t.mu.Unlock()
	return t
}

// watchLocked starts watch when the view holds anything and it does not
// run; t.mu is held.
func (t *holdTable) watchLocked() {
	if t.watching || len(t.holds) == 0 {
		return
	}
	t.watching = true
	go t.watch()
}

// watch lists the stored holds every holdRefresh while the view holds any,
// so that a hold cleared (through any node's admin API) or ended is
// dropped here within holdRefresh even when no request of this node reads
// the holds: PreCheck and the permission module answer from the view
// alone, and a refusal of theirs means no request ever refreshes it.
func (t *holdTable) watch() {
	// the engine's, not the work of the request that started it
	pprof.SetGoroutineLabels(context.Background())
	tick := time.NewTicker(holdRefresh)
	defer tick.Stop()
	for {
		select {
		case <-t.stopped:
			t.mu.Lock()
			t.watching = false
			t.mu.Unlock()
			return
		case <-tick.C:
		}
		t.mu.Lock()
		s, empty := t.s, len(t.holds) == 0
		if empty {
			t.watching = false
		}
		t.mu.Unlock()
		if empty {
			return // started again by the next put or refresh that finds a hold
		}
		ctx, cancel := context.WithTimeout(context.Background(), saveTimeout)
		t.refresh(ctx, s, time.Now())
		cancel()
	}
}

// refresh lists the stored holds if the view is older than holdRefresh. A
// storage error keeps the view as it is (and is logged): the CA refuses
// again if a hold was missed.
func (t *holdTable) refresh(ctx context.Context, s store, now time.Time) {
	t.mu.Lock()
	t.s = s
	if now.Sub(t.loaded) < holdRefresh {
		t.mu.Unlock()
		return
	}
	t.loaded = now // one refresh at a time; others use the view as is
	gen := t.gen
	t.mu.Unlock()

	stored, err := loadHolds(ctx, s)
	if err != nil {
		if s.logger != nil {
			s.logger.Warn("reading rate-limit holds", zap.Error(err))
		}
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	next := make(map[string]Hold, len(stored))
	for _, h := range stored {
		if h.activeAt(now) {
			next[h.Scope.Key()] = h
		}
	}
	for key, g := range t.changed {
		if g > gen { // changed here while listing: this process knows better
			if h, ok := t.holds[key]; ok {
				next[key] = h
			} else {
				delete(next, key)
			}
		}
	}
	t.holds = next
	t.changed = map[string]uint64{}
	t.watchLocked()
}

// loadHolds reads every stored hold of s. It only reads: a hold that does
// not decode (or has another schema version) is skipped, never set aside;
// maintenance deletes holds that have ended (trimHolds).
func loadHolds(ctx context.Context, s store) ([]Hold, error) {
	ids, err := s.list(ctx, kindHolds)
	if err != nil {
		return nil, err
	}
	out := make([]Hold, 0, len(ids))
	for _, id := range ids {
		b, err := s.storage.Load(ctx, s.key(kindHolds, id))
		if err != nil {
			continue // gone meanwhile, or unreadable: the CA refuses again if it mattered
		}
		var h Hold
		if json.Unmarshal(b, &h) != nil || h.Version != SchemaVersion || h.Scope.Key() != id {
			continue
		}
		out = append(out, h)
	}
	return out, nil
}

// covering returns the longest active hold over an order for names under
// account: the names' own, their registered domain's or the account's.
func (t *holdTable) covering(names []string, account string, now time.Time) (Hold, bool) {
	keys := []string{namesScope(names).Key(), HoldScope{Kind: ScopeAccount, Value: account}.Key()}
	for _, n := range names {
		keys = append(keys, namesScope([]string{n}).Key())
	}
	if rd, ok := registeredDomain(names); ok {
		keys = append(keys, HoldScope{Kind: ScopeDomain, Value: rd}.Key())
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	var best Hold
	for _, k := range keys {
		if h, ok := t.holds[k]; ok && h.activeAt(now) && h.Until.After(best.Until) {
			best = h
		}
	}
	return best, !best.Until.IsZero()
}

// put records a hold in storage and in this view; a later deadline already
// known for the scope wins.
func (t *holdTable) put(ctx context.Context, s store, h Hold) error {
	key := h.Scope.Key()
	now := time.Now()
	t.mu.Lock()
	if old, ok := t.holds[key]; ok && !old.Until.Before(h.Until) {
		t.mu.Unlock()
		return nil
	}
	h.Version, h.Updated = SchemaVersion, now
	if h.Created.IsZero() {
		h.Created = now
	}
	t.holds[key] = h
	t.gen++
	t.changed[key] = t.gen
	t.s = s
	t.watchLocked()
	t.mu.Unlock()

	if b, err := s.storage.Load(ctx, s.key(kindHolds, key)); err == nil {
		var stored Hold
		if json.Unmarshal(b, &stored) == nil && (stored.Version > SchemaVersion || !stored.Until.Before(h.Until)) {
			return nil // another node recorded a later deadline, or a newer certflow owns the record
		}
	}
	return s.save(ctx, kindHolds, key, h)
}

// forget drops a hold from this view (it was cleared in storage).
func (t *holdTable) forget(key string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.holds, key)
	t.gen++
	t.changed[key] = t.gen
}

// all returns the active holds of this view.
func (t *holdTable) all(now time.Time) []Hold {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]Hold, 0, len(t.holds))
	for _, h := range t.holds {
		if h.activeAt(now) {
			out = append(out, h)
		}
	}
	return out
}

// ForgetHold drops what the engine's views hold for a scope key, after an
// operator cleared it in storage. An account cleared of an account-wide
// rate limit still probes with one order at a time until one succeeds, as
// when the hold ends by itself.
func (e *Engine) ForgetHold(key string) {
	e.holdTables.Range(func(_, v any) bool {
		v.(*holdTable).forget(key)
		return true
	})
}

// ClearHold deletes a stored hold by its scope key (the admin API); it
// reports whether there was one.
func (r Reader) ClearHold(ctx context.Context, key string) (bool, error) {
	if _, err := r.s.storage.Load(ctx, r.s.key(kindHolds, key)); isNotExist(err) {
		return false, nil
	}
	return true, r.s.delete(ctx, kindHolds, key)
}

// NameHoldKey is the scope key of the hold on exactly one name.
func NameHoldKey(name string) string { return namesScope([]string{name}).Key() }

// HoldsOver returns the stored holds in force over name: its own, its
// registered domain's, and every account's (the reader does not know
// which account a policy uses).
func (r Reader) HoldsOver(ctx context.Context, name string, now time.Time) ([]Hold, error) {
	all, err := r.Holds(ctx, now)
	if err != nil {
		return nil, err
	}
	rd, _ := registeredDomain([]string{name})
	var out []Hold
	for _, h := range all {
		switch h.Scope.Kind {
		case ScopeAccount:
		case ScopeDomain:
			if h.Scope.Value != rd {
				continue
			}
		default:
			if !slices.Contains(strings.Split(h.Scope.Value, ","), name) {
				continue
			}
		}
		out = append(out, h)
	}
	return out, nil
}

// Holds lists the stored holds still in force, and when each ends.
func (r Reader) Holds(ctx context.Context, now time.Time) ([]Hold, error) {
	all, err := loadHolds(ctx, r.s)
	if err != nil {
		return nil, err
	}
	out := all[:0]
	for _, h := range all {
		if h.activeAt(now) {
			out = append(out, h)
		}
	}
	return out, nil
}

// errHeld is the message of a request refused because a hold covers it.
func errHeld(h Hold) error {
	return heldUntil(h.Until, fmt.Sprintf("new orders for %s are held (%s): %s", h.Scope, h.Limit, h.Reason))
}

// expiredHoldMargin is how long after its end a hold is deleted: longer
// than any clock skew between the nodes sharing the storage.
const expiredHoldMargin = time.Hour

// trimHolds deletes the stored holds that ended more than
// expiredHoldMargin ago, one key at a time. A hold written by a newer
// certflow (another schema version) or that does not decode is left alone:
// it may be a rolling upgrade's.
func trimHolds(ctx context.Context, s store, now time.Time) (deleted int, err error) {
	ids, err := s.list(ctx, kindHolds)
	if err != nil {
		return 0, err
	}
	for _, id := range ids {
		b, err := s.storage.Load(ctx, s.key(kindHolds, id))
		if err != nil {
			continue
		}
		var h Hold
		if json.Unmarshal(b, &h) != nil || h.Version != SchemaVersion || h.Until.Add(expiredHoldMargin).After(now) {
			continue
		}
		if err := s.delete(ctx, kindHolds, id); err != nil {
			return deleted, err
		}
		deleted++
	}
	return deleted, nil
}
