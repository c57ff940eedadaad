package issuer

import (
	"context"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"
)

// orderRun reconciles one Order: authorizations → challenges → finalize.
// The steps live in order_resume.go, order_create.go, order_authorize.go,
// order_challenges.go and order_finalize.go.
type orderRun struct {
	w     *workflow
	mu    sync.Mutex // guards order: its challenges are solved concurrently
	order *Order
	acme  acme.Order

	lastChange time.Time // of the order's state, for "took"
	resumed    bool      // loaded from storage rather than created now
	// stored is true when the order has a record of its own (orders/<id>,
	// written by an earlier version): its states are written there too.
	stored bool
	// ended are the challenges this run ended, for the request's record
	// (guarded by mu).
	ended map[string]Challenge
}

// advance moves the order to a state in memory and tells the observer,
// with the time since its previous state. Nothing is written: see commit.
func (r *orderRun) advance(state, reason string) {
	r.mu.Lock()
	r.order.State, r.order.Reason = state, reason
	now := time.Now()
	took := now.Sub(r.lastChange)
	r.lastChange = now
	snapshot := *r.order
	r.mu.Unlock()
	r.w.observer().OrderChanged(snapshot, took)
}

// commitOwn writes the order as it is now under its own key, when it has
// one (stored): otherwise it is written with the name's record while in
// flight and with its request's record at the end (records.go).
func (r *orderRun) commitOwn(ctx context.Context) error {
	if !r.stored {
		return nil
	}
	o := r.snapshot()
	o.Updated = time.Now()
	r.mu.Lock()
	r.order.Updated = o.Updated
	r.mu.Unlock()
	return r.w.store.saveResource(ctx, KindOrder, o.ID, o.Name, o.State, o)
}

// reach advances the order to state; a final state of an order that has a
// record of its own is written there at once (see SaveRules).
func (r *orderRun) reach(ctx context.Context, state, reason string) error {
	r.advance(state, reason)
	if IsFinal(KindOrder, state) {
		return r.commitOwn(ctx)
	}
	return nil
}

// fail ends the order in a final failed state (invalid: the CA refused it
// or one of its authorizations; errored: certflow gave up), detached from
// ctx, and returns err. Its pending authorizations are deactivated at the
// CA in the background: the order is never resumed.
func (r *orderRun) fail(ctx context.Context, state string, err error) error {
	ctx, cancel := detached(ctx)
	defer cancel()
	if saveErr := r.reach(ctx, state, err.Error()); saveErr != nil {
		r.w.logger.Error("recording failed order", zapOrder(r.order.ID), zap.Error(saveErr))
	}
	r.w.logger.Error("order failed", zapOrder(r.order.ID), zapState(state), zapReason(err.Error()))
	r.w.rec.CurrentOrder = ""
	r.w.deactivatePending(ctx, r.order.ID, r.acme.Authorizations)
	return err
}

// complete solves every authorization the CA does not already hold as
// valid, then finalizes the order and downloads the chain.
func (r *orderRun) complete(ctx context.Context) (*certmagic.IssuedCertificate, error) {
	if r.acme.Status == acme.StatusReady && r.resumed {
		// every authorization is valid: challenges a crashed process left
		// unfinished were validated by the CA; finish and clean them up
		for i := range r.acme.Authorizations {
			if _, err := r.finishStoredChallenge(ctx, i, r.w.ids[min(i, len(r.w.ids)-1)]); err != nil {
				return nil, err
			}
		}
	}
	if r.acme.Status == acme.StatusPending {
		if err := r.authorize(ctx); err != nil {
			if isRefusal(err) || isChallengeFailure(err) {
				return nil, r.fail(ctx, OrderInvalid, err)
			}
			// transient: the order stays resumable (written with the
			// name's record, recordFailure)
			r.advance(OrderPending, err.Error())
			return nil, err
		}
		r.advance(OrderReady, "")
	}
	return r.finalize(ctx)
}

// deactivatePending gives up, at the CA, the pending authorizations of an
// order certflow will never resume (Engine.deactivatePending), in the
// background, detached from the request.
func (w *workflow) deactivatePending(ctx context.Context, orderID string, authzURLs []string) {
	if len(authzURLs) == 0 {
		return
	}
	ctx, cancel := detached(ctx)
	go func() {
		defer cancel()
		w.engine.deactivatePending(ctx, w.acct, w.logger, orderID, authzURLs)
	}()
}

// problemText is the CA's own words of a problem document, if any.
func problemText(p *acme.Problem) string {
	if p == nil {
		return "no reason given"
	}
	if p.Detail != "" {
		return p.Detail
	}
	return p.Type
}
