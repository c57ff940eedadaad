package issuer

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"go.uber.org/zap"
)

// onDemandBudget is how long an on-demand request may take in all: Caddy's
// read-header timeout (60 s) bounds the waiting handshake, less a margin.
const onDemandBudget = 45 * time.Second

// managedMaxHold is the longest a managed (background) request waits for a
// rate limit before it fails and leaves the retry to certmagic's ladder.
const managedMaxHold = time.Hour

// HeldBackError means a new order was not attempted because of a rate limit
// (the CA's Retry-After or the configured order rate limit) that would
// outlast what the request could wait. It is not a failure of the name.
type HeldBackError struct {
	Until  time.Time
	Reason string
}

func (e *HeldBackError) Error() string {
	return fmt.Sprintf("new orders are held back until %s: %s", e.Until.UTC().Format(time.RFC3339), e.Reason)
}

// blockRecord is an account-wide hold on new orders after a 429 from the CA.
// It is stored so every node of a cluster honours it, and written so that
// the latest deadline wins.
type blockRecord struct {
	Version int       `json:"version"`
	Until   time.Time `json:"until"`
	Reason  string    `json:"reason"`
	Updated time.Time `json:"updated"`
}

const kindBlocks = "blocks"

// budgetLeft is how long this request may still wait.
func (w *workflow) budgetLeft() time.Duration {
	if w.req.OnDemand {
		return time.Until(w.started.Add(onDemandBudget))
	}
	return managedMaxHold
}

// waitForOrderSlot holds a new order back while the CA's Retry-After is in
// force for the account or the order rate limit is reached, failing at once
// with a HeldBackError when the wait is longer than the request can afford.
func (w *workflow) waitForOrderSlot(ctx context.Context) error {
	block, err := w.engine.loadBlock(ctx, w.store)
	if err != nil {
		return err
	}
	now := time.Now()
	if block.Until.After(now) {
		if wait := block.Until.Sub(now); wait > w.budgetLeft() {
			return &HeldBackError{Until: block.Until, Reason: "the CA asked to wait (Retry-After): " + block.Reason}
		}
		w.recordHold(ctx, block.Until, "the CA asked to wait (Retry-After): "+block.Reason)
		if err := sleepCtx(ctx, block.Until.Sub(now)); err != nil {
			return err
		}
		now = time.Now()
	}
	wait, ok := w.engine.limiter.reserve(now, w.budgetLeft())
	if !ok {
		return &HeldBackError{Until: now.Add(wait), Reason: fmt.Sprintf("order rate limit of %d per %s for this account in this process",
			w.engine.limiter.n, w.engine.limiter.window)}
	}
	if wait > 0 {
		w.recordHold(ctx, now.Add(wait), fmt.Sprintf("order rate limit of %d per %s reached", w.engine.limiter.n, w.engine.limiter.window))
	}
	return sleepCtx(ctx, wait)
}

// recordHold writes on the CertificateRequest that it waits for a rate limit
// and until when, so a status view shows why it is pending.
func (w *workflow) recordHold(ctx context.Context, until time.Time, reason string) {
	w.logger.Info("new order held back; waiting", zap.Time("until", until), zapReason(reason))
	w.cr.Reason = "waiting until " + until.UTC().Format(time.RFC3339) + ": " + reason
	w.cr.NextAttempt = until
	if err := w.saveRequest(ctx); err != nil {
		w.logger.Warn("recording the wait on the certificate request", zap.Error(err))
	}
}

// loadBlock returns the account's hold on new orders, from memory or storage.
func (e *Engine) loadBlock(ctx context.Context, s store) (blockRecord, error) {
	e.blockMu.Lock()
	mem := e.block
	e.blockMu.Unlock()
	var stored blockRecord
	err := s.load(ctx, kindBlocks, e.cfg.accountUser(), &stored)
	switch {
	case err == nil, errors.Is(err, fs.ErrNotExist), errors.Is(err, ErrCorrupt):
		// a missing block is only believed once the store is known to
		// answer: the name record load has checked the sentinel already
	default:
		return mem, err
	}
	if stored.Until.After(mem.Until) {
		return stored, nil
	}
	return mem, nil
}

// recordBlock holds new orders for the account until the given time, in
// memory and in storage; a later deadline already recorded wins.
func (e *Engine) recordBlock(ctx context.Context, s store, until time.Time, reason string) {
	e.blockMu.Lock()
	if until.After(e.block.Until) {
		e.block = blockRecord{Version: SchemaVersion, Until: until, Reason: reason, Updated: time.Now()}
	}
	mem := e.block
	e.blockMu.Unlock()

	var stored blockRecord
	if err := s.load(ctx, kindBlocks, e.cfg.accountUser(), &stored); err == nil && !stored.Until.Before(mem.Until) {
		return
	} else if errors.Is(err, ErrNewerSchema) {
		e.logger.Warn("not recording the CA's rate limit over a record a newer certflow wrote", zap.Error(err))
		return
	}
	if err := s.save(ctx, kindBlocks, e.cfg.accountUser(), mem); err != nil {
		e.logger.Error("recording the CA's rate limit", zap.Error(err))
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
