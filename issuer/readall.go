package issuer

import (
	"context"
	"encoding/json"
	"slices"

	"github.com/caddyserver/certmagic"
)

// StoredResources reads every stored resource of kind (KindRequest,
// KindOrder or KindChallenge) of one issuer key, wherever it is kept —
// under its own key, in its request's record, in its name's record — each
// once, sorted by ID: the resource's own record when it has one, else its
// latest copy. A request is shown without the order and challenges stored
// with it. It lists and reads everything: for tests, the demo and
// debugging, not for the status views (Reader). It only reads.
func StoredResources(ctx context.Context, storage certmagic.Storage, issuerKey, kind string) ([]json.RawMessage, error) {
	c := &resourceCollector{s: store{storage: storage, issuerKey: issuerKey}, kind: kind, byID: map[string]collected{}}
	if err := c.ownRecords(ctx); err != nil {
		return nil, err
	}
	if kind != KindRequest {
		if err := c.requestCopies(ctx); err != nil {
			return nil, err
		}
	}
	if kind != KindChallenge {
		if err := c.nameCopies(ctx); err != nil {
			return nil, err
		}
	}
	return c.sorted(), nil
}

// resourceCollector gathers StoredResources' answer: one resource per ID.
type resourceCollector struct {
	s    store
	kind string
	byID map[string]collected
}

type collected struct {
	raw     json.RawMessage
	own     bool  // from the resource's own record, which wins
	updated int64 // of a copy: the latest wins
}

// offer keeps v for id unless what is kept already wins over it.
func (c *resourceCollector) offer(id string, v any, own bool, updated int64) error {
	if old, ok := c.byID[id]; ok && (old.own || (!own && old.updated >= updated)) {
		return nil
	}
	raw, err := encodeShown(v)
	if err != nil {
		return err
	}
	c.byID[id] = collected{raw, own, updated}
	return nil
}

// ownRecords offers the resources stored under their own keys.
func (c *resourceCollector) ownRecords(ctx context.Context) error {
	ids, err := c.s.list(ctx, c.kind)
	if err != nil {
		return err
	}
	for _, id := range ids {
		b, err := c.s.storage.Load(ctx, c.s.key(c.kind, id))
		if err != nil {
			continue
		}
		var v any
		switch c.kind {
		case KindRequest:
			v = &CertificateRequest{}
		case KindOrder:
			v = &Order{}
		default:
			v = &Challenge{}
		}
		if decodeResource(c.kind, id, b, v) != nil {
			continue
		}
		if err := c.offer(id, v, true, 0); err != nil {
			return err
		}
	}
	return nil
}

// requestCopies offers the orders or challenges stored with their
// requests.
func (c *resourceCollector) requestCopies(ctx context.Context) error {
	reqs, err := c.s.list(ctx, KindRequest)
	if err != nil {
		return err
	}
	for _, id := range reqs {
		var cr CertificateRequest
		if c.s.inspect(ctx, KindRequest, id, &cr) != nil {
			continue
		}
		if o := cr.OrderRecord; o != nil && c.kind == KindOrder {
			if err := c.offer(o.ID, o, false, o.Updated.UnixNano()); err != nil {
				return err
			}
		}
		for i := range cr.ChallengeRecords {
			if ch := &cr.ChallengeRecords[i]; c.kind == KindChallenge {
				if err := c.offer(ch.ID, ch, false, ch.Updated.UnixNano()); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// nameCopies offers the requests or orders in flight stored in their
// names' records.
func (c *resourceCollector) nameCopies(ctx context.Context) error {
	names, err := c.s.list(ctx, kindNames)
	if err != nil {
		return err
	}
	for _, name := range names {
		var rec NameRecord
		if c.s.inspect(ctx, kindNames, name, &rec) != nil {
			continue
		}
		switch {
		case c.kind == KindRequest && rec.Request != nil:
			if err := c.offer(rec.Request.ID, rec.Request, false, rec.Request.Updated.UnixNano()); err != nil {
				return err
			}
		case c.kind == KindOrder && rec.Order != nil:
			if err := c.offer(rec.Order.ID, rec.Order, false, rec.Order.Updated.UnixNano()); err != nil {
				return err
			}
		}
	}
	return nil
}

// sorted is what was collected, by ID.
func (c *resourceCollector) sorted() []json.RawMessage {
	ids := make([]string, 0, len(c.byID))
	for id := range c.byID {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	raws := make([]json.RawMessage, 0, len(ids))
	for _, id := range ids {
		raws = append(raws, c.byID[id].raw)
	}
	return raws
}
