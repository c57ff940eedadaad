package issuer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"
)

// Reader reads certflow's stored resources for status views (admin API,
// CLI). It reads from storage, so every node sharing the storage shows the
// same picture, and lists through the catalog rather than every object.
type Reader struct{ s store }

// NewReader returns a Reader for the resources of one issuer key.
func NewReader(storage certmagic.Storage, issuerKey string) Reader {
	return Reader{s: store{storage: storage, issuerKey: issuerKey}}
}

// IssuerKeys lists the issuer keys that have resources in the storage.
func IssuerKeys(ctx context.Context, storage certmagic.Storage) ([]string, error) {
	keys, err := storage.List(ctx, "certflow", false)
	if isNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, storageErr("listing", "certflow", err)
	}
	out := make([]string, 0, len(keys))
	for _, k := range keys {
		out = append(out, path.Base(k))
	}
	slices.Sort(out)
	return out, nil
}

// Query selects resources of one kind, newest first.
type Query struct {
	// Kind is KindRequest, KindOrder or KindChallenge.
	Kind string
	// Name and State filter, when not empty.
	Name, State string
	// Limit is the page size (default 100, at most 1000).
	Limit int
	// After is the ID of the last item of the previous page.
	After string
}

// Page is one page of a list, newest first; Next is the After of the next
// page, empty on the last one.
type Page struct {
	Items []json.RawMessage `json:"items"`
	Next  string            `json:"next,omitempty"`
}

// ErrBadQuery is a query that cannot be answered as asked.
var ErrBadQuery = errors.New("bad query")

// List returns a page of resources matching q, newest first. It lists
// through the catalog (catalog.go), the name's record for a name, and the
// markers of previous versions where any are left (legacyindex.go), and
// reads each resource where it is kept: a page reads the few records it
// needs, whatever the number of stored resources.
func (r Reader) List(ctx context.Context, q Query) (Page, error) {
	switch q.Kind {
	case KindRequest, KindOrder, KindChallenge:
	default:
		return Page{}, fmt.Errorf("%w: unknown kind %q", ErrBadQuery, q.Kind)
	}
	limit := q.Limit
	if limit <= 0 {
		limit = 100
	}
	limit = min(limit, 1000)

	rv := newResolver(r.s)
	var page Page
	// take offers one candidate (newest first); it reports whether the
	// page is full
	take := func(e catalogEntry) (bool, error) {
		if q.After != "" && e.ID >= q.After {
			return false, nil
		}
		raw, head, ok, err := r.resolve(ctx, rv, q.Kind, e)
		if err != nil || !ok {
			return false, err
		}
		if (q.State != "" && head.State != q.State) || (q.Name != "" && head.Name != q.Name) {
			return false, nil
		}
		page.Items = append(page.Items, raw)
		if len(page.Items) == limit {
			page.Next = head.ID
			return true, nil
		}
		return false, nil
	}
	var err error
	if q.Name != "" {
		err = r.listByName(ctx, rv, q, take)
	} else {
		err = r.listByKind(ctx, q, limit, take)
	}
	if err != nil {
		return Page{}, err
	}
	return page, nil
}

// resolve reads the resource a candidate names, where its entry says it
// is kept. ok is false when it is not there (trimmed meanwhile, or moved
// on) or cannot be read while the store answers (corrupt.go): the list
// goes on without it.
func (r Reader) resolve(ctx context.Context, rv *resolver, kind string, e catalogEntry) (json.RawMessage, resourceHead, bool, error) {
	var head resourceHead
	if kind == KindRequest {
		return r.resolveRequest(ctx, rv, e)
	}
	if e.In != "" {
		v, ok, err := rv.embedded(ctx, e)
		if err != nil || !ok {
			return nil, head, false, err
		}
		raw, err := encodeShown(v)
		if err != nil || json.Unmarshal(raw, &head) != nil {
			return nil, head, false, err
		}
		return raw, head, true, nil
	}
	key := r.s.key(kind, e.ID)
	b, err := r.s.storage.Load(ctx, key)
	if isNotExist(err) {
		return nil, head, false, nil // trimmed meanwhile; its entry goes later
	}
	if err != nil {
		if _, serr := r.s.storage.Load(ctx, r.s.sentinelKey()); serr == nil {
			return nil, head, false, nil // the store answers: only this value is unreadable (corrupt.go); list the rest
		}
		return nil, head, false, storageErr("loading", key, err)
	}
	if json.Unmarshal(b, &head) != nil || belongsAt(kind, e.ID, &head) != nil {
		return nil, head, false, nil // not this entry's resource (corrupt.go)
	}
	return b, head, true, nil
}

