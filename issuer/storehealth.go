package issuer

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"path"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// Absence is not proof: some backends report an unreachable store as "not
// found", and a key written once can vanish (FLUSHDB, eviction, a Redis
// without persistence restarted, an operator deleting a folder). Before a
// missing key is acted on, the store must be known to answer: the sentinel
// reads back, or — when the sentinel itself is missing — a probe written
// and read back now does, and the sentinel is written again. Probes are
// rate-limited per store: a burst of missing keys after a FLUSHDB costs
// one probe per probeInterval, not one per request.

// probeInterval is how long a probe's verdict stands for the store.
const probeInterval = time.Second

// storeHealth is what this process last proved about one store.
type storeHealth struct {
	mu     sync.Mutex
	probed time.Time // when the last probe ran
	err    error     // its verdict: nil when the store answered
}

// StorageIdentity names a storage value well enough to tell two apart: two
// values of the same backend pointing at the same place (file_system
// storages with the same root, say) are the same storage, and so are a
// storage and certflow's counting wrapper of it.
func StorageIdentity(s certmagic.Storage) string {
	s = UnwrapStorage(s)
	if str, ok := s.(fmt.Stringer); ok {
		return fmt.Sprintf("%T:%s", s, str.String())
	}
	return fmt.Sprintf("%T:%p", s, s)
}

func (e *Engine) healthOf(storage certmagic.Storage, issuerKey string) *storeHealth {
	id := StorageIdentity(storage) + "|" + issuerKey
	if h, ok := e.health.Load(id); ok {
		return h.(*storeHealth)
	}
	h, _ := e.health.LoadOrStore(id, new(storeHealth))
	return h.(*storeHealth)
}

// confirmAbsent is called when a key was not found, before acting on its
// absence. It returns nil once the store is known to answer; otherwise a
// storage error naming the missing key.
func (s store) confirmAbsent(ctx context.Context, missing string) error {
	_, err := s.storage.Load(ctx, s.sentinelKey())
	if err == nil {
		return nil
	}
	if !isNotExist(err) {
		return fmt.Errorf("%w: %s reads as missing, but the store is not answering (sentinel %s: %w)",
			ErrStorage, missing, s.sentinelKey(), err)
	}
	if err := s.probe(ctx); err != nil {
		return fmt.Errorf("%w: %s reads as missing, and the sentinel %s too, and the store does not answer a probe: %w",
			ErrStorage, missing, s.sentinelKey(), err)
	}
	return nil
}

// probe proves that the store answers by writing a random value and
// reading it back, then writes the sentinel again. Its verdict stands for
// probeInterval. A store without health tracking (a Reader's) never
// probes: reads have no side effects, so the absence stays unconfirmed.
func (s store) probe(ctx context.Context) error {
	h := s.health
	if h == nil {
		return fmt.Errorf("the sentinel is missing and this reader does not write to find out why")
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if time.Since(h.probed) < probeInterval {
		return h.err
	}
	h.err = s.writeReadBack(ctx)
	h.probed = time.Now()
	if h.err == nil && s.logger != nil {
		s.logger.Warn("the sentinel of certflow's storage was missing; the store answers a probe, so it was written again",
			zap.String("key", s.sentinelKey()))
	}
	return h.err
}

func (s store) writeReadBack(ctx context.Context) error {
	var b [16]byte
	_, _ = rand.Read(b[:])
	value := []byte(hex.EncodeToString(b[:]))
	key := path.Join(s.prefix(), "probe-"+string(value[:8]))
	if err := s.storage.Store(ctx, key, value); err != nil {
		return fmt.Errorf("writing probe %s: %w", key, err)
	}
	got, err := s.storage.Load(ctx, key)
	_ = s.storage.Delete(context.WithoutCancel(ctx), key)
	if err != nil {
		return fmt.Errorf("reading probe %s back: %w", key, err)
	}
	if !bytes.Equal(got, value) {
		return fmt.Errorf("probe %s read back other bytes than were written", key)
	}
	if err := s.storage.Store(ctx, s.sentinelKey(), []byte("certflow")); err != nil {
		return fmt.Errorf("writing the sentinel %s again: %w", s.sentinelKey(), err)
	}
	return nil
}
