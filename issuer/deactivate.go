package issuer

import (
	"context"
	"time"

	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"
)

// deactivatePending gives up, at the CA, the authorizations of an order
// certflow will never resume that are still pending, so they do not count
// against the account's pending authorizations. Valid ones are left alone
// (deactivating them, as acmez's high-level client does, would end their
// reuse).
func (e *Engine) deactivatePending(ctx context.Context, acct acme.Account, logger *zap.Logger, orderID string, authzURLs []string) {
	for _, u := range authzURLs {
		var authz acme.Authorization
		err := e.call(ctx, opAuthorization, "reading authorization "+u, callMode{interactive: true}, func(ctx context.Context) error {
			var err error
			authz, err = e.ca.GetAuthorization(ctx, acct, u)
			return err
		})
		if err != nil || authz.Status != acme.StatusPending {
			continue
		}
		err = e.call(ctx, opDeactivate, "deactivating authorization "+u, callMode{interactive: true}, func(ctx context.Context) error {
			_, err := e.ca.DeactivateAuthorization(ctx, acct, u)
			return err
		})
		if err != nil {
			logger.Warn("deactivating a pending authorization of an abandoned order", zapOrder(orderID), zap.String("authorization", u), zap.Error(err))
			continue
		}
		logger.Info("deactivated a pending authorization of an abandoned order", zapOrder(orderID), zap.String("authorization", u))
	}
}

// loadedAccount is the engine's account if this process has it already:
// maintenance never looks one up or registers one.
func (e *Engine) loadedAccount() (acme.Account, bool) {
	e.accountMu.Lock()
	defer e.accountMu.Unlock()
	if e.acct == nil {
		return acme.Account{}, false
	}
	return *e.acct, true
}

// endOrphanedOrder ends the order of an abandoned challenge when no
// request will resume it (the name's record points at another order, or
// at none), and deactivates its pending authorizations at the CA. The
// order the name's record points at is left as it is: the next request
// for the name resumes it, and its pending authorization is what that
// request solves. Only an order with a record of its own can need it: one
// that lives in its name's record is that record's current order, and
// one in its request's record ended with that request.
func (j *judge) endOrphanedOrder(ctx context.Context, ch *Challenge, now time.Time) {
	if ch.Order == "" {
		return
	}
	var o Order
	if err := j.s.load(ctx, KindOrder, ch.Order, &o); err != nil || IsFinal(KindOrder, o.State) {
		return
	}
	var rec NameRecord
	err := j.s.load(ctx, kindNames, o.Name, &rec)
	switch {
	case isNotExist(err):
		if j.s.confirmAbsent(ctx, j.s.key(kindNames, o.Name)) != nil {
			return
		}
	case err != nil:
		return
	case rec.CurrentOrder == o.ID:
		return
	}
	o.Version, o.State, o.Reason, o.Updated = SchemaVersion, OrderErrored, "abandoned: no request will resume it, and its challenge "+ch.ID+" was abandoned", now
	if err := j.s.saveResource(ctx, KindOrder, o.ID, o.Name, o.State, &o); err != nil {
		j.logger.Warn("recording an abandoned order", zapOrder(o.ID), zap.Error(err))
		return
	}
	j.logger.Info("ended an abandoned order", zapOrder(o.ID), zapName(o.Name), zapReason(o.Reason))
	// only with the account that made it: a policy this engine knows
	acct, ok := j.e.loadedAccount()
	if !ok || !j.m.knowsPolicy(ch.Policy) {
		return
	}
	j.e.deactivatePending(ctx, acct, j.logger, o.ID, o.Authorizations)
}