// resolveRequest reads a request under its own key, through the
// resolver (a name's list reads it there first), shown without the order
// and challenges stored with it; a request in flight is in its name's
// record.
func (r Reader) resolveRequest(ctx context.Context, rv *resolver, e catalogEntry) (json.RawMessage, resourceHead, bool, error) {
	var head resourceHead
	cr, err := rv.request(ctx, e.ID)
	if err != nil {
		return nil, head, false, err
	}
	var v any = cr
	if cr == nil {
		// in flight: in its name's record, when its entry says so (once
		// it ended, its own record is the only one that tells of it)
		if e.In != storedInName {
			return nil, head, false, nil
		}
		inName, ok, err := rv.embedded(ctx, e)
		if err != nil || !ok {
			return nil, head, false, err
		}
		v = inName
	}
	raw, err := encodeShown(v)
	if err != nil || json.Unmarshal(raw, &head) != nil {
		return nil, head, false, err
	}
	return raw, head, true, nil
}

// listByKind offers the catalog's entries of the query's kind (and, for a
// state, those the catalog last saw in it: that state, or any state in
// flight for a state in flight), merged with the markers of previous
// versions where any are left.
func (r Reader) listByKind(ctx context.Context, q Query, limit int, take func(catalogEntry) (bool, error)) error {
	code := catalogKind(q.Kind)
	final := q.State != "" && IsFinal(q.Kind, q.State)
	keep := func(e catalogEntry) bool {
		switch {
		case e.Kind != code:
			return false
		case q.State == "":
			return true
		case final:
			return e.State == q.State
		}
		return !IsFinal(q.Kind, e.State)
	}
	if !r.s.hasLegacyIndex(ctx, q.Kind) {
		return r.s.walkCatalog(ctx, q.After, "", keep, take)
	}
	cursor := q.After
	for range maxMergeRounds {
		var fromCatalog []catalogEntry
		err := r.s.walkCatalog(ctx, cursor, "", keep, func(e catalogEntry) (bool, error) {
			fromCatalog = append(fromCatalog, e)
			return len(fromCatalog) == limit, nil
		})
		if err != nil {
			return err
		}
		fromLegacy, moreLegacy, err := r.legacyIDs(ctx, q, final, cursor, limit)
		if err != nil {
			return err
		}
		moreCatalog := len(fromCatalog) == limit
		boundary := ""
		if moreCatalog {
			boundary = fromCatalog[len(fromCatalog)-1].ID
		}
		if moreLegacy && fromLegacy[len(fromLegacy)-1] > boundary {
			boundary = fromLegacy[len(fromLegacy)-1]
		}
		byID := map[string]catalogEntry{}
		for _, id := range fromLegacy {
			byID[id] = catalogEntry{Kind: code, ID: id}
		}
		for _, e := range fromCatalog {
			byID[e.ID] = e
		}
		merged := make([]catalogEntry, 0, len(byID))
		for _, e := range byID {
			merged = append(merged, e)
		}
		slices.SortFunc(merged, func(a, b catalogEntry) int { return strings.Compare(b.ID, a.ID) })
		more := moreCatalog || moreLegacy
		for _, e := range merged {
			if more && e.ID < boundary {
				break
			}
			if full, err := take(e); err != nil || full {
				return err
			}
		}
		if !more {
			return nil
		}
		cursor = boundary
	}
	return fmt.Errorf("listing %s: more than %d rounds", q.Kind, maxMergeRounds)
}

// legacyIDs returns up to n IDs older than after from the previous
// versions' markers of the query's kind (and state), newest first, and
// whether there may be more.
func (r Reader) legacyIDs(ctx context.Context, q Query, final bool, after string, n int) ([]string, bool, error) {
	var ids []string
	full := func(id string) (bool, error) {
		if after != "" && id >= after {
			return false, nil
		}
		ids = append(ids, id)
		return len(ids) == n, nil
	}
	var err error
	switch {
	case q.State != "" && !final:
		err = r.walkBuckets(ctx, r.s.inflightDir(q.Kind), after, full)
	case q.State != "":
		err = r.walkBuckets(ctx, r.s.stateDir(q.Kind, q.State), after, full)
	default:
		dirs := []string{r.s.inflightDir(q.Kind)}
		for _, state := range FinalStates(q.Kind) {
			dirs = append(dirs, r.s.stateDir(q.Kind, state))
		}
		err = r.walkMerged(ctx, dirs, after, n, full)
	}
	return ids, len(ids) == n, err
}

