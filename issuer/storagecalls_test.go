package issuer

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
)

// countingObserver is an Observer with the StorageObserver capability.
type countingObserver struct {
	nopObserver
	calls [numStorageOps][numStorageOutcomes]atomic.Int64
}

func (c *countingObserver) StorageCalled(op StorageOp, outcome StorageOutcome) {
	c.calls[op][outcome].Add(1)
}

func (c *countingObserver) get(op StorageOp, outcome StorageOutcome) int64 {
	return c.calls[op][outcome].Load()
}

func (c *countingObserver) total() int64 {
	var n int64
	for op := range c.calls {
		for o := range c.calls[op] {
			n += c.calls[op][o].Load()
		}
	}
	return n
}

func TestCountStorageCallsOutcomes(t *testing.T) {
	dir := t.TempDir()
	fs := &certmagic.FileStorage{Path: dir}
	obs := &countingObserver{}
	s := CountStorageCalls(fs, obs)
	ctx := context.Background()

	type want struct {
		op      StorageOp
		outcome StorageOutcome
	}
	step := func(w want, f func() error) {
		t.Helper()
		before := obs.get(w.op, w.outcome)
		totalBefore := obs.total()
		_ = f()
		if got := obs.get(w.op, w.outcome) - before; got != 1 {
			t.Errorf("%s/%s counted %d times, want once", w.op, w.outcome, got)
		}
		if got := obs.total() - totalBefore; got != 1 {
			t.Errorf("%s: %d calls counted in all, want 1", w.op, got)
		}
	}

	step(want{StorageStore, StorageOK}, func() error { return s.Store(ctx, "a/b.json", []byte("x")) })
	step(want{StorageLoad, StorageOK}, func() error { _, err := s.Load(ctx, "a/b.json"); return err })
	step(want{StorageLoad, StorageNotFound}, func() error { _, err := s.Load(ctx, "a/missing.json"); return err })
	// a directory cannot be read as a value: an error, not "not found"
	step(want{StorageLoad, StorageError}, func() error { _, err := s.Load(ctx, "a"); return err })
	step(want{StorageStat, StorageOK}, func() error { _, err := s.Stat(ctx, "a/b.json"); return err })
	step(want{StorageStat, StorageNotFound}, func() error { _, err := s.Stat(ctx, "nope"); return err })
	step(want{StorageExists, StorageOK}, func() error { s.Exists(ctx, "a/b.json"); return nil })
	step(want{StorageExists, StorageNotFound}, func() error { s.Exists(ctx, "nope"); return nil })
	step(want{StorageList, StorageOK}, func() error { _, err := s.List(ctx, "a", false); return err })
	step(want{StorageList, StorageNotFound}, func() error { _, err := s.List(ctx, "nope", false); return err })
	// a value where a directory must be: storing under it fails
	step(want{StorageStore, StorageError}, func() error { return s.Store(ctx, "a/b.json/c", []byte("x")) })
	step(want{StorageDelete, StorageOK}, func() error { return s.Delete(ctx, "a/b.json") })
	step(want{StorageLock, StorageOK}, func() error { return s.Lock(ctx, "certflow_test_lock") })
	step(want{StorageUnlock, StorageOK}, func() error { return s.Unlock(ctx, "certflow_test_lock") })
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	// another holder's lock and a wait the caller ended: busy, not a
	// failure of the storage
	if err := fs.Lock(ctx, "held"); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = fs.Unlock(ctx, "held") }()
	step(want{StorageLock, StorageBusy}, func() error { return s.Lock(cancelled, "held") })

	// what the wrapper returns is what the storage returned
	if err := s.Store(ctx, "v", []byte("value")); err != nil {
		t.Fatal(err)
	}
	if b, err := s.Load(ctx, "v"); err != nil || string(b) != "value" {
		t.Fatalf("Load through the wrapper: %q, %v", b, err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "v")); err != nil || string(b) != "value" {
		t.Fatalf("the wrapped storage holds %q, %v", b, err)
	}
}

func TestCountStorageCallsWrapping(t *testing.T) {
	fs := &certmagic.FileStorage{Path: t.TempDir()}
	// an observer without the capability: the storage itself, no wrapper
	if got := CountStorageCalls(fs, nopObserver{}); got != certmagic.Storage(fs) {
		t.Errorf("without a StorageObserver: got %T, want the storage itself", got)
	}
	if got := CountStorageCalls(fs, nil); got != certmagic.Storage(fs) {
		t.Errorf("without an observer: got %T, want the storage itself", got)
	}
	obs := &countingObserver{}
	w1 := CountStorageCalls(fs, obs)
	w2 := CountStorageCalls(w1, obs)
	if UnwrapStorage(w2) != certmagic.Storage(fs) {
		t.Errorf("wrapping a wrapper wraps twice: %T inside", UnwrapStorage(w2))
	}
	_, _ = w2.Load(context.Background(), "x")
	if n := obs.total(); n != 1 {
		t.Errorf("one call through a re-wrapped storage counted %d times", n)
	}
	// one maintenance per storage: every config's wrapper of the same
	// storage has the same identity
	w3 := CountStorageCalls(fs, &countingObserver{})
	a := StorageIdentity(w1)
	b := StorageIdentity(w3)
	if a != b {
		t.Errorf("two wrappers of one storage have identities %q and %q", a, b)
	}
	other := StorageIdentity(CountStorageCalls(&certmagic.FileStorage{Path: t.TempDir()}, obs))
	if other == a {
		t.Errorf("two storages have the same identity %q", a)
	}
}

// TestCountStorageCallsConcurrent is for -race: the wrapper keeps no state
// of its own.
func TestCountStorageCallsConcurrent(t *testing.T) {
	obs := &countingObserver{}
	s := CountStorageCalls(&certmagic.FileStorage{Path: t.TempDir()}, obs)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const workers, each = 8, 50
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				key := filepath.Join("k", string(rune('a'+w)), string(rune('a'+i%26)))
				_ = s.Store(ctx, key, []byte("x"))
				_, _ = s.Load(ctx, key)
			}
		}()
	}
	wg.Wait()
	if got := obs.get(StorageStore, StorageOK) + obs.get(StorageLoad, StorageOK); got != 2*workers*each {
		t.Errorf("counted %d stores and loads, want %d", got, 2*workers*each)
	}
}

func TestStorageOpNames(t *testing.T) {
	want := []string{"store", "load", "delete", "exists", "list", "stat", "lock", "unlock"}
	ops := StorageOps()
	if len(ops) != len(want) {
		t.Fatalf("%d ops, want %d", len(ops), len(want))
	}
	for i, op := range ops {
		if op.String() != want[i] {
			t.Errorf("op %d is %q, want %q", i, op, want[i])
		}
	}
	var outs []string
	for _, o := range StorageOutcomes() {
		outs = append(outs, o.String())
	}
	if len(outs) != 4 || outs[0] != "ok" || outs[1] != "not_found" || outs[2] != "error" || outs[3] != "busy" {
		t.Errorf("outcomes %v", outs)
	}
}

// BenchmarkCountStorageCalls measures what the wrapper adds to a call: one
// interface call and an atomic add.
func BenchmarkCountStorageCalls(b *testing.B) {
	ms := newMemStorage()
	ctx := context.Background()
	_ = ms.Store(ctx, "k", []byte("v"))
	for _, bc := range []struct {
		name string
		s    certmagic.Storage
	}{{"bare", ms}, {"counted", CountStorageCalls(ms, &countingObserver{})}} {
		b.Run(bc.name, func(b *testing.B) {
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					_, _ = bc.s.Load(ctx, "k")
				}
			})
		})
	}
}
