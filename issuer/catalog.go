package issuer

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"
)

// The catalog lets the status views list resources newest first, by kind
// and by state, and maintenance find the challenges in flight, without a
// key per resource: each process (a writer, with an ID of its own) keeps
// records of many entries, one entry per resource (its kind, ID, name,
// state, and where it is stored), rewritten in the background
// (catalogwriter.go) a couple of seconds after a change:
//
//	certflow/<issuer key>/catalog/<YYYYMMDD-HH>/<first ID>_<writer>.json
//
// A record holds resources of one hour of creation (the time in their ID),
// from its first ID up to the next record of the same writer in that hour
// (or the end of the hour): the "window" its name and its neighbours' names
// tell without reading it. A writer starts a new record when the last one
// has catalogRecordSize entries, so a burst of thousands of issuances in a
// minute still makes small records, and a quiet hour one. A reader lists an
// hour's folder, works out every record's window from the names, and reads
// the records newest window first, offering IDs newest first: a page reads
// the few records it needs, whatever the number of stored resources.
//
// An entry says where its resource is: under its own key (requests/,
// orders/, challenges/), in the record of the CertificateRequest it
// belongs to (a finished issuance stores its order and challenges with its
// request: one write), or in its name's record (the request and order in
// flight). Entries are written late (up to catalogDelay) and may be
// stale: a reader checks the resource itself. Two processes may hold an
// entry of one resource (a resumed order); the one written last wins.
//
// Previous versions kept an empty marker key per resource and state
// (index/, legacyindex.go); those are still read, and deleted with their
// resources.

const catalogDir = "catalog"

// catalogRecordSize is the number of entries after which a writer starts a
// new record (entries that arrive late for an older window still go to
// the record of that window).
const catalogRecordSize = 500

// catalogEntry is one resource in the catalog.
type catalogEntry struct {
	// Kind is catalogKinds' code of the resource's kind.
	Kind  string `json:"k"`
	ID    string `json:"id"`
	Name  string `json:"n,omitempty"`
	State string `json:"s"`
	// In is where the resource is stored: "" under its own key,
	// storedInName in its name's record, else the ID of the
	// CertificateRequest whose record holds it.
	In string `json:"in,omitempty"`
	// At is when the entry was made (Unix milliseconds): of two entries
	// of one resource (two writers), the later wins.
	At int64 `json:"at"`
}

// storedInName is catalogEntry.In of a resource stored in its name's
// record (a request or an order in flight).
const storedInName = "name"

// catalogKinds are the entries' codes of the kinds.
var catalogKinds = map[string]string{KindRequest: "r", KindOrder: "o", KindChallenge: "c"}

func catalogKind(kind string) string { return catalogKinds[kind] }

// key identifies the entry's resource in a record.
func (e catalogEntry) key() string { return e.Kind + "/" + e.ID }

// catalogRecord is a record as stored.
type catalogRecord struct {
	Version int            `json:"version"`
	Writer  string         `json:"writer"`
	Start   string         `json:"start"`
	Entries []catalogEntry `json:"entries"`
}

// catalogHour is the folder of a creation hour: "20261127-14".
func catalogHour(id string) string {
	const n = len("20060102-15")
	if len(id) < n {
		return "other"
	}
	return id[:n]
}

func (s store) catalogRoot() string { return path.Join(s.prefix(), catalogDir) }

func (s store) catalogHourDir(hour string) string { return path.Join(s.catalogRoot(), hour) }

func (s store) catalogKey(hour, start, writer string) string {
	return path.Join(s.catalogHourDir(hour), start+"_"+writer+".json")
}

// catalogRecordRef is a record known by its key: its hour, its first ID
// and its writer.
type catalogRecordRef struct {
	key, hour, start, writer string
	// end is where its window ends (exclusive): the next start of the
	// same writer in the hour, or "" for the end of the hour.
	end string
}

// parseCatalogKey reads a record's hour, start and writer from its key.
func parseCatalogKey(key string) (catalogRecordRef, bool) {
	base := path.Base(key)
	name, ok := strings.CutSuffix(base, ".json")
	if !ok {
		return catalogRecordRef{}, false
	}
	start, writer, ok := strings.Cut(name, "_")
	if !ok || start == "" || writer == "" {
		return catalogRecordRef{}, false
	}
	return catalogRecordRef{key: key, hour: path.Base(path.Dir(key)), start: start, writer: writer}, true
}