// listByName offers the resources of one name, newest first: its recent
// requests (its record's Recent), their orders and challenges, and the
// markers of previous versions where any are left.
func (r Reader) listByName(ctx context.Context, rv *resolver, q Query, take func(catalogEntry) (bool, error)) error {
	rec, err := rv.name(ctx, q.Name)
	if err != nil {
		return err
	}
	byID := map[string]catalogEntry{}
	if rec != nil {
		ids := slices.Clone(rec.Recent)
		if rec.LastRequest != "" && !slices.Contains(ids, rec.LastRequest) {
			ids = append(ids, rec.LastRequest)
		}
		for _, id := range ids {
			if err := r.nameCandidates(ctx, rv, rec, q.Kind, id, byID); err != nil {
				return err
			}
		}
	}
	if r.s.hasLegacyIndex(ctx, q.Kind) {
		ids, err := r.listIDs(ctx, r.s.nameMarkerDir(q.Kind, q.Name))
		if err != nil {
			return err
		}
		for _, id := range ids {
			if _, ok := byID[id]; !ok {
				byID[id] = catalogEntry{Kind: catalogKind(q.Kind), ID: id, Name: q.Name}
			}
		}
	}
	all := make([]catalogEntry, 0, len(byID))
	for _, e := range byID {
		all = append(all, e)
	}
	slices.SortFunc(all, func(a, b catalogEntry) int { return strings.Compare(b.ID, a.ID) })
	for _, e := range all {
		if full, err := take(e); err != nil || full {
			return err
		}
	}
	return nil
}

// nameCandidates adds what one request of the name holds of kind to byID,
// each with where it is kept.
func (r Reader) nameCandidates(ctx context.Context, rv *resolver, rec *NameRecord, kind, requestID string, byID map[string]catalogEntry) error {
	code := catalogKind(kind)
	cr, err := rv.request(ctx, requestID)
	if err != nil {
		return err
	}
	if cr == nil {
		if rec.Request == nil || rec.Request.ID != requestID {
			return nil // trimmed, or never written
		}
		cr = rec.Request // in flight
	}
	switch kind {
	case KindRequest:
		e := catalogEntry{Kind: code, ID: cr.ID, Name: rec.Name}
		if rec.Request != nil && rec.Request.ID == cr.ID {
			e.In = storedInName // its own record first, else in flight
		}
		byID[cr.ID] = e
	case KindOrder:
		switch o := cr.OrderRecord; {
		case o != nil:
			if _, ok := byID[o.ID]; !ok || byID[o.ID].In != "" {
				byID[o.ID] = catalogEntry{Kind: code, ID: o.ID, Name: rec.Name, In: requestID}
			}
		case cr.Order != "" && rec.Order != nil && rec.Order.ID == cr.Order:
			byID[cr.Order] = catalogEntry{Kind: code, ID: cr.Order, Name: rec.Name, In: storedInName}
		case cr.Order != "":
			byID[cr.Order] = catalogEntry{Kind: code, ID: cr.Order, Name: rec.Name} // its own record
		}
	case KindChallenge:
		stored := map[string]bool{}
		for _, ch := range cr.ChallengeRecords {
			stored[ch.ID] = true
			byID[ch.ID] = catalogEntry{Kind: code, ID: ch.ID, Name: rec.Name, In: requestID}
		}
		var challenges []string
		if o := cr.OrderRecord; o != nil {
			challenges = o.Challenges
		} else if cr.Order != "" {
			// an earlier version's request, or one still in flight: its
			// order has a record of its own, or is in the name's record
			var o Order
			if err := r.s.inspect(ctx, KindOrder, cr.Order, &o); err == nil {
				challenges = o.Challenges
			} else if rec.Order != nil && rec.Order.ID == cr.Order {
				challenges = rec.Order.Challenges
			}
		}
		for _, id := range challenges {
			if !stored[id] {
				byID[id] = catalogEntry{Kind: code, ID: id, Name: rec.Name} // its own record
			}
		}
	}
	return nil
}

