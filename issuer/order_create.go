package issuer

import (
	"context"
	"errors"
	"time"

	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"
)

// maxRateLimitedOrderAttempts bounds new-order attempts that meet a 429.
const maxRateLimitedOrderAttempts = 3

// createOrder asks the CA for a new order, once the holds, the account's
// probing and the order rate limit let it go (waitForOrderSlot), and
// writes it with the request in the name's record (what a restart
// resumes): one write.
func (w *workflow) createOrder(ctx context.Context) (*orderRun, error) {
	var created acme.Order
	var start time.Time
	if err := w.checkOrderProfile(ctx); err != nil {
		return nil, err
	}
	replaces := w.replaces(ctx)
	refused := ""
	for attempt := 1; ; attempt++ {
		answered, err := w.waitForOrderSlot(ctx)
		if err != nil {
			return nil, err
		}
		start = time.Now()
		if replaces != "" {
			created, err = w.newOrderReplacing(ctx, replaces)
			if err != nil && isReplacementRefusal(err) {
				// made again at once without replaces, charged to nobody
				refused, replaces = problemDetail(err), ""
				w.cr.Renews.NoReplaces = "the CA refused replaces: " + refused
				w.logger.Info("the CA refused the order with replaces; ordering again without",
					zapRequest(w.cr.ID), zap.String("problem", problemType(err)), zapReason(refused))
			}
		}
		if replaces == "" {
			err = w.call(ctx, opNewOrder, "creating order", func(ctx context.Context) error {
				var err error
				created, err = w.engine.ca.NewOrder(ctx, w.acct, w.newOrderRequest(""))
				return err
			})
		}
		answered(err)
		var limited *RateLimitedError
		if errors.As(err, &limited) && attempt < maxRateLimitedOrderAttempts {
			continue // the hold it left decides: wait, or fail as held
		}
		if err != nil {
			return nil, err
		}
		break
	}
	now := time.Now()
	o := &Order{
		Version:        SchemaVersion,
		ID:             newID(now),
		Request:        w.cr.ID,
		Name:           w.name,
		Identifiers:    w.names,
		URL:            created.Location,
		Authorizations: created.Authorizations,
		Finalize:       created.Finalize,
		State:          created.Status,
		Expires:        created.Expires,
		Created:        now,
	}
	recordOrderTerms(o, created)
	o.Replaces, o.ReplacesRefused = replaces, refused
	if r := w.cr.Renews; r != nil {
		r.Replaces = replaces != ""
	}
	if created.Status == acme.StatusReady {
		// the CA already holds every authorization as valid: no challenge
		o.ReusedAuthzs = len(created.Authorizations)
	}
	run := &orderRun{w: w, order: o, acme: created, lastChange: now}
	w.rec.CurrentOrder = o.ID
	w.cr.Order, w.cr.Reason, w.cr.NextAttempt = o.ID, "", time.Time{}
	w.order = run
	if err := w.writeNameRecord(ctx, true); err != nil {
		return nil, err
	}
	w.observer().OrderCreated(*o, now.Sub(start))
	w.logger.Info("order created", zapOrder(o.ID), zapState(o.State), zapRequest(w.cr.ID),
		zap.Int("authorizations", len(o.Authorizations)), zap.Int("reused_authorizations", o.ReusedAuthzs),
		zap.String("replaces", o.Replaces), zapTook(now.Sub(start)))
	return run, nil
}

// newOrderReplacing asks for the new order with replaces. Every answer of
// the CA that is an ACME problem ends the call at once (no retry inside
// it, see callMode.problemsFinal): a refusal of replaces (even a 5xx for a
// serial the CA does not know) is answered by ordering again without it,
// and a 429 is held as any other. A problem of the account is left for
// that order to meet, so a refusal of replaces never holds the account.
func (w *workflow) newOrderReplacing(ctx context.Context, replaces string) (acme.Order, error) {
	var created acme.Order
	mode := w.mode()
	mode.problemsFinal = true
	err := w.engine.call(ctx, opNewOrder, "creating order (replacing "+replaces+")", mode, func(ctx context.Context) error {
		var err error
		created, err = w.engine.ca.NewOrder(ctx, w.acct, w.newOrderRequest(replaces))
		return err
	})
	return created, err
}
