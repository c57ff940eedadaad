package issuer

import (
	"context"
	"errors"
	"fmt"
	"io/fs"

	"github.com/caddyserver/certmagic"
)

// certflow counts its own storage calls, so an operator can see what an
// issuance costs the shared storage of a cluster (a call to Redis is a few
// network round trips, a List reads a whole directory set) and notice a
// call whose count grows with the number of stored resources. Every storage
// value certflow is handed (the policy's) is wrapped once per config by
// CountStorageCalls, and everything certflow stores, loads, lists or locks
// goes through it: the workflow's resources, the background index writer,
// the maintenance, the account, the solvers' challenge tokens and the
// admin API's reads of the policies' storages (Caddy's global storage, when
// no policy uses it, is read bare). certmagic's own calls (certificates,
// its locks, the challenge answers it serves) are not counted: they do not
// go through the wrapper.

// StorageOp is a certmagic.Storage method.
type StorageOp uint8

// The storage methods, as counted.
const (
	StorageStore StorageOp = iota
	StorageLoad
	StorageDelete
	StorageExists
	StorageList
	StorageStat
	StorageLock
	StorageUnlock
	numStorageOps
)

var storageOpNames = [numStorageOps]string{"store", "load", "delete", "exists", "list", "stat", "lock", "unlock"}

func (op StorageOp) String() string {
	if op < numStorageOps {
		return storageOpNames[op]
	}
	return fmt.Sprintf("StorageOp(%d)", op)
}

// StorageOutcome is how a storage call ended.
type StorageOutcome uint8

// The outcomes of a storage call. A key that is not there is NotFound, not
// Error: it is the normal answer to many loads (and, on some backends, also
// what an unreachable store answers; see store.confirmAbsent).
const (
	StorageOK StorageOutcome = iota
	StorageNotFound
	StorageError
	// StorageBusy is a lock not taken because the caller stopped waiting
	// (its context ended): another process holds it. A caller that only
	// tries a lock (a sweep one process of a cluster runs) gets this
	// whenever it loses the race; it is no failure of the storage.
	StorageBusy
	numStorageOutcomes
)

var storageOutcomeNames = [numStorageOutcomes]string{"ok", "not_found", "error", "busy"}

func (o StorageOutcome) String() string {
	if o < numStorageOutcomes {
		return storageOutcomeNames[o]
	}
	return fmt.Sprintf("StorageOutcome(%d)", o)
}

// StorageOps returns every StorageOp, for metrics that create their series
// up front.
func StorageOps() []StorageOp {
	out := make([]StorageOp, numStorageOps)
	for i := range out {
		out[i] = StorageOp(i)
	}
	return out
}

// StorageOutcomes returns every StorageOutcome.
func StorageOutcomes() []StorageOutcome {
	out := make([]StorageOutcome, numStorageOutcomes)
	for i := range out {
		out[i] = StorageOutcome(i)
	}
	return out
}

// StorageObserver is an optional capability of an Observer: told about
// every storage call certflow makes through a storage wrapped by
// CountStorageCalls. It runs on the caller's goroutine for every call, so
// it MUST be cheap and safe for concurrent use (an atomic add, no lock).
type StorageObserver interface {
	StorageCalled(op StorageOp, outcome StorageOutcome)
}

// CountStorageCalls returns storage with every call reported to obs, if obs
// implements StorageObserver; otherwise storage itself. A storage wrapped
// already is re-wrapped around what it wraps, never twice.
//
// The wrapper passes every call through to the same storage value, so a
// lock is released through the value that took it (the Redis module keeps
// its held locks in the value). It implements certmagic.Storage only: the
// optional TryLocker and LockLeaseRenewer are not forwarded, as certflow
// uses neither (certmagic's own calls use the unwrapped value).
func CountStorageCalls(storage certmagic.Storage, obs Observer) certmagic.Storage {
	storage = UnwrapStorage(storage)
	so, ok := obs.(StorageObserver)
	if !ok || storage == nil {
		return storage
	}
	return &countingStorage{inner: storage, obs: so}
}

// UnwrapStorage returns the storage a CountStorageCalls wrapper wraps, or
// storage itself: for telling two storage values apart.
func UnwrapStorage(storage certmagic.Storage) certmagic.Storage {
	if c, ok := storage.(*countingStorage); ok {
		return c.inner
	}
	return storage
}

type countingStorage struct {
	inner certmagic.Storage
	obs   StorageObserver
}

// String names the wrapped storage, so that storageIdentity (one
// maintenance per storage) sees the same storage through every config's
// wrapper.
func (c *countingStorage) String() string {
	if s, ok := c.inner.(fmt.Stringer); ok {
		return fmt.Sprintf("%T:%s", c.inner, s.String())
	}
	return fmt.Sprintf("%T:%p", c.inner, c.inner)
}

func outcomeOf(err error) StorageOutcome {
	switch {
	case err == nil:
		return StorageOK
	case errors.Is(err, fs.ErrNotExist):
		return StorageNotFound
	default:
		return StorageError
	}
}

func (c *countingStorage) Store(ctx context.Context, key string, value []byte) error {
	err := c.inner.Store(ctx, key, value)
	c.obs.StorageCalled(StorageStore, outcomeOf(err))
	return err
}

func (c *countingStorage) Load(ctx context.Context, key string) ([]byte, error) {
	b, err := c.inner.Load(ctx, key)
	c.obs.StorageCalled(StorageLoad, outcomeOf(err))
	return b, err
}

func (c *countingStorage) Delete(ctx context.Context, key string) error {
	err := c.inner.Delete(ctx, key)
	c.obs.StorageCalled(StorageDelete, outcomeOf(err))
	return err
}

// Exists cannot tell an error from absence (the interface has no error):
// false counts as not_found.
func (c *countingStorage) Exists(ctx context.Context, key string) bool {
	ok := c.inner.Exists(ctx, key)
	outcome := StorageOK
	if !ok {
		outcome = StorageNotFound
	}
	c.obs.StorageCalled(StorageExists, outcome)
	return ok
}

func (c *countingStorage) List(ctx context.Context, path string, recursive bool) ([]string, error) {
	keys, err := c.inner.List(ctx, path, recursive)
	c.obs.StorageCalled(StorageList, outcomeOf(err))
	return keys, err
}

func (c *countingStorage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	info, err := c.inner.Stat(ctx, key)
	c.obs.StorageCalled(StorageStat, outcomeOf(err))
	return info, err
}

func (c *countingStorage) Lock(ctx context.Context, name string) error {
	err := c.inner.Lock(ctx, name)
	outcome := outcomeOf(err)
	if err != nil && ctx.Err() != nil {
		outcome = StorageBusy
	}
	c.obs.StorageCalled(StorageLock, outcome)
	return err
}

func (c *countingStorage) Unlock(ctx context.Context, name string) error {
	err := c.inner.Unlock(ctx, name)
	c.obs.StorageCalled(StorageUnlock, outcomeOf(err))
	return err
}

var _ certmagic.Storage = (*countingStorage)(nil)