// walkFlat offers the IDs in one folder, newest first.
func (r Reader) walkFlat(ctx context.Context, dir string, take func(string) (bool, error)) error {
	ids, err := r.listIDs(ctx, dir)
	if err != nil {
		return err
	}
	return offerNewestFirst(ids, take)
}

// maxMergeRounds bounds walkMerged; each round moves past at least one
// batch of a folder's IDs.
const maxMergeRounds = 10000

// walkMerged offers the IDs of several time-bucketed folders merged, newest
// first, each once (a resource can briefly have a stale in-flight marker
// beside its final one). Each round reads a batch from every folder and
// offers only the IDs no unread one can precede: those not older than the
// oldest of the batch of any folder that had more.
func (r Reader) walkMerged(ctx context.Context, dirs []string, after string, batch int, take func(string) (bool, error)) error {
	cursor := after
	for range maxMergeRounds {
		var ids []string
		boundary, more := "", false
		for _, dir := range dirs {
			got, err := r.collectBuckets(ctx, dir, cursor, batch)
			if err != nil {
				return err
			}
			ids = append(ids, got...)
			if len(got) == batch {
				more = true
				if oldest := got[len(got)-1]; oldest > boundary {
					boundary = oldest
				}
			}
		}
		slices.Sort(ids)
		ids = slices.Compact(ids)
		slices.Reverse(ids)
		for _, id := range ids {
			if more && id < boundary {
				break
			}
			if full, err := take(id); err != nil || full {
				return err
			}
		}
		if !more {
			return nil
		}
		cursor = boundary
	}
	return fmt.Errorf("listing %v: more than %d rounds", dirs, maxMergeRounds)
}

// collectBuckets returns up to n IDs older than after (all, when after is
// empty) from a time-bucketed folder, newest first.
func (r Reader) collectBuckets(ctx context.Context, dir, after string, n int) ([]string, error) {
	var ids []string
	err := r.walkBuckets(ctx, dir, after, func(id string) (bool, error) {
		if after != "" && id >= after {
			return false, nil
		}
		ids = append(ids, id)
		return len(ids) == n, nil
	})
	return ids, err
}

// walkBuckets offers the IDs of a time-bucketed folder (hour/minute/second,
// see timeBuckets), newest first, listing only the folders it needs: those
// not newer than the cursor, until the page is full.
func (r Reader) walkBuckets(ctx context.Context, dir, after string, take func(string) (bool, error)) error {
	var cursor []string
	if after != "" {
		cursor = timeBuckets(after)
	}
	_, err := r.walkLevel(ctx, dir, cursor, 0, take)
	return err
}

// walkLevel walks one level of buckets; onCursorPath is implied by a
// non-nil cursor: buckets newer than the cursor's are skipped, older ones
// are walked whole. It reports whether the page is full.
func (r Reader) walkLevel(ctx context.Context, dir string, cursor []string, level int, take func(string) (bool, error)) (bool, error) {
	names, err := r.listIDs(ctx, dir)
	if err != nil {
		return false, err
	}
	slices.Sort(names)
	slices.Reverse(names)
	if level == len(timeBuckets("")) {
		for _, id := range names {
			if full, err := take(id); err != nil || full {
				return full, err
			}
		}
		return false, nil
	}
	for _, b := range names {
		var sub []string
		if cursor != nil {
			switch {
			case b > cursor[level]:
				continue
			case b == cursor[level]:
				sub = cursor // still on the cursor's path
			}
		}
		if full, err := r.walkLevel(ctx, path.Join(dir, b), sub, level+1, take); err != nil || full {
			return full, err
		}
	}
	return false, nil
}

func (r Reader) listIDs(ctx context.Context, dir string) ([]string, error) {
	keys, err := r.s.storage.List(ctx, dir, false)
	if isNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, storageErr("listing", dir, err)
	}
	ids := make([]string, 0, len(keys))
	for _, k := range keys {
		base := path.Base(k)
		if ext := path.Ext(base); ext == ".json" {
			base = base[:len(base)-len(ext)]
		}
		ids = append(ids, base)
	}
	return ids, nil
}

func offerNewestFirst(ids []string, take func(string) (bool, error)) error {
	slices.Sort(ids)
	slices.Reverse(ids)
	for _, id := range ids {
		full, err := take(id)
		if err != nil || full {
			return err
		}
	}
	return nil
}

