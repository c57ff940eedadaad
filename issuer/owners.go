package issuer

import (
	"context"
	"encoding/json"
	"path"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// Each engine (one per ACME account in a process) records the challenges it
// runs as their Owner, and keeps a heartbeat record in every store it works
// in, so that any process sharing the store can tell a challenge whose
// process is gone (abandoned: its answer must be removed) from one still
// waiting in a live process's queue (which must be left alone, however
// long it waits):
//
//	certflow/<issuer key>/owners/<owner>.json
//
// The record is written when the engine starts a challenge in the store
// (or, for its maintenance alone, once the config load is over: a config
// that is only validated writes nothing), then every heartbeatInterval
// while it has challenges in flight there or runs its maintenance; when it
// stops (the config that used it is unloaded and its last challenge
// ended), it deletes its record. A record not refreshed
// for heartbeatLapse is a process that died: maintenance ends what it left
// and removes the record.

const (
	// heartbeatInterval is how often an engine refreshes its record.
	heartbeatInterval = 30 * time.Second
	// heartbeatLapse is how old a heartbeat may be before its process is
	// taken for gone: four missed refreshes, and room for clocks that
	// disagree by a minute.
	heartbeatLapse = 2 * time.Minute
	// heartbeatWriteTimeout bounds one write or delete of the record.
	heartbeatWriteTimeout = 10 * time.Second
)

const ownersDir = "owners"

// ownerRecord is an engine's heartbeat in one store.
type ownerRecord struct {
	Version int       `json:"version"`
	Owner   string    `json:"owner"`
	Started time.Time `json:"started"`
	Updated time.Time `json:"updated"`
}

func (s store) ownerKey(owner string) string {
	return path.Join(s.prefix(), ownersDir, certmagic.StorageKeys.Safe(owner)+".json")
}

// storeID names a store: its storage (StorageIdentity) and issuer key.
func storeID(s store) string { return StorageIdentity(s.storage) + "|" + s.issuerKey }

// presence is what an engine runs in each store it works in.
type presence struct {
	mu     sync.Mutex
	stores map[string]*storePresence // by storeID
}

type storePresence struct {
	s          store               // the latest value of the store (a reload replaces it)
	live       map[string]struct{} // IDs of the challenges this engine runs there
	maintained bool                // the engine's maintenance runs there
	beating    bool                // the heartbeat goroutine runs
	written    bool                // the record was written (or its write tried)
	started    time.Time
	wake       chan struct{}
	// writeMu orders the heartbeat goroutines' writes: one that stops
	// deletes the record before a later one writes it again.
	writeMu sync.Mutex
}

// storePresence returns the presence in s, creating it; p.mu is held.
func (p *presence) in(s store) *storePresence {
	if p.stores == nil {
		p.stores = map[string]*storePresence{}
	}
	id := storeID(s)
	sp, ok := p.stores[id]
	if !ok {
		sp = &storePresence{live: map[string]struct{}{}, wake: make(chan struct{}, 1)}
		p.stores[id] = sp
	}
	sp.s = s
	return sp
}

// running records that this engine runs the challenge id in s until the
// returned func is called; meanwhile its heartbeat in s is kept.
func (e *Engine) running(s store, id string) (done func()) {
	e.presence.mu.Lock()
	sp := e.presence.in(s)
	sp.live[id] = struct{}{}
	e.keepBeating(sp, 0)
	if !sp.written {
		nudge(sp.wake) // a goroutine started by maintenance writes now
	}
	e.presence.mu.Unlock()
	return func() {
		e.presence.mu.Lock()
		delete(sp.live, id)
		idle := len(sp.live) == 0 && !sp.maintained
		e.presence.mu.Unlock()
		if idle {
			nudge(sp.wake)
		}
	}
}

// runs reports whether this engine runs the challenge id in s now.
func (e *Engine) runs(s store, id string) bool {
	e.presence.mu.Lock()
	defer e.presence.mu.Unlock()
	sp, ok := e.presence.stores[storeID(s)]
	if !ok {
		return false
	}
	_, live := sp.live[id]
	return live
}

// maintained records whether the engine's maintenance runs in s: while it
// does, the heartbeat is kept even with no challenge in flight.
func (e *Engine) maintained(s store, on bool) {
	e.presence.mu.Lock()
	sp := e.presence.in(s)
	sp.maintained = on
	if on {
		e.keepBeating(sp, firstMaintenanceDelay)
	}
	e.presence.mu.Unlock()
	if !on {
		nudge(sp.wake)
	}
}

// keepBeating starts the heartbeat goroutine of sp, writing first after
// delay, if it is not running; e.presence.mu is held.
func (e *Engine) keepBeating(sp *storePresence, delay time.Duration) {
	if sp.beating {
		return
	}
	sp.beating = true
	if sp.started.IsZero() {
		sp.started = time.Now()
	}
	beaters.Add(1)
	go func() {
		defer beaters.Add(-1)
		// the engine's, not the work of the request that started it: it
		// does not carry that goroutine's profiler labels
		pprof.SetGoroutineLabels(context.Background())
		e.beat(sp, delay)
	}()
}

// beaters counts the heartbeat goroutines of the process.
var beaters atomic.Int64

// AwaitHeartbeatsStopped waits, at most timeout, until no engine of the
// process keeps a heartbeat (each stops once its maintenance was stopped
// and its last challenge ended, removing its record), and reports whether
// they all stopped. After it, none writes to storage.
func AwaitHeartbeatsStopped(timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for beaters.Load() > 0 {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

// beat writes the engine's heartbeat record in sp's store every
// heartbeatInterval while the engine runs challenges or maintenance there,
// and deletes it when it stops.
func (e *Engine) beat(sp *storePresence, delay time.Duration) {
	timer := time.NewTimer(delay)
	defer timer.Stop()
	wrote := false // by this goroutine
	for {
		select {
		case <-timer.C:
		case <-sp.wake:
		}
		e.presence.mu.Lock()
		s := sp.s
		if len(sp.live) == 0 && !sp.maintained {
			sp.beating = false
			if !wrote {
				e.presence.mu.Unlock()
				return // nothing written, nothing to remove
			}
			// taken before the lock is released: a goroutine started
			// after this one writes only once the record is deleted
			sp.writeMu.Lock()
			sp.written = false
			e.presence.mu.Unlock()
			ctx, cancel := context.WithTimeout(context.Background(), heartbeatWriteTimeout)
			if err := s.storage.Delete(ctx, s.ownerKey(e.owner)); err != nil && !isNotExist(err) && s.logger != nil {
				s.logger.Warn("removing this process's heartbeat record", zap.String("key", s.ownerKey(e.owner)), zap.Error(err))
			}
			cancel()
			sp.writeMu.Unlock()
			return
		}
		started := sp.started
		sp.written, wrote = true, true
		e.presence.mu.Unlock()

		sp.writeMu.Lock()
		ctx, cancel := context.WithTimeout(context.Background(), heartbeatWriteTimeout)
		err := writeHeartbeat(ctx, s, ownerRecord{Owner: e.owner, Started: started, Updated: time.Now()})
		cancel()
		sp.writeMu.Unlock()
		if err != nil && s.logger != nil {
			// other processes take this one for gone after heartbeatLapse
			s.logger.Warn("writing this process's heartbeat record", zap.String("key", s.ownerKey(e.owner)), zap.Error(err))
		}
		timer.Reset(heartbeatInterval)
	}
}

func writeHeartbeat(ctx context.Context, s store, rec ownerRecord) error {
	rec.Version = SchemaVersion
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	key := s.ownerKey(rec.Owner)
	if err := s.storage.Store(ctx, key, b); err != nil {
		return storageErr("storing heartbeat", key, err)
	}
	return nil
}

// readHeartbeats returns the heartbeat records in s, by owner. A record
// that does not decode is returned with a zero Updated: its process is
// taken for gone, and the record removed with the others.
func readHeartbeats(ctx context.Context, s store) (map[string]ownerRecord, error) {
	dir := path.Join(s.prefix(), ownersDir)
	keys, err := s.storage.List(ctx, dir, false)
	if isNotExist(err) {
		return map[string]ownerRecord{}, nil
	}
	if err != nil {
		return nil, storageErr("listing", dir, err)
	}
	out := make(map[string]ownerRecord, len(keys))
	for _, key := range keys {
		base := path.Base(key)
		if path.Ext(base) != ".json" {
			continue
		}
		owner := base[:len(base)-len(".json")]
		b, err := s.storage.Load(ctx, key)
		if isNotExist(err) {
			continue // removed since the listing
		}
		if err != nil {
			return nil, storageErr("loading", key, err)
		}
		var rec ownerRecord
		if json.Unmarshal(b, &rec) != nil || rec.Owner != owner {
			rec = ownerRecord{Owner: owner}
		}
		out[owner] = rec
	}
	return out, nil
}

// nudge wakes whoever waits on ch, without blocking.
func nudge(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
