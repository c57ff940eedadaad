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

// List returns a page of resources matching q.
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

	ids, mustCheckState, err := r.candidates(ctx, q)
	if err != nil {
		return Page{}, err
	}
	slices.Sort(ids)
	slices.Reverse(ids)
	if q.After != "" {
		i, _ := slices.BinarySearchFunc(ids, q.After, func(id, after string) int {
			// ids are descending: find the first id below the cursor
			switch {
			case id > after:
				return -1
			case id < after:
				return 1
			}
			return 0
		})
		for i < len(ids) && ids[i] >= q.After {
			i++
		}
		ids = ids[i:]
	}

	var page Page
	for _, id := range ids {
		if len(page.Items) == limit {
			page.Next = string(lastID(page))
			break
		}
		b, err := r.s.storage.Load(ctx, r.s.key(q.Kind, id))
		if isNotExist(err) {
			continue // trimmed meanwhile; its marker goes next
		}
		if err != nil {
			return Page{}, storageErr("loading", r.s.key(q.Kind, id), err)
		}
		if mustCheckState || q.Name != "" {
			var head resourceHead
			if json.Unmarshal(b, &head) != nil {
				continue
			}
			if (q.State != "" && head.State != q.State) || (q.Name != "" && head.Name != q.Name) {
				continue
			}
		}
		page.Items = append(page.Items, b)
	}
	return page, nil
}

func lastID(p Page) string {
	var head resourceHead
	_ = json.Unmarshal(p.Items[len(p.Items)-1], &head)
	return head.ID
}

// candidates returns the IDs the index offers for q, and whether their
// state must still be checked on the object.
func (r Reader) candidates(ctx context.Context, q Query) ([]string, bool, error) {
	idx := r.s.indexPrefix(q.Kind)
	switch {
	case q.Name != "":
		ids, err := r.listIDs(ctx, path.Join(idx, "name", certmagic.StorageKeys.Safe(q.Name)))
		return ids, q.State != "", err
	case q.State != "" && isFinalState(q.Kind, q.State):
		ids, err := r.listIDs(ctx, path.Join(idx, "state", certmagic.StorageKeys.Safe(q.State)))
		return ids, false, err
	case q.State != "":
		ids, err := r.listIDs(ctx, path.Join(idx, "inflight"))
		return ids, true, err
	default:
		ids, err := r.listIDs(ctx, path.Join(r.s.prefix(), q.Kind))
		return ids, false, err
	}
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

// NameStatus is where one name stands, like `cmctl status certificate`: its
// record (backoff, next attempt), the latest CertificateRequest, its Order
// and the Order's Challenges.
type NameStatus struct {
	Name       string              `json:"name"`
	Record     *NameRecord         `json:"record,omitempty"`
	Request    *CertificateRequest `json:"request,omitempty"`
	Order      *Order              `json:"order,omitempty"`
	Challenges []Challenge         `json:"challenges,omitempty"`
	// BackingOff is true while handshakes for the name fail fast.
	BackingOff bool `json:"backing_off"`
}

// ErrUnknownName means certflow has no record of the name.
var ErrUnknownName = errors.New("no certflow record for this name")

// Status returns where the name stands.
func (r Reader) Status(ctx context.Context, name string) (NameStatus, error) {
	st := NameStatus{Name: name}
	var rec NameRecord
	err := r.s.load(ctx, kindNames, name, &rec)
	if isNotExist(err) {
		if err := r.s.confirmAbsent(ctx, r.s.key(kindNames, name)); err != nil {
			return st, err
		}
		return st, ErrUnknownName
	}
	if err != nil {
		return st, err
	}
	st.Record = &rec
	st.BackingOff = rec.NextAttempt.After(time.Now())
	if rec.LastRequest != "" {
		var cr CertificateRequest
		if err := r.s.load(ctx, KindRequest, rec.LastRequest, &cr); err == nil {
			st.Request = &cr
		}
	}
	orderID := rec.CurrentOrder
	if st.Request != nil && st.Request.Order != "" {
		orderID = st.Request.Order
	}
	if orderID != "" {
		var o Order
		if err := r.s.load(ctx, KindOrder, orderID, &o); err == nil {
			st.Order = &o
			for _, id := range o.Challenges {
				var ch Challenge
				if err := r.s.load(ctx, KindChallenge, id, &ch); err == nil {
					st.Challenges = append(st.Challenges, ch)
				}
			}
		}
	}
	return st, nil
}

// ClearBackoff forgets a name's failures, so the next handshake tries at
// once. It takes certmagic's issue_cert_<name> lock, which makes it the only
// writer of the name's record (an issuance in flight finishes first).
func (r Reader) ClearBackoff(ctx context.Context, name string) error {
	lock := "issue_cert_" + name
	if err := r.s.storage.Lock(ctx, lock); err != nil {
		return storageErr("locking", lock, err)
	}
	defer func() { _ = r.s.storage.Unlock(context.WithoutCancel(ctx), lock) }()
	var rec NameRecord
	err := r.s.load(ctx, kindNames, name, &rec)
	if isNotExist(err) {
		return ErrUnknownName
	}
	if err != nil {
		return err
	}
	rec.Failures, rec.NextAttempt, rec.Updated = 0, time.Time{}, time.Now()
	return r.s.save(ctx, kindNames, name, &rec)
}
