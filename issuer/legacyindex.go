package issuer

import (
	"context"
	"path"

	"github.com/caddyserver/certmagic"
)

// The previous versions' index: an empty marker key per resource, by name
// and by state, under index/ (the catalog replaced it, catalog.go):
//
//	certflow/<issuer key>/index/<kind>/name/<name>/<id>
//	certflow/<issuer key>/index/<kind>/inflight/<hour>/<minute>/<second>/<id>
//	certflow/<issuer key>/index/<kind>/state/<state>/<hour>/<minute>/<second>/<id>
//
// This version writes none, but reads them (the resources of a previous
// version, and of a node of the previous version during a rolling upgrade,
// are listed by them) wherever a kind's folder exists, and deletes a
// resource's markers with it. Once maintenance finds no marker left, the
// folder goes (trimLegacyIndex).

const indexDir = "index"

func (s store) indexRoot() string { return path.Join(s.prefix(), indexDir) }

func (s store) indexPrefix(kind string) string {
	return path.Join(s.indexRoot(), kind)
}

func (s store) nameMarkerDir(kind, name string) string {
	return path.Join(s.indexPrefix(kind), "name", certmagic.StorageKeys.Safe(name))
}

func (s store) nameMarker(kind, name, id string) string {
	return path.Join(s.nameMarkerDir(kind, name), certmagic.StorageKeys.Safe(id))
}

func (s store) inflightMarker(kind, id string) string {
	return path.Join(append(append([]string{s.inflightDir(kind)}, timeBuckets(id)...), certmagic.StorageKeys.Safe(id))...)
}

func (s store) inflightDir(kind string) string { return path.Join(s.indexPrefix(kind), "inflight") }

func (s store) stateMarker(kind, state, id string) string {
	return path.Join(append(append([]string{s.stateDir(kind, state)}, timeBuckets(id)...), certmagic.StorageKeys.Safe(id))...)
}

func (s store) stateDir(kind, state string) string {
	return path.Join(s.indexPrefix(kind), "state", certmagic.StorageKeys.Safe(state))
}

// timeBuckets are the folders a legacy marker is in: its resource's
// creation hour, minute and second ("20261127-14", "27", "19").
func timeBuckets(id string) []string {
	const n = len("20060102-150405")
	if len(id) < n {
		return []string{"other", "00", "00"}
	}
	return []string{id[:11], id[11:13], id[13:15]}
}

// hasLegacyIndex reports whether markers of kind may exist: its folder
// lists anything. A storage error reads as "may exist".
func (s store) hasLegacyIndex(ctx context.Context, kind string) bool {
	keys, err := s.storage.List(ctx, s.indexPrefix(kind), false)
	if isNotExist(err) {
		return false
	}
	return err != nil || len(keys) > 0
}

// legacyKinds returns the kinds whose markers may exist (their folder
// exists): one listing for all of them. A storage error reads as "all
// may".
func (s store) legacyKinds(ctx context.Context) map[string]bool {
	keys, err := s.storage.List(ctx, s.indexRoot(), false)
	if isNotExist(err) || (err == nil && len(keys) == 0) {
		return map[string]bool{} // (the Redis module lists a missing folder as empty)
	}
	if err != nil {
		return map[string]bool{KindRequest: true, KindOrder: true, KindChallenge: true, indexDir: true}
	}
	out := map[string]bool{indexDir: true} // the root exists
	for _, k := range keys {
		out[path.Base(k)] = true
	}
	return out
}

// unindex removes every legacy marker of a resource (when it is deleted).
func (s store) unindex(ctx context.Context, kind, id, name, state string) {
	for _, key := range []string{s.nameMarker(kind, name, id), s.inflightMarker(kind, id), s.stateMarker(kind, state, id)} {
		_ = s.storage.Delete(ctx, key)
	}
}

// trimLegacyIndex removes the legacy index folder once no marker is left
// in it (only empty folders, which a file system keeps): listing an empty
// tree on every page would cost for nothing. A backend that cannot delete
// a folder leaves it; its listing is empty anyway.
func (s store) trimLegacyIndex(ctx context.Context) (bool, error) {
	keys, err := s.storage.List(ctx, s.indexRoot(), true)
	if isNotExist(err) {
		return false, nil
	}
	if err != nil {
		return false, storageErr("listing", s.indexRoot(), err)
	}
	for _, k := range keys {
		if info, err := s.storage.Stat(ctx, k); err == nil && info.IsTerminal {
			return false, nil // a marker is left
		}
	}
	if err := s.storage.Delete(ctx, s.indexRoot()); err != nil && !isNotExist(err) {
		return false, storageErr("deleting", s.indexRoot(), err)
	}
	return true, nil
}