// windows sets every record's end from its writer's next record, and
// returns the records sorted by the end of their window, latest first
// (records whose window runs to the end of the hour first).
func windows(refs []catalogRecordRef) []catalogRecordRef {
	byWriter := map[string][]int{}
	for i, r := range refs {
		byWriter[r.writer] = append(byWriter[r.writer], i)
	}
	for _, idx := range byWriter {
		slices.SortFunc(idx, func(a, b int) int { return cmp.Compare(refs[a].start, refs[b].start) })
		for j, i := range idx {
			refs[i].end = ""
			if j+1 < len(idx) {
				refs[i].end = refs[idx[j+1]].start
			}
		}
	}
	out := slices.Clone(refs)
	slices.SortFunc(out, func(a, b catalogRecordRef) int {
		switch {
		case a.end == b.end:
			return cmp.Compare(b.start, a.start)
		case a.end == "":
			return -1
		case b.end == "":
			return 1
		}
		return cmp.Compare(b.end, a.end)
	})
	return out
}

// listCatalogHours returns the catalog's hour folders, latest first.
func (s store) listCatalogHours(ctx context.Context) ([]string, error) {
	keys, err := s.storage.List(ctx, s.catalogRoot(), false)
	if isNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, storageErr("listing", s.catalogRoot(), err)
	}
	hours := make([]string, 0, len(keys))
	for _, k := range keys {
		hours = append(hours, path.Base(k))
	}
	slices.Sort(hours)
	slices.Reverse(hours)
	return hours, nil
}

// listCatalogRecords returns the records of an hour, with their windows.
func (s store) listCatalogRecords(ctx context.Context, hour string) ([]catalogRecordRef, error) {
	dir := s.catalogHourDir(hour)
	keys, err := s.storage.List(ctx, dir, false)
	if isNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, storageErr("listing", dir, err)
	}
	refs := make([]catalogRecordRef, 0, len(keys))
	for _, k := range keys {
		if r, ok := parseCatalogKey(k); ok {
			refs = append(refs, r)
		}
	}
	return windows(refs), nil
}

// loadCatalogRecord reads a record; one that does not decode, or that a
// newer certflow wrote, reads as empty (its entries are not this
// binary's to interpret; the resources are still found by the full
// listings of maintenance).
func (s store) loadCatalogRecord(ctx context.Context, key string) (catalogRecord, error) {
	b, err := s.storage.Load(ctx, key)
	if err != nil {
		if isNotExist(err) {
			return catalogRecord{}, err
		}
		return catalogRecord{}, storageErr("loading", key, err)
	}
	var rec catalogRecord
	if json.Unmarshal(b, &rec) != nil || rec.Version != SchemaVersion {
		return catalogRecord{}, nil
	}
	return rec, nil
}

// catalogBook is one writer's records of one store, in memory: the writer
// is the only one that writes them, so it rewrites them whole from here.
type catalogBook struct {
	s     store
	hours map[string]*catalogHourBook
}

// catalogHourBook is the writer's records of one hour, sorted by start.
type catalogHourBook struct {
	records []*catalogSheet
	// seen is when an update last touched the hour, for eviction.
	seen time.Time
}

// catalogSheet is one record being kept: its entries by catalogEntry.key.
type catalogSheet struct {
	start   string
	entries map[string]catalogEntry
	max     string // the largest ID in it
	loaded  bool   // its stored entries were read (or it is new)
	dirty   bool   // changed since it was last written
	written bool   // it is in storage (under its start): its start is fixed
}

func newCatalogBook(s store) *catalogBook {
	return &catalogBook{s: s, hours: map[string]*catalogHourBook{}}
}

// apply puts an entry in the record whose window holds its ID, starting
// a record where needed, and reports an error only when an existing record
// of this writer had to be read and could not be.
func (b *catalogBook) apply(ctx context.Context, writer string, e catalogEntry, now time.Time) error {
	hour := catalogHour(e.ID)
	hb, err := b.hour(ctx, writer, hour)
	if err != nil {
		return err
	}
	hb.seen = now
	sheet := hb.place(e.ID)
	if !sheet.loaded {
		rec, err := b.s.loadCatalogRecord(ctx, b.s.catalogKey(hour, sheet.start, writer))
		if err != nil && !isNotExist(err) {
			return err
		}
		for _, old := range rec.Entries {
			sheet.put(old)
		}
		sheet.loaded = true
	}
	if old, ok := sheet.entries[e.key()]; ok && old.State == e.State && old.In == e.In && old.Name == e.Name {
		return nil // nothing changes
	}
	sheet.put(e)
	sheet.dirty = true
	return nil
}

