package issuer

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"slices"
)

// walkCatalog offers the catalog's entries that keep accepts, newest ID
// first, each resource once (its latest entry): only those with an ID
// below after (all, when after is empty), and of hours not before
// sinceHour (all, when it is empty). fn returns true to stop.
//
// Each hour's records are read in the order their windows end, latest
// first; an entry is offered once every record whose window could hold a
// later ID has been read (records of other writers overlap a window, but
// never beyond their own window's end, which the names tell).
func (s store) walkCatalog(ctx context.Context, after, sinceHour string, keep func(catalogEntry) bool,
	fn func(catalogEntry) (stop bool, err error)) error {
	hours, err := s.listCatalogHours(ctx)
	if err != nil {
		return err
	}
	for _, hour := range hours {
		if after != "" && hour > catalogHour(after) {
			continue
		}
		if sinceHour != "" && hour < sinceHour {
			break
		}
		refs, err := s.listCatalogRecords(ctx, hour)
		if err != nil {
			return err
		}
		if stop, err := s.walkCatalogHour(ctx, refs, after, keep, fn); err != nil || stop {
			return err
		}
	}
	return nil
}

// walkCatalogHour does walkCatalog's work for one hour's records (refs,
// sorted by the end of their window, latest first).
func (s store) walkCatalogHour(ctx context.Context, refs []catalogRecordRef, after string, keep func(catalogEntry) bool,
	fn func(catalogEntry) (bool, error)) (bool, error) {
	buffered := map[string]catalogEntry{}
	// emit offers the buffered entries with an ID at or above bound ("":
	// none can be offered yet), newest first
	emit := func(bound string, all bool) (bool, error) {
		var ready []catalogEntry
		for k, e := range buffered {
			if all || (bound != "" && e.ID >= bound) {
				ready = append(ready, e)
				delete(buffered, k)
			}
		}
		slices.SortFunc(ready, func(a, b catalogEntry) int { return cmp.Or(cmp.Compare(b.ID, a.ID), cmp.Compare(a.Kind, b.Kind)) })
		for _, e := range ready {
			if stop, err := fn(e); err != nil || stop {
				return true, err
			}
		}
		return false, nil
	}
	for _, ref := range refs {
		if stop, err := emit(ref.end, false); err != nil || stop {
			return stop, err
		}
		if after != "" && ref.start >= after {
			continue // every entry of it is at or above the cursor
		}
		rec, err := s.loadCatalogRecord(ctx, ref.key)
		if isNotExist(err) {
			continue // trimmed meanwhile
		}
		if err != nil {
			return false, err
		}
		for _, e := range rec.Entries {
			if (after != "" && e.ID >= after) || e.ID < ref.start || (ref.end != "" && e.ID >= ref.end) || !keep(e) {
				continue // outside the record's window: not this record's to tell
			}
			if old, ok := buffered[e.key()]; ok && old.At >= e.At {
				continue
			}
			buffered[e.key()] = e
		}
	}
	return emit("", true)
}

// catalogEntriesSince returns the entries of the catalog's hours since
// sinceHour that keep accepts, newest first.
func (s store) catalogEntriesSince(ctx context.Context, sinceHour string, keep func(catalogEntry) bool) ([]catalogEntry, error) {
	var out []catalogEntry
	err := s.walkCatalog(ctx, "", sinceHour, keep, func(e catalogEntry) (bool, error) {
		out = append(out, e)
		return false, nil
	})
	return out, err
}

// resolver finds the stored form of resources wherever they are kept
// (their own key, their request's record, their name's record), reading
// each record once. It only reads (inspect): what it cannot use is
// skipped, or reported by the caller.
type resolver struct {
	s        store
	requests map[string]*CertificateRequest // nil: not found or unusable
	names    map[string]*NameRecord
}

func newResolver(s store) *resolver {
	return &resolver{s: s, requests: map[string]*CertificateRequest{}, names: map[string]*NameRecord{}}
}