// NameStatus is where one name stands, like `cmctl status certificate`: its
// record (backoff, next attempt), the latest CertificateRequest, its Order
// and the Order's Challenges.
type NameStatus struct {
	Name       string              `json:"name"`
	Record     *NameRecord         `json:"record,omitempty"`
	Request    *CertificateRequest `json:"request,omitempty"`
	Order      *Order              `json:"order,omitempty"`
	Challenges []Challenge         `json:"challenges,omitempty"`
	// LastRenewal is the latest CertificateRequest that renewed the
	// name's certificate, and LastRenewalOrder its order (the same as
	// Request and Order when the latest request was that renewal).
	LastRenewal      *CertificateRequest `json:"last_renewal,omitempty"`
	LastRenewalOrder *Order              `json:"last_renewal_order,omitempty"`
	// BackingOff is true while handshakes for the name fail fast.
	BackingOff bool `json:"backing_off"`
	// Problems lists the name's stored records that could not be read as
	// they are: corrupt ones (the next issuance sets them aside and starts
	// clean) and ones written by a newer certflow (left in place). Reading
	// the status changes none of them.
	Problems []string `json:"problems,omitempty"`
}

// ErrUnknownName means certflow has no record of the name.
var ErrUnknownName = errors.New("no certflow record for this name")

// Status returns where the name stands. It only reads: a record it cannot
// use is reported in Problems and left where it is.
func (r Reader) Status(ctx context.Context, name string) (NameStatus, error) {
	st := NameStatus{Name: name}
	// problem reports whether err is a record that cannot be used, noting it
	problem := func(err error) bool {
		if errors.Is(err, ErrCorrupt) || errors.Is(err, ErrNewerSchema) {
			st.Problems = append(st.Problems, err.Error())
			return true
		}
		return false
	}
	var rec NameRecord
	err := r.s.inspect(ctx, kindNames, name, &rec)
	switch {
	case isNotExist(err):
		// a Reader's store never probes: this only reads the sentinel
		if err := r.s.confirmAbsent(ctx, r.s.key(kindNames, name)); err != nil {
			return st, err
		}
		return st, ErrUnknownName
	case problem(err):
		return st, nil
	case err != nil:
		return st, err
	}
	st.Record = shownRecord(&rec)
	st.BackingOff = rec.NextAttempt.After(time.Now())
	// the latest request: its own record once it ended (with its order
	// and challenges), else the one in flight in the name's record
	var latest *CertificateRequest
	if id := rec.LastRequest; id != "" {
		latest = r.statusRequest(ctx, &rec, id, problem)
		if latest != nil {
			st.Request = shownRequest(latest)
		}
	}
	if id := rec.LastRenewal; id != "" {
		if latest != nil && latest.ID == id {
			st.LastRenewal = st.Request
		} else if cr := r.statusRequest(ctx, &rec, id, problem); cr != nil {
			st.LastRenewal = shownRequest(cr)
			if o, _ := r.statusOrder(ctx, &rec, cr, cr.Order, problem); o != nil {
				st.LastRenewalOrder = o
			}
		}
	}
	orderID := rec.CurrentOrder
	if latest != nil && latest.Order != "" {
		orderID = latest.Order
	}
	if orderID != "" {
		o, records := r.statusOrder(ctx, &rec, latest, orderID, problem)
		if o != nil {
			st.Order = o
			for _, id := range o.Challenges {
				if ch := r.statusChallenge(ctx, id, records, problem); ch != nil {
					st.Challenges = append(st.Challenges, *ch)
				}
			}
		}
	}
	if lr := st.LastRenewal; lr != nil && lr.Order != "" && st.Order != nil && st.Order.ID == lr.Order {
		st.LastRenewalOrder = st.Order
	}
	return st, nil
}

// statusRequest reads a request of the name for its status: its own
// record, else the one the name's record holds in flight.
func (r Reader) statusRequest(ctx context.Context, rec *NameRecord, id string, problem func(error) bool) *CertificateRequest {
	var cr CertificateRequest
	err := r.s.inspect(ctx, KindRequest, id, &cr)
	switch {
	case err == nil:
		return &cr
	case isNotExist(err) && rec.Request != nil && rec.Request.ID == id:
		return rec.Request
	}
	problem(err)
	return nil
}