func (sh *catalogSheet) put(e catalogEntry) {
	if old, ok := sh.entries[e.key()]; ok && old.At > e.At {
		return
	}
	sh.entries[e.key()] = e
	if e.ID > sh.max {
		sh.max = e.ID
	}
}

// hour returns the writer's records of an hour; for an hour it does not
// hold (new, or forgotten since), the records it wrote there before are
// listed first, so a new one never splits an existing window.
func (b *catalogBook) hour(ctx context.Context, writer, hour string) (*catalogHourBook, error) {
	if hb, ok := b.hours[hour]; ok {
		return hb, nil
	}
	refs, err := b.s.listCatalogRecords(ctx, hour)
	if err != nil {
		return nil, err
	}
	hb := &catalogHourBook{}
	for _, r := range refs {
		if r.writer == writer {
			hb.records = append(hb.records, &catalogSheet{start: r.start, entries: map[string]catalogEntry{}, written: true})
		}
	}
	slices.SortFunc(hb.records, func(a, c *catalogSheet) int { return cmp.Compare(a.start, c.start) })
	b.hours[hour] = hb
	return hb, nil
}

// place returns the record for id: the one whose window holds it, or a new
// one when id comes before every record, or after a full last record.
func (hb *catalogHourBook) place(id string) *catalogSheet {
	i, _ := slices.BinarySearchFunc(hb.records, id, func(sh *catalogSheet, id string) int {
		return cmp.Compare(sh.start, id)
	})
	// records[i-1] is the last one starting at or before id
	if i < len(hb.records) && hb.records[i].start == id {
		return hb.records[i]
	}
	if i > 0 {
		sh := hb.records[i-1]
		last := i == len(hb.records)
		if !(last && len(sh.entries) >= catalogRecordSize && id > sh.max && sh.loaded) {
			return sh
		}
	} else if len(hb.records) > 0 && !hb.records[0].written && len(hb.records[0].entries) < catalogRecordSize {
		// before the first record, which is not in storage yet: its
		// window starts earlier instead of a record of its own starting
		hb.records[0].start = id
		return hb.records[0]
	}
	sh := &catalogSheet{start: id, entries: map[string]catalogEntry{}, loaded: true}
	hb.records = slices.Insert(hb.records, i, sh)
	return sh
}

// dirtySheet is a record to write.
type dirtySheet struct {
	hour  string
	sheet *catalogSheet
}

// dirty returns the records changed since they were last written.
func (b *catalogBook) dirty() []dirtySheet {
	var out []dirtySheet
	for hour, hb := range b.hours {
		for _, sh := range hb.records {
			if sh.dirty {
				out = append(out, dirtySheet{hour, sh})
			}
		}
	}
	return out
}

// encode returns a record's stored form, entries sorted by ID.
func (sh *catalogSheet) encode(writer string) ([]byte, error) {
	rec := catalogRecord{Version: SchemaVersion, Writer: writer, Start: sh.start, Entries: make([]catalogEntry, 0, len(sh.entries))}
	for _, e := range sh.entries {
		rec.Entries = append(rec.Entries, e)
	}
	slices.SortFunc(rec.Entries, func(a, b catalogEntry) int {
		return cmp.Or(cmp.Compare(a.ID, b.ID), cmp.Compare(a.Kind, b.Kind))
	})
	b, err := json.Marshal(rec)
	if err != nil {
		return nil, fmt.Errorf("encoding catalog record %s: %w", sh.start, err)
	}
	return b, nil
}

// catalogMemory is how long a writer keeps an hour's records in memory
// after the last update of one of them; an update that comes later (a
// resource finishing hours after it was created) reads them back.
const catalogMemory = 30 * time.Minute

// evict forgets the hours not touched for catalogMemory whose records are
// all written.
func (b *catalogBook) evict(now time.Time) {
	for hour, hb := range b.hours {
		if now.Sub(hb.seen) < catalogMemory {
			continue
		}
		clean := true
		for _, sh := range hb.records {
			clean = clean && !sh.dirty
		}
		if clean {
			delete(b.hours, hour)
		}
	}
}
