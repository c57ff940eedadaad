package issuer

import (
	"context"
	"errors"
	"io/fs"
	"time"

	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"
)

// resumeOrCreateOrder resumes the name's stored Order if it is still usable,
// that is, not yet finalized (the CSR's key only lives as long as this
// process, so a finalized order is useless to a later request), and creates
// a new one otherwise.
func (w *workflow) resumeOrCreateOrder(ctx context.Context) (*orderRun, error) {
	if id := w.rec.CurrentOrder; id != "" {
		run, err := w.resumeOrder(ctx, id)
		if err != nil {
			return nil, err
		}
		if run != nil {
			return run, nil
		}
	}
	return w.createOrder(ctx)
}

// resumeOrder returns nil (and no error) when the stored order is not usable.
func (w *workflow) resumeOrder(ctx context.Context, id string) (*orderRun, error) {
	o, stored, err := w.findOrder(ctx, id)
	switch {
	case errors.Is(err, ErrCorrupt):
		w.logger.Warn("stored order is corrupt; creating a new one", zapOrder(id), zap.Error(err))
		return nil, nil
	case err != nil:
		return nil, err
	case o == nil:
		return nil, nil
	}
	switch o.State {
	case OrderPending, OrderReady:
		if why := w.orderTermsChanged(o); why != "" {
			w.replaceOrder(ctx, o, why)
			return nil, nil
		}
	case OrderProcessing:
		// finalized (or being finalized) with the CSR of an earlier
		// attempt, whose private key is gone: useless to this request
		w.replaceOrder(ctx, o, "it was finalized with the key of an earlier attempt")
		return nil, nil
	default:
		return nil, nil
	}
	var fresh acme.Order
	err = w.call(ctx, opOrder, "reading order "+o.URL, func(ctx context.Context) error {
		var err error
		fresh, err = w.engine.ca.GetOrder(ctx, w.acct, acme.Order{Location: o.URL})
		return err
	})
	if err != nil {
		if isRefusal(err) {
			w.replaceOrder(ctx, o, "the CA no longer serves it: "+problemDetail(err))
			return nil, nil
		}
		return nil, err
	}
	if fresh.Status != acme.StatusPending && fresh.Status != acme.StatusReady {
		w.replaceOrder(ctx, o, "it is "+fresh.Status+" at the CA")
		return nil, nil
	}
	fresh.Location = o.URL
	o.Request = w.cr.ID
	run := &orderRun{w: w, order: o, acme: fresh, lastChange: time.Now(), resumed: true, stored: stored}
	run.advance(fresh.Status, "")
	// written whatever the state: it now points at this request (see
	// SaveRules, "resumed"), with the request, in the name's record
	w.order = run
	w.cr.Order = o.ID
	if err := w.writeNameRecord(ctx, true); err != nil {
		return nil, err
	}
	if err := run.commitOwn(ctx); err != nil {
		return nil, err
	}
	w.logger.Info("resuming order", zapOrder(o.ID), zapState(o.State), zapRequest(w.cr.ID))
	// a token a crashed run left for the name is no answer of this
	// request's: this request holds the name's lock, so it can only be
	// stale (a challenge this run presents writes its own)
	w.removeStaleToken(ctx)
	return run, nil
}

// findOrder finds the name's current order: under its own key (an earlier
// version's layout, or an order that ended apart from its request), else
// in the record of the request that last had it (when that request ended),
// else in the name's record (in flight). It returns nil when it is nowhere
// (absence confirmed: the store answers), and whether it has a record of
// its own.
func (w *workflow) findOrder(ctx context.Context, id string) (o *Order, stored bool, err error) {
	var own Order
	err = w.store.load(ctx, KindOrder, id, &own)
	switch {
	case err == nil:
		return &own, true, nil
	case errors.Is(err, ErrCorrupt):
		return nil, false, err
	case !errors.Is(err, fs.ErrNotExist):
		return nil, false, err
	}
	if last := w.rec.LastRequest; last != "" {
		var cr CertificateRequest
		err := w.store.load(ctx, KindRequest, last, &cr)
		switch {
		case err == nil && cr.OrderRecord != nil && cr.OrderRecord.ID == id:
			return cr.OrderRecord, false, nil
		case err == nil, errors.Is(err, fs.ErrNotExist), errors.Is(err, ErrCorrupt):
		default:
			return nil, false, err
		}
	}
	if o := w.rec.Order; o != nil && o.ID == id {
		return o, false, nil
	}
	// absence is not proof: make sure the store answers before a new
	// order replaces the one the record points at
	if err := w.store.confirmAbsent(ctx, w.store.key(KindOrder, id)); err != nil {
		return nil, false, err
	}
	return nil, false, nil
}

// replaceOrder ends a stored order certflow will not resume, saying why; a
// new order replaces it. It is written under its own key: it ends apart
// from any request.
func (w *workflow) replaceOrder(ctx context.Context, o *Order, why string) {
	o.Version, o.State, o.Reason = SchemaVersion, OrderErrored, "replaced by a new order: "+why
	o.Updated = time.Now()
	if err := w.store.saveResource(ctx, KindOrder, o.ID, o.Name, o.State, o); err != nil {
		w.logger.Warn("recording replaced order", zapOrder(o.ID), zap.Error(err))
	}
	w.observer().OrderChanged(*o, 0)
	w.logger.Info("replacing order", zapOrder(o.ID), zapReason(o.Reason))
	w.deactivatePending(ctx, o.ID, o.Authorizations)
}