// request returns the record of a CertificateRequest (nil when it has
// none that can be read); err is a storage error.
func (rv *resolver) request(ctx context.Context, id string) (*CertificateRequest, error) {
	if cr, ok := rv.requests[id]; ok {
		return cr, nil
	}
	var cr CertificateRequest
	err := rv.s.inspect(ctx, KindRequest, id, &cr)
	switch {
	case err == nil:
		rv.requests[id] = &cr
		return &cr, nil
	case isNotExist(err), errors.Is(err, ErrCorrupt), errors.Is(err, ErrNewerSchema), rv.unreadable(ctx):
		rv.requests[id] = nil
		return nil, nil
	}
	return nil, err
}

// unreadable tells, after a load failed with a storage error, whether the
// store answers all the same (its sentinel reads back): then only that
// value is unreadable (corrupt.go), and the status views go on without
// it.
func (rv *resolver) unreadable(ctx context.Context) bool {
	_, err := rv.s.storage.Load(ctx, rv.s.sentinelKey())
	return err == nil
}

// name returns the record of a name (nil when it has none that can be
// read); err is a storage error.
func (rv *resolver) name(ctx context.Context, name string) (*NameRecord, error) {
	if rec, ok := rv.names[name]; ok {
		return rec, nil
	}
	var rec NameRecord
	err := rv.s.inspect(ctx, kindNames, name, &rec)
	switch {
	case err == nil:
		rv.names[name] = &rec
		return &rec, nil
	case isNotExist(err), errors.Is(err, ErrCorrupt), errors.Is(err, ErrNewerSchema), rv.unreadable(ctx):
		rv.names[name] = nil
		return nil, nil
	}
	return nil, err
}

// embedded finds a request, order or challenge kept in another record,
// as the catalog entry e says (In), and returns it as the status views
// show it; ok is false when it is not there (any more).
func (rv *resolver) embedded(ctx context.Context, e catalogEntry) (v any, ok bool, err error) {
	if e.In == storedInName {
		rec, err := rv.name(ctx, e.Name)
		if err != nil || rec == nil {
			return nil, false, err
		}
		switch {
		case e.Kind == catalogKind(KindRequest) && rec.Request != nil && rec.Request.ID == e.ID:
			return rec.Request, true, nil
		case e.Kind == catalogKind(KindOrder) && rec.Order != nil && rec.Order.ID == e.ID:
			// once the request that had it ended, its record tells more
			// (the entry follows a couple of seconds later)
			if cr, err := rv.request(ctx, rec.Order.Request); err == nil && cr != nil && cr.OrderRecord != nil && cr.OrderRecord.ID == e.ID {
				return cr.OrderRecord, true, nil
			}
			return rec.Order, true, nil
		}
		return nil, false, nil
	}
	cr, err := rv.request(ctx, e.In)
	if err != nil || cr == nil {
		return nil, false, err
	}
	switch e.Kind {
	case catalogKind(KindOrder):
		if cr.OrderRecord != nil && cr.OrderRecord.ID == e.ID {
			return cr.OrderRecord, true, nil
		}
	case catalogKind(KindChallenge):
		for i := range cr.ChallengeRecords {
			if cr.ChallengeRecords[i].ID == e.ID {
				return &cr.ChallengeRecords[i], true, nil
			}
		}
	}
	return nil, false, nil
}

// shownRequest is a CertificateRequest as the status views show it:
// without the order and challenges stored with it (shown on their own).
func shownRequest(cr *CertificateRequest) *CertificateRequest {
	c := *cr
	c.OrderRecord, c.ChallengeRecords = nil, nil
	return &c
}

// shownRecord is a name's record as the status views show it: without
// the request and order it carries (shown on their own).
func shownRecord(rec *NameRecord) *NameRecord {
	r := *rec
	r.Request, r.Order, r.Recent = nil, nil, nil
	return &r
}

// encodeShown is the JSON of a resource as the lists show it.
func encodeShown(v any) (json.RawMessage, error) {
	if cr, ok := v.(*CertificateRequest); ok {
		v = shownRequest(cr)
	}
	return json.Marshal(v)
}
