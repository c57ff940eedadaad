// Package countstore is the storage module caddy.storage.certflow_bench_counting:
// another storage module (file_system, redis, …) whose every call is counted
// by operation and by the area of the key it touched, and served as the
// metric certflow_bench_storage_calls_total{operation,area} on Caddy's
// /metrics. The benchmark runs stock Caddy and certflow on it, so the
// storage work of both issuers (certmagic's own calls included, which
// certflow's certflow_storage_operations_total does not count) is measured
// the same way in the same run.
//
//	"storage": {"module": "certflow_bench_counting", "inner": {"module": "redis", …}}
//
// The wrapper forwards every call to the inner storage value as is, and
// implements certmagic.TryLocker exactly when the inner storage does, so
// certmagic takes the same paths (its ARI lock, for one) with or without it.
package countstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"github.com/prometheus/client_golang/prometheus"
)

func init() {
	caddy.RegisterModule(Storage{})
}

// MetricName is the counter of storage calls, by operation and area.
const MetricName = "certflow_bench_storage_calls_total"

// Operations, as the metric's operation label.
const (
	OpStore   = "store"
	OpLoad    = "load"
	OpDelete  = "delete"
	OpExists  = "exists"
	OpList    = "list"
	OpStat    = "stat"
	OpLock    = "lock"
	OpTryLock = "trylock"
	OpUnlock  = "unlock"
)

// Operations lists every operation label, in report order.
var Operations = []string{OpStore, OpLoad, OpDelete, OpList, OpExists, OpStat, OpLock, OpTryLock, OpUnlock}

// calls is process-wide: its values survive config reloads, and each
// config load registers it in its own registry.
var calls = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: MetricName,
	Help: "Storage calls through the benchmark's counting storage, by operation and key area.",
}, []string{"operation", "area"})

// Area names the part of the storage a key belongs to: "certificates",
// "challenge_tokens", "acme" (accounts), "certflow/<folder>" for certflow's
// own records (requests, orders, challenges, names, index, …), "locks" for
// lock names, "other" for the rest.
func Area(key string) string {
	parts := strings.Split(strings.Trim(key, "/"), "/")
	switch parts[0] {
	case "certificates":
		return "certificates"
	case "acme":
		if len(parts) >= 3 && parts[2] == "challenge_tokens" {
			return "challenge_tokens"
		}
		return "acme"
	case "certflow":
		if len(parts) >= 4 {
			return "certflow/" + parts[2]
		}
		if len(parts) == 3 {
			return "certflow/" + strings.TrimSuffix(parts[2], ".json")
		}
		return "certflow"
	}
	return "other"
}

// Storage is the module's config.
type Storage struct {
	// InnerRaw is the storage module whose calls are counted.
	InnerRaw json.RawMessage `json:"inner,omitempty" caddy:"namespace=caddy.storage inline_key=module"`

	inner certmagic.Storage
}

// CaddyModule returns the Caddy module information.
func (Storage) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "caddy.storage.certflow_bench_counting",
		New: func() caddy.Module { return new(Storage) },
	}
}

// Provision loads the inner storage module and registers the metric.
func (s *Storage) Provision(ctx caddy.Context) error {
	if s.InnerRaw == nil {
		return errors.New("certflow_bench_counting storage: inner is required")
	}
	mod, err := ctx.LoadModule(s, "InnerRaw")
	if err != nil {
		return fmt.Errorf("certflow_bench_counting storage: loading the inner storage: %w", err)
	}
	conv, ok := mod.(caddy.StorageConverter)
	if !ok {
		return fmt.Errorf("certflow_bench_counting storage: %T is not a storage module", mod)
	}
	if s.inner, err = conv.CertMagicStorage(); err != nil {
		return fmt.Errorf("certflow_bench_counting storage: %w", err)
	}
	if err := ctx.GetMetricsRegistry().Register(calls); err != nil {
		var already prometheus.AlreadyRegisteredError
		if !errors.As(err, &already) {
			return fmt.Errorf("certflow_bench_counting storage: registering its metric: %w", err)
		}
	}
	return nil
}

// CertMagicStorage returns the counting wrapper of the inner storage.
func (s *Storage) CertMagicStorage() (certmagic.Storage, error) {
	if s.inner == nil {
		return nil, errors.New("certflow_bench_counting storage: not provisioned")
	}
	return Wrap(s.inner), nil
}

// Wrap returns inner with every call counted; a certmagic.TryLocker when
// inner is one.
func Wrap(inner certmagic.Storage) certmagic.Storage {
	c := &counting{inner: inner}
	if tl, ok := inner.(certmagic.TryLocker); ok {
		return &countingTryLocker{counting: c, tl: tl}
	}
	return c
}

type counting struct {
	inner certmagic.Storage
}

func count(op, area string) { calls.WithLabelValues(op, area).Inc() }

// String names the inner storage, so that two wrappers of the same storage
// are told apart from two storages by what they print.
func (c *counting) String() string {
	if s, ok := c.inner.(fmt.Stringer); ok {
		return "certflow_bench_counting:" + s.String()
	}
	return fmt.Sprintf("certflow_bench_counting:%T:%p", c.inner, c.inner)
}

func (c *counting) Store(ctx context.Context, key string, value []byte) error {
	count(OpStore, Area(key))
	return c.inner.Store(ctx, key, value)
}

func (c *counting) Load(ctx context.Context, key string) ([]byte, error) {
	count(OpLoad, Area(key))
	return c.inner.Load(ctx, key)
}

func (c *counting) Delete(ctx context.Context, key string) error {
	count(OpDelete, Area(key))
	return c.inner.Delete(ctx, key)
}

func (c *counting) Exists(ctx context.Context, key string) bool {
	count(OpExists, Area(key))
	return c.inner.Exists(ctx, key)
}

func (c *counting) List(ctx context.Context, path string, recursive bool) ([]string, error) {
	count(OpList, Area(path))
	return c.inner.List(ctx, path, recursive)
}

func (c *counting) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	count(OpStat, Area(key))
	return c.inner.Stat(ctx, key)
}

func (c *counting) Lock(ctx context.Context, name string) error {
	count(OpLock, "locks")
	return c.inner.Lock(ctx, name)
}

func (c *counting) Unlock(ctx context.Context, name string) error {
	count(OpUnlock, "locks")
	return c.inner.Unlock(ctx, name)
}

type countingTryLocker struct {
	*counting
	tl certmagic.TryLocker
}

func (c *countingTryLocker) TryLock(ctx context.Context, name string) (bool, error) {
	count(OpTryLock, "locks")
	return c.tl.TryLock(ctx, name)
}

// Interface guards.
var (
	_ caddy.Provisioner      = (*Storage)(nil)
	_ caddy.StorageConverter = (*Storage)(nil)
	_ certmagic.Storage      = (*counting)(nil)
	_ certmagic.TryLocker    = (*countingTryLocker)(nil)
)
