package issuer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"slices"
	"time"

	"github.com/caddyserver/certmagic"
)

// Reader reads certflow's stored resources for status views (admin API,
// CLI). It reads from storage, so every node sharing the storage shows the
// same picture, and lists through the index rather than every object.
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

// List returns a page of resources matching q, newest first.
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

	var page Page
	// take offers one candidate ID (newest first); it reports whether the
	// page is full
	take := func(id string) (bool, error) {
		if q.After != "" && id >= q.After {
			return false, nil
		}
		b, err := r.s.storage.Load(ctx, r.s.key(q.Kind, id))
		if isNotExist(err) {
			return false, nil // trimmed meanwhile; its marker goes next
		}
		if err != nil {
			if _, serr := r.s.storage.Load(ctx, r.s.sentinelKey()); serr == nil {
				return false, nil // the store answers: only this value is unreadable (corrupt.go); list the rest
			}
			return false, storageErr("loading", r.s.key(q.Kind, id), err)
		}
		var head resourceHead
		if json.Unmarshal(b, &head) != nil || belongsAt(q.Kind, id, &head) != nil {
			return false, nil // not this marker's resource (corrupt.go)
		}
		if (q.State != "" && head.State != q.State) || (q.Name != "" && head.Name != q.Name) {
			return false, nil
		}
		page.Items = append(page.Items, b)
		if len(page.Items) == limit {
			page.Next = head.ID
			return true, nil
		}
		return false, nil
	}

	idx := r.s.indexPrefix(q.Kind)
	var err error
	switch {
	case q.Name != "":
		err = r.walkFlat(ctx, path.Join(idx, "name", certmagic.StorageKeys.Safe(q.Name)), take)
	case q.State != "" && !IsFinal(q.Kind, q.State):
		err = r.walkBuckets(ctx, r.s.inflightDir(q.Kind), q.After, take)
	case q.State != "":
		err = r.walkBuckets(ctx, r.s.stateDir(q.Kind, q.State), q.After, take)
	default:
		dirs := []string{r.s.inflightDir(q.Kind)}
		for _, state := range FinalStates(q.Kind) {
			dirs = append(dirs, r.s.stateDir(q.Kind, state))
		}
		err = r.walkMerged(ctx, dirs, q.After, limit, take)
	}
	if err != nil {
		return Page{}, err
	}
	return page, nil
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
	st.Record = &rec
	st.BackingOff = rec.NextAttempt.After(time.Now())
	if rec.LastRequest != "" {
		var cr CertificateRequest
		if err := r.s.inspect(ctx, KindRequest, rec.LastRequest, &cr); err == nil {
			st.Request = &cr
		} else {
			problem(err)
		}
	}
	if id := rec.LastRenewal; id != "" {
		if st.Request != nil && st.Request.ID == id {
			st.LastRenewal = st.Request
		} else {
			var cr CertificateRequest
			if err := r.s.inspect(ctx, KindRequest, id, &cr); err == nil {
				st.LastRenewal = &cr
			} else {
				problem(err)
			}
		}
	}
	orderID := rec.CurrentOrder
	if st.Request != nil && st.Request.Order != "" {
		orderID = st.Request.Order
	}
	if orderID != "" {
		var o Order
		if err := r.s.inspect(ctx, KindOrder, orderID, &o); err == nil {
			st.Order = &o
			for _, id := range o.Challenges {
				var ch Challenge
				if err := r.s.inspect(ctx, KindChallenge, id, &ch); err == nil {
					st.Challenges = append(st.Challenges, ch)
				} else {
					problem(err)
				}
			}
		} else {
			problem(err)
		}
	}
	if lr := st.LastRenewal; lr != nil && lr.Order != "" {
		if st.Order != nil && st.Order.ID == lr.Order {
			st.LastRenewalOrder = st.Order
		} else {
			var o Order
			if err := r.s.inspect(ctx, KindOrder, lr.Order, &o); err == nil {
				st.LastRenewalOrder = &o
			} else {
				problem(err)
			}
		}
	}
	return st, nil
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
