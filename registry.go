package certflow

import (
	"context"
	"slices"
	"sync"

	"github.com/caddyserver/certmagic"

	"github.com/certflow/certflow/issuer"
)

// The source registry: which (storage, issuer key) pairs certflow issuer
// instances of this process use, so that the admin API knows which storages
// to read. Each instance registers in SetConfig (the storage is the
// policy's, known only then) and unregisters in Cleanup; the admin API reads
// the registry at request time, because its module is rebuilt on every
// config load before the apps are provisioned.
//
// The admin API reads storage, not the instances: every issuer key found in
// a registered storage is shown, so resources written by another node of a
// cluster, or under a CA no longer configured, are listed too.

var sourceRegistry = struct {
	mu     sync.Mutex
	byInst map[*Issuer]source
}{byInst: map[*Issuer]source{}}

// source is one storage and one issuer key in it.
type source struct {
	storage   certmagic.Storage
	issuerKey string // as stored: certmagic.StorageKeys.Safe applied
}

// registerSource records (or updates) the storage and issuer key an issuer
// instance uses.
func registerSource(inst *Issuer, storage certmagic.Storage, issuerKey string) {
	if inst == nil || storage == nil || issuerKey == "" {
		return
	}
	sourceRegistry.mu.Lock()
	defer sourceRegistry.mu.Unlock()
	sourceRegistry.byInst[inst] = source{storage: storage, issuerKey: certmagic.StorageKeys.Safe(issuerKey)}
}

// unregisterSource forgets an issuer instance (at Cleanup).
func unregisterSource(inst *Issuer) {
	sourceRegistry.mu.Lock()
	defer sourceRegistry.mu.Unlock()
	delete(sourceRegistry.byInst, inst)
}

// registeredSources returns the registered sources, without duplicates.
func registeredSources() []source {
	sourceRegistry.mu.Lock()
	defer sourceRegistry.mu.Unlock()
	out := make([]source, 0, len(sourceRegistry.byInst))
	for _, s := range sourceRegistry.byInst {
		out = append(out, s)
	}
	return dedupeSources(out)
}

func (s source) id() string { return issuer.StorageIdentity(s.storage) + "|" + s.issuerKey }

func (s source) reader() issuer.Reader { return issuer.NewReader(s.storage, s.issuerKey) }

// dedupeSources drops repeated (storage, issuer key) pairs and sorts the
// rest, for a stable order.
func dedupeSources(in []source) []source {
	seen := map[string]bool{}
	out := make([]source, 0, len(in))
	for _, s := range in {
		if id := s.id(); !seen[id] {
			seen[id] = true
			out = append(out, s)
		}
	}
	slices.SortFunc(out, func(a, b source) int {
		switch ai, bi := a.id(), b.id(); {
		case ai < bi:
			return -1
		case ai > bi:
			return 1
		}
		return 0
	})
	return out
}

// discoverSources returns the sources to read: for each distinct storage
// among the registered ones and extra, every issuer key certflow has
// resources under, plus the registered keys. A storage that cannot be
// listed keeps its registered keys and reports the error.
func discoverSources(ctx context.Context, extra ...certmagic.Storage) ([]source, error) {
	known := registeredSources()
	storages := map[string]certmagic.Storage{}
	var order []string
	add := func(s certmagic.Storage) {
		if s == nil {
			return
		}
		if id := issuer.StorageIdentity(s); storages[id] == nil {
			storages[id] = s
			order = append(order, id)
		}
	}
	for _, s := range known {
		add(s.storage)
	}
	for _, s := range extra {
		add(s)
	}
	all := append([]source(nil), known...)
	var firstErr error
	for _, id := range order {
		st := storages[id]
		keys, err := issuer.IssuerKeys(ctx, st)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		for _, k := range keys {
			all = append(all, source{storage: st, issuerKey: k})
		}
	}
	return dedupeSources(all), firstErr
}

// registeredIssuers returns the issuer instances that have a configuration
// (SetConfig was called) and are not cleaned up.
func registeredIssuers() []*Issuer {
	sourceRegistry.mu.Lock()
	defer sourceRegistry.mu.Unlock()
	out := make([]*Issuer, 0, len(sourceRegistry.byInst))
	for inst := range sourceRegistry.byInst {
		out = append(out, inst)
	}
	return out
}
