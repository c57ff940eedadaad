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
	var o Order
	err := w.store.load(ctx, KindOrder, id, &o)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := w.store.confirmAbsent(ctx, w.store.key(KindOrder, id)); err != nil {
			return nil, err
		}
		return nil, nil
	case errors.Is(err, ErrCorrupt):
		w.logger.Warn("stored order is corrupt; creating a new one", zapOrder(id), zap.Error(err))
		return nil, nil
	case err != nil:
		return nil, err
	}
	o.indexed = indexUnknown
	switch o.State {
	case OrderPending, OrderReady:
		if why := w.orderTermsChanged(&o); why != "" {
			w.replaceOrder(ctx, &o, why)
			return nil, nil
		}
	case OrderProcessing:
		// finalized (or being finalized) with the CSR of an earlier
		// attempt, whose private key is gone: useless to this request
		w.replaceOrder(ctx, &o, "it was finalized with the key of an earlier attempt")
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
			w.replaceOrder(ctx, &o, "the CA no longer serves it: "+problemDetail(err))
			return nil, nil
		}
		return nil, err
	}
	if fresh.Status != acme.StatusPending && fresh.Status != acme.StatusReady {
		w.replaceOrder(ctx, &o, "it is "+fresh.Status+" at the CA")
		return nil, nil
	}
	fresh.Location = o.URL
	o.Request = w.cr.ID
	run := &orderRun{w: w, order: &o, acme: fresh, lastChange: time.Now(), resumed: true}
	run.advance(fresh.Status, "")
	// committed whatever the state: it now points at this request (see
	// SaveRules, "resumed")
	if err := run.commit(ctx); err != nil {
		return nil, err
	}
	w.logger.Info("resuming order", zapOrder(o.ID), zapState(o.State), zapRequest(w.cr.ID))
	return run, nil
}

// replaceOrder ends a stored order certflow will not resume, saying why; a
// new order replaces it.
func (w *workflow) replaceOrder(ctx context.Context, o *Order, why string) {
	o.State, o.Reason = OrderErrored, "replaced by a new order: "+why
	o.Updated = time.Now()
	if err := w.store.saveResource(ctx, KindOrder, o.ID, o.Name, o.indexed, o.State, o); err != nil {
		w.logger.Warn("recording replaced order", zapOrder(o.ID), zap.Error(err))
	}
	w.observer().OrderChanged(*o, 0)
	w.logger.Info("replacing order", zapOrder(o.ID), zapReason(o.Reason))
	w.deactivatePending(ctx, o.ID, o.Authorizations)
}
