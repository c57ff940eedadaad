package issuer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// store reads and writes certflow's resources in a certmagic.Storage under
// certflow/<issuer key>/. Each resource is one JSON object with a schema
// version, written whole by a single Store call, so a reader sees either the
// old or the new object, never a mix. Writers of a name's resources run inside
// certmagic's issue_cert_<name> lock, which makes them the only writer.
type store struct {
	storage   certmagic.Storage
	issuerKey string
	logger    *zap.Logger  // may be nil
	health    *storeHealth // nil for readers: they never probe (storehealth.go)
}

// ErrStorage marks a failure of the storage itself; the step is retried.
var ErrStorage = errors.New("storage error")

// ErrCorrupt marks a stored resource that cannot be decoded or has an
// older schema version; the workflow sets it aside and starts clean.
var ErrCorrupt = errors.New("corrupt stored resource")

func (s store) prefix() string {
	return path.Join("certflow", certmagic.StorageKeys.Safe(s.issuerKey))
}

func (s store) key(kind, id string) string {
	return path.Join(s.prefix(), kind, certmagic.StorageKeys.Safe(id)+".json")
}

func (s store) sentinelKey() string { return path.Join(s.prefix(), "sentinel") }

// load decodes the resource kind/id into v, for the workflow. A missing
// resource returns an error satisfying errors.Is(err, fs.ErrNotExist); one
// written by a newer certflow is left in place and returns ErrNewerSchema
// (readonly.go); a resource that does not decode, has an older schema
// version or is not the resource of its key, or that the storage cannot
// return while it answers (corrupt.go), is moved aside and returns
// ErrCorrupt. Reads that must change nothing use inspect instead.
func (s store) load(ctx context.Context, kind, id string, v any) error {
	key := s.key(kind, id)
	b, err := s.storage.Load(ctx, key)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("loading %s: %w", key, fs.ErrNotExist)
	}
	if err != nil {
		return s.unreadable(ctx, key, err) // a storage error, or a value it cannot return (corrupt.go)
	}
	if err := decodeResource(kind, id, b, v); err != nil {
		if errors.Is(err, ErrNewerSchema) {
			return fmt.Errorf("%s: %w", key, err)
		}
		return s.setAside(ctx, key, b, err)
	}
	return nil
}

// setAside keeps a corrupt resource under corrupt/ for an operator to look
// at, removes it from its place so the workflow can start clean, and reports
// both keys.
func (s store) setAside(ctx context.Context, key string, b []byte, cause error) error {
	aside := path.Join(s.prefix(), "corrupt", time.Now().UTC().Format(idLayout)+"-"+path.Base(key))
	if err := s.storage.Store(ctx, aside, b); err != nil {
		return fmt.Errorf("%w: %s: %w (could not set it aside: %w)", ErrCorrupt, key, cause, err)
	}
	if err := s.storage.Delete(ctx, key); err != nil {
		return fmt.Errorf("%w: %s: %w (copied to %s, but could not remove it: %w)", ErrCorrupt, key, cause, aside, err)
	}
	return fmt.Errorf("%w: %s: %w (set aside as %s)", ErrCorrupt, key, cause, aside)
}

// save writes the resource whole.
func (s store) save(ctx context.Context, kind, id string, v any) error {
	key := s.key(kind, id)
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encoding %s: %w", key, err)
	}
	if err := s.storage.Store(ctx, key, b); err != nil {
		return fmt.Errorf("%w: storing %s: %w", ErrStorage, key, err)
	}
	return nil
}

func (s store) delete(ctx context.Context, kind, id string) error {
	key := s.key(kind, id)
	if err := s.storage.Delete(ctx, key); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: deleting %s: %w", ErrStorage, key, err)
	}
	return nil
}

// list returns the IDs of the stored resources of a kind, oldest first.
func (s store) list(ctx context.Context, kind string) ([]string, error) {
	dir := path.Join(s.prefix(), kind)
	keys, err := s.storage.List(ctx, dir, false)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: listing %s: %w", ErrStorage, dir, err)
	}
	ids := make([]string, 0, len(keys))
	for _, k := range keys {
		base := path.Base(k)
		if path.Ext(base) == ".json" {
			ids = append(ids, base[:len(base)-len(".json")])
		}
	}
	slices.Sort(ids)
	return ids, nil
}

func isNotExist(err error) bool { return errors.Is(err, fs.ErrNotExist) }

func storageErr(step, key string, err error) error {
	return fmt.Errorf("%w: %s %s: %w", ErrStorage, step, key, err)
}

// saveResource writes a resource under its own key; its catalog entry
// follows in the background (catalogwriter.go).
func (s store) saveResource(ctx context.Context, kind, id, name, state string, v any) error {
	if err := s.save(ctx, kind, id, v); err != nil {
		return err
	}
	catalog.submit(s, kind, id, name, state, "")
	return nil
}

// parallel runs fns concurrently and joins their errors. Used for storage
// writes that do not depend on each other, so an issuance waits for one
// write's latency instead of their sum.
func parallel(fns ...func() error) error {
	if len(fns) == 1 {
		return fns[0]()
	}
	errs := make([]error, len(fns))
	var wg sync.WaitGroup
	for i, fn := range fns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = fn()
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// isStorageError reports whether err is a failure of the storage itself.
func isStorageError(err error) bool { return errors.Is(err, ErrStorage) }
