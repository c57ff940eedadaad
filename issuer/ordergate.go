package issuer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"
)

// OnDemandBudget is how long an on-demand request may take in all: Caddy's
// read-header timeout (60 s) bounds the waiting handshake, less a margin.
// A hold or wait longer than that fails the handshake at once.
const OnDemandBudget = 45 * time.Second

// managedMaxHold is the longest a managed (background) request waits for a
// rate limit before it fails and leaves the retry to certmagic's ladder.
const managedMaxHold = time.Hour

// budgetLeft is how long this request may still wait.
func (w *workflow) budgetLeft() time.Duration {
	if w.req.OnDemand {
		return time.Until(w.started.Add(w.opts.OnDemandBudget))
	}
	return managedMaxHold
}

// waitForOrderSlot holds a new order back while a hold covers its names
// (their own, their registered domain's, the account's), while the account
// probes one order at a time after an account-wide hold, or while the
// order rate limit is reached. A wait longer than the request can afford
// fails at once as held (not a failure of the name). The returned func
// MUST be called with the new-order request's outcome.
func (w *workflow) waitForOrderSlot(ctx context.Context) (answered func(error), err error) {
	for range maxHoldWaits {
		now := time.Now()
		h, held := w.holdOver(ctx, now)
		if !held {
			break
		}
		if h.Until.Sub(now) > w.budgetLeft() {
			return nil, errHeld(h)
		}
		w.recordWait(ctx, h.Until, fmt.Sprintf("new orders for %s are held (%s): %s", h.Scope, h.Limit, h.Reason))
		if err := sleepCtx(ctx, time.Until(h.Until)); err != nil {
			return nil, cutOff(ctx, PartyHold, err)
		}
	}
	leave, err := w.engine.watch.enter(ctx, w.req.OnDemand)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	lim := w.engine.orderLimiter()
	wait, ok := lim.reserve(now, w.budgetLeft())
	if !ok {
		leave(false)
		return nil, heldUntil(now.Add(wait), fmt.Sprintf("order rate limit of %d per %s for this account in this process",
			lim.n, lim.window))
	}
	if wait > 0 {
		w.recordWait(ctx, now.Add(wait), fmt.Sprintf("order rate limit of %d per %s reached", lim.n, lim.window))
		if err := sleepCtx(ctx, wait); err != nil {
			leave(false)
			return nil, cutOff(ctx, PartyHold, err)
		}
	}
	return func(err error) {
		leave(err == nil)
		w.engine.newOrderAnswered(ctx, w.store, w.names, err)
	}, nil
}

// maxHoldWaits bounds waitForOrderSlot's loop: each round waits for a hold
// to end, and a new one may have begun meanwhile.
const maxHoldWaits = 16

// recordWait writes on the CertificateRequest that it waits, why and until
// when, so a status view shows why it is pending.
func (w *workflow) recordWait(ctx context.Context, until time.Time, reason string) {
	w.logger.Info("new order held back; waiting", zap.Time("until", until), zapReason(reason))
	w.cr.Reason = "waiting until " + until.UTC().Format(time.RFC3339) + ": " + reason
	w.cr.NextAttempt = until
	if err := w.commitRequest(ctx); err != nil {
		w.logger.Warn("recording the wait on the certificate request", zap.Error(err))
	}
}

// newOrderAnswered learns from a new-order request's outcome: a 429 holds
// what the CA limited (limitScope), every node sharing the storage, until
// the CA's Retry-After; the account is held for an account-wide limit, or
// when most recent new-orders met 429s of unrecognised scope (accountWatch).
func (e *Engine) newOrderAnswered(ctx context.Context, s store, names []string, err error) {
	var limited *RateLimitedError
	if !errors.As(err, &limited) {
		if err == nil || isRefusal(err) {
			e.watch.record(false, "")
		}
		return
	}
	ctx, cancel := detached(ctx)
	defer cancel()
	now := time.Now()
	user := e.cfg.accountUser()
	limit, scope := limitScope(limited.Detail, names, user)
	domain, _ := registeredDomain(names)
	holdAccount := e.watch.record(limit == unrecognisedLimit, domain)
	table := e.holdsFor(s)
	if scope.Kind == ScopeAccount {
		holdAccount = true
	} else if err := table.put(ctx, s, Hold{Scope: scope, Until: limited.Until, Reason: limited.Detail, Limit: limit}); err != nil {
		e.logger.Error("recording a rate-limit hold", zap.String("scope", scope.String()), zap.Error(err))
	}
	e.logger.Warn("the CA rate-limited a new order", zap.Strings("names", names), zap.String("limit", limit),
		zap.String("held", scope.String()), zap.Time("until", limited.Until), zapReason(limited.Detail))
	if !holdAccount {
		return
	}
	why := limit
	if scope.Kind != ScopeAccount {
		why = fmt.Sprintf("429s of unrecognised scope for %d of the last %d new orders", e.watch.unrecognised(), watchWindow)
	}
	until := limited.Until
	if limit := now.Add(AccountHoldMax); until.After(limit) {
		until = limit
	}
	if err := table.put(ctx, s, Hold{Scope: HoldScope{Kind: ScopeAccount, Value: user}, Until: until, Reason: limited.Detail, Limit: why}); err != nil {
		e.logger.Error("recording the account's hold", zap.Error(err))
	}
	e.watch.startProbing()
	e.logger.Warn("new orders for the account are held; then one order at a time until one succeeds",
		zap.Time("until", until), zap.String("limit", why), zapReason(limited.Detail))
}

// cutOff charges a step cut off by ctx: a shutdown or reload is nobody's,
// a request's own deadline whoever was failing it.
func cutOff(ctx context.Context, failing Party, err error) error {
	if errors.Is(ctx.Err(), context.Canceled) {
		return recharge(PartyNobody, err)
	}
	return recharge(failing, err)
}
