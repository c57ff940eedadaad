package issuer

import (
	"context"
	"slices"
	"time"
)

// The workflow's writes (saves.go says when each happens): the name's
// record, which carries the request and the order in flight, and the
// request's own record at its end, which carries its order and
// challenges. A happy issuance writes these two, and the challenge's
// answer (the token), and nothing else.

// maxRecentRequests bounds NameRecord.Recent.
const maxRecentRequests = 32

// writeNameRecord writes the name's record. With inFlight, it carries the
// request and its order as they are now (when the order is made or
// resumed: what a restart resumes); otherwise the order still to resume,
// if any (rec.CurrentOrder), and no request.
func (w *workflow) writeNameRecord(ctx context.Context, inFlight bool) error {
	rec := w.rec
	rec.Version, rec.Updated = SchemaVersion, time.Now()
	rec.Request = nil
	if w.cr != nil {
		rec.LastRequest = w.cr.ID
		rec.Recent = appendRecent(rec.Recent, w.cr.ID)
	}
	var order *Order // the order this request changed, to catalog
	switch {
	case w.order != nil && (inFlight || rec.CurrentOrder == w.order.order.ID):
		order = w.order.snapshot()
		rec.Order = order
	case rec.Order != nil && rec.CurrentOrder != "" && rec.Order.ID == rec.CurrentOrder:
		// the order to resume, which this request did not reach
	default:
		rec.Order = nil
	}
	if inFlight && w.cr != nil {
		w.cr.Updated = rec.Updated
		cr := *w.cr
		cr.OrderRecord, cr.ChallengeRecords = nil, nil
		rec.Request = &cr
	}
	if err := w.store.save(ctx, kindNames, w.name, rec); err != nil {
		return err
	}
	if rec.Request != nil {
		catalog.submit(w.store, KindRequest, rec.Request.ID, w.name, rec.Request.State, storedInName)
	}
	if order != nil && !w.order.stored {
		catalog.submit(w.store, KindOrder, order.ID, order.Name, order.State, storedInName)
	}
	catalog.noteExpiry(w.store, w.name, nameExpiry(rec, w.opts.BackoffMax, w.opts.RetentionAge))
	return nil
}

// appendRecent adds id to the recent requests, keeping the latest
// maxRecentRequests.
func appendRecent(recent []string, id string) []string {
	if n := len(recent); n > 0 && recent[n-1] == id {
		return recent
	}
	recent = append(slices.Clone(recent), id)
	if len(recent) > maxRecentRequests {
		recent = recent[len(recent)-maxRecentRequests:]
	}
	return recent
}

// writeRequestRecord writes the CertificateRequest under its own key, with
// its order and the challenges it ended (the final write of an issuance).
// An order or challenge that has a record of its own is written there
// (commitFinal); its copy here is for the status views.
func (w *workflow) writeRequestRecord(ctx context.Context) error {
	w.cr.Updated = time.Now()
	cr := *w.cr
	if w.order != nil {
		cr.OrderRecord = w.order.snapshot()
		cr.ChallengeRecords = w.order.challengeRecords()
	}
	if err := w.store.save(ctx, KindRequest, cr.ID, &cr); err != nil {
		return err
	}
	catalog.submit(w.store, KindRequest, cr.ID, cr.Name, cr.State, "")
	if o := cr.OrderRecord; o != nil && !w.order.stored {
		in := cr.ID
		if w.rec.CurrentOrder == o.ID && !IsFinal(KindOrder, o.State) {
			in = storedInName // still to resume: the name's record holds its current state
		}
		catalog.submit(w.store, KindOrder, o.ID, o.Name, o.State, in)
	}
	for _, ch := range cr.ChallengeRecords {
		if !ch.stored {
			catalog.submit(w.store, KindChallenge, ch.ID, ch.Name, ch.State, cr.ID)
		}
	}
	return nil
}

// commitRequest writes the CertificateRequest as it is now under its own
// key, without its order: a request waiting for a hold (ordergate.go),
// so the wait is visible.
func (w *workflow) commitRequest(ctx context.Context) error {
	w.cr.Updated = time.Now()
	return w.store.saveResource(ctx, KindRequest, w.cr.ID, w.cr.Name, w.cr.State, w.cr)
}

// snapshot is a copy of the order as it is now.
func (r *orderRun) snapshot() *Order {
	r.mu.Lock()
	defer r.mu.Unlock()
	o := *r.order
	o.Version, o.Updated = SchemaVersion, time.Now()
	o.Identifiers = slices.Clone(o.Identifiers)
	o.Authorizations = slices.Clone(o.Authorizations)
	o.Challenges = slices.Clone(o.Challenges)
	return &o
}

// challengeRecords are the challenges this run ended, in the order's
// order.
func (r *orderRun) challengeRecords() []Challenge {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Challenge, 0, len(r.ended))
	for _, id := range r.order.Challenges {
		if ch, ok := r.ended[id]; ok {
			out = append(out, ch)
		}
	}
	return out
}

// challengeEnded keeps a copy of a challenge that reached a final state,
// for the request's record.
func (r *orderRun) challengeEnded(ch *Challenge) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ended == nil {
		r.ended = map[string]Challenge{}
	}
	c := *ch
	c.Version, c.Updated = SchemaVersion, time.Now()
	if !slices.Contains(r.order.Challenges, c.ID) {
		r.order.Challenges = append(r.order.Challenges, c.ID)
	}
	r.ended[c.ID] = c
}

// nameExpiry is when a name's record may be forgotten: once nothing was
// written to it for the longer of the retention age and the longest
// failure backoff, counted from its last write or from the end of its
// backoff, whichever is later. By then the name's requests, orders and
// challenges have been trimmed (retention_age), and no backoff it could
// have been given is in force.
func nameExpiry(rec *NameRecord, backoffMax, retentionAge time.Duration) time.Time {
	from := rec.Updated
	if rec.NextAttempt.After(from) {
		from = rec.NextAttempt
	}
	return from.Add(max(backoffMax, retentionAge))
}