// statusOrder reads an order for a status: its own record where it has
// one (an earlier version's, or one that ended apart from a request), else
// the copy in its request's record, else the one in flight in the name's
// record. It returns the challenges stored with it too.
func (r Reader) statusOrder(ctx context.Context, rec *NameRecord, cr *CertificateRequest, id string, problem func(error) bool) (*Order, []Challenge) {
	var records []Challenge
	if cr != nil {
		records = cr.ChallengeRecords
	}
	var o Order
	err := r.s.inspect(ctx, KindOrder, id, &o)
	switch {
	case err == nil:
		return &o, records
	case !isNotExist(err):
		problem(err)
		return nil, records
	}
	if cr != nil && cr.OrderRecord != nil && cr.OrderRecord.ID == id {
		return cr.OrderRecord, records
	}
	if rec.Order != nil && rec.Order.ID == id {
		return rec.Order, records
	}
	return nil, records
}

// statusChallenge reads a challenge for a status: its own record where it
// has one, else its copy among records (its request's).
func (r Reader) statusChallenge(ctx context.Context, id string, records []Challenge, problem func(error) bool) *Challenge {
	for i := range records {
		if records[i].ID == id && !records[i].Times.Presented.IsZero() && !records[i].CleanedUp {
			break // its answer was left: maintenance may have recorded more in its own record
		}
		if records[i].ID == id {
			ch := records[i]
			return &ch
		}
	}
	var ch Challenge
	err := r.s.inspect(ctx, KindChallenge, id, &ch)
	if err == nil {
		return &ch
	}
	if !isNotExist(err) {
		problem(err)
		return nil
	}
	for i := range records {
		if records[i].ID == id {
			ch := records[i]
			return &ch
		}
	}
	return nil
}

// ErrInFlight means an issuance of the name holds its lock now.
var ErrInFlight = errors.New("an issuance of this name is in flight")

// lockProbeWait bounds how long ClearBackoff tries the name's lock before
// it takes it for held by an issuance in flight.
const lockProbeWait = 500 * time.Millisecond

// ClearBackoff forgets a name's failures, so the next handshake tries at
// once. It takes certmagic's issue_cert_<name> lock, which makes it the only
// writer of the name's record, but does not wait for it: while an issuance
// of the name is in flight it changes nothing and returns ErrInFlight at
// once (that issuance is the retry; its outcome replaces the backoff). Under
// the lock it reads the record as the workflow does: a corrupt one is set
// aside (the name starts clean, which is what was asked), and one written
// by a newer certflow is left in place and returned as ErrNewerSchema.
func (r Reader) ClearBackoff(ctx context.Context, name string) error {
	lock := "issue_cert_" + name
	held, err := tryLock(ctx, r.s.storage, lock)
	if err != nil {
		return storageErr("locking", lock, err)
	}
	if !held {
		return fmt.Errorf("%w: %s (its lock %s is held)", ErrInFlight, name, lock)
	}
	defer func() { _ = r.s.storage.Unlock(context.WithoutCancel(ctx), lock) }()
	var rec NameRecord
	err = r.s.load(ctx, kindNames, name, &rec)
	switch {
	case isNotExist(err):
		return ErrUnknownName
	case errors.Is(err, ErrCorrupt):
		return nil // set aside: the name has no backoff left to clear
	case err != nil:
		return err
	}
	rec.Failures, rec.NextAttempt, rec.Updated = 0, time.Time{}, time.Now()
	return r.s.save(ctx, kindNames, name, &rec)
}

// tryLock takes a storage lock if it is free now, waiting at most
// lockProbeWait: with the storage's TryLock where it has one, else with a
// Lock bounded by that wait. It reports whether the lock was taken.
func tryLock(ctx context.Context, storage certmagic.Storage, lock string) (bool, error) {
	probe, cancel := context.WithTimeout(ctx, lockProbeWait)
	defer cancel()
	var err error
	if t, ok := storage.(certmagic.TryLocker); ok {
		var held bool
		held, err = t.TryLock(probe, lock)
		if err == nil {
			return held, nil
		}
	} else if err = storage.Lock(probe, lock); err == nil {
		return true, nil
	}
	if ctx.Err() == nil && probe.Err() != nil {
		return false, nil // still held when the wait ended
	}
	return false, err
}
