package issuer

import (
	"context"
	"path"

	"github.com/caddyserver/certmagic"
)

// The index lets status views list resources newest first, by name and by
// state, without reading (or even listing) every stored object. It is a set
// of empty marker keys, written in the background (see indexWriter) when a
// resource is created or reaches a final state:
//
//	certflow/<issuer key>/index/<kind>/name/<name>/<id>          one per resource
//	certflow/<issuer key>/index/<kind>/inflight/<time>/<id>      while not final
//	certflow/<issuer key>/index/<kind>/state/<state>/<time>/<id> once final
//
// <time> is hour/minute/second of creation, taken from the ID (IDs sort by
// creation time), so a page of a list reads a few small folders whatever
// the number of stored resources. Every resource is in the in-flight folder
// or in one final-state folder, so an unfiltered list merges those (a few
// walks) rather than keeping a marker of its own for every resource: each
// marker is a synced write on the file system.
// Markers are deleted with their resource; a stale marker is harmless, as
// queries check the resource itself.

const indexDir = "index"

func (s store) indexPrefix(kind string) string {
	return path.Join(s.prefix(), indexDir, kind)
}

func (s store) nameMarker(kind, name, id string) string {
	return path.Join(s.indexPrefix(kind), "name", certmagic.StorageKeys.Safe(name), certmagic.StorageKeys.Safe(id))
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

// timeBuckets are the folders an ID's marker goes in: its creation hour,
// minute and second ("20261127-14", "27", "19"), so no folder grows large
// even when thousands of resources are created in a minute.
func timeBuckets(id string) []string {
	const n = len("20060102-150405")
	if len(id) < n {
		return []string{"other", "00", "00"}
	}
	return []string{id[:11], id[11:13], id[13:15]}
}

// indexUnknown is the indexed state of a resource loaded from storage: its
// markers may have been lost with the process that wrote it (they are
// written late, see indexWriter), so its next save puts them all again.
const indexUnknown = "?"

// reindex updates the markers of a resource whose state went from `from`
// ("" when just created, indexUnknown when not known) to `to`. Only
// creation and reaching (or changing) a final state write anything.
func (s store) reindex(ctx context.Context, kind, id, name, from, to string) error {
	put := func(key string) error {
		if err := s.storage.Store(ctx, key, nil); err != nil {
			return storageErr("indexing", key, err)
		}
		return nil
	}
	del := func(key string) error {
		if err := s.storage.Delete(ctx, key); err != nil && !isNotExist(err) {
			return storageErr("unindexing", key, err)
		}
		return nil
	}
	wasFinal, isFinal := IsFinal(kind, from), IsFinal(kind, to)
	var ops []func() error
	if from == "" || from == indexUnknown {
		ops = append(ops, func() error { return put(s.nameMarker(kind, name, id)) })
		if !isFinal {
			ops = append(ops, func() error { return put(s.inflightMarker(kind, id)) })
		}
	}
	if isFinal && !(wasFinal && from == to) {
		ops = append(ops, func() error { return put(s.stateMarker(kind, to, id)) })
		switch {
		case wasFinal:
			ops = append(ops, func() error { return del(s.stateMarker(kind, from, id)) })
		case from != "":
			ops = append(ops, func() error { return del(s.inflightMarker(kind, id)) })
		}
	}
	if len(ops) == 0 {
		return nil
	}
	return parallel(ops...)
}

// unindex removes every marker of a resource (when it is deleted).
func (s store) unindex(ctx context.Context, kind, id, name, state string) {
	for _, key := range []string{s.nameMarker(kind, name, id), s.inflightMarker(kind, id), s.stateMarker(kind, state, id)} {
		_ = s.storage.Delete(ctx, key)
	}
}
