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
	s := store{storage: storage, issuerKey: issuerKey}
	type found struct {
		raw     json.RawMessage
		own     bool
		updated int64
	}
	byID := map[string]found{}
	offer := func(id string, v any, own bool, updated int64) error {
		if old, ok := byID[id]; ok && (old.own || (!own && old.updated >= updated)) {
			return nil
		}
		raw, err := encodeShown(v)
		if err != nil {
			return err
		}
		byID[id] = found{raw, own, updated}
		return nil
	}
	ids, err := s.list(ctx, kind)
	if err != nil {
		return nil, err
	}
	for _, id := range ids {
		b, err := storage.Load(ctx, s.key(kind, id))
		if err != nil {
			continue
		}
		var v any
		switch kind {
		case KindRequest:
			v = &CertificateRequest{}
		case KindOrder:
			v = &Order{}
		default:
			v = &Challenge{}
		}
		if decodeResource(kind, id, b, v) != nil {
			continue
		}
		if err := offer(id, v, true, 0); err != nil {
			return nil, err
		}
	}
	if kind != KindRequest {
		reqs, err := s.list(ctx, KindRequest)
		if err != nil {
			return nil, err
		}
		for _, id := range reqs {
			var cr CertificateRequest
			if s.inspect(ctx, KindRequest, id, &cr) != nil {
				continue
			}
			if o := cr.OrderRecord; o != nil && kind == KindOrder {
				if err := offer(o.ID, o, false, o.Updated.UnixNano()); err != nil {
					return nil, err
				}
			}
			for i := range cr.ChallengeRecords {
				if ch := &cr.ChallengeRecords[i]; kind == KindChallenge {
					if err := offer(ch.ID, ch, false, ch.Updated.UnixNano()); err != nil {
						return nil, err
					}
				}
			}
		}
	}
	if kind != KindChallenge {
		names, err := s.list(ctx, kindNames)
		if err != nil {
			return nil, err
		}
		for _, name := range names {
			var rec NameRecord
			if s.inspect(ctx, kindNames, name, &rec) != nil {
				continue
			}
			switch {
			case kind == KindRequest && rec.Request != nil:
				if err := offer(rec.Request.ID, rec.Request, false, rec.Request.Updated.UnixNano()); err != nil {
					return nil, err
				}
			case kind == KindOrder && rec.Order != nil:
				if err := offer(rec.Order.ID, rec.Order, false, rec.Order.Updated.UnixNano()); err != nil {
					return nil, err
				}
			}
		}
	}
	out := make([]string, 0, len(byID))
	for id := range byID {
		out = append(out, id)
	}
	slices.Sort(out)
	raws := make([]json.RawMessage, 0, len(out))
	for _, id := range out {
		raws = append(raws, byID[id].raw)
	}
	return raws, nil
}
