package issuer

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"
)

// workflow is one Issue call: a CertificateRequest being reconciled.
type workflow struct {
	engine  *Engine
	opts    *Options
	store   store
	req     Request
	ids     []acme.Identifier
	name    string
	logger  *zap.Logger
	started time.Time

	acct  acme.Account
	rec   *NameRecord
	cr    *CertificateRequest
	order *orderRun

	// failedType is the challenge type whose validation the CA refused, so
	// the next attempt for the name starts with the next enabled type.
	// Challenges of one order run concurrently: guarded by failedMu.
	failedMu   sync.Mutex
	failedType string
}

func (w *workflow) setFailedType(t string) {
	w.failedMu.Lock()
	defer w.failedMu.Unlock()
	w.failedType = t
}

func (w *workflow) getFailedType() string {
	w.failedMu.Lock()
	defer w.failedMu.Unlock()
	return w.failedType
}

// saveTimeout bounds writes that must happen even when the request's
// context is done (recording a failure, cleaning up).
const saveTimeout = 15 * time.Second

func detached(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), saveTimeout)
}

func (w *workflow) run(ctx context.Context) (*certmagic.IssuedCertificate, error) {
	if w.opts.Observer != nil {
		ctx = context.WithValue(ctx, observerKey{}, w.opts.Observer)
	}
	if err := w.engine.ensureSentinel(ctx, w.store); err != nil {
		return nil, fmt.Errorf("%s: %w", w.name, err)
	}
	rec, err := w.loadNameRecord(ctx)
	if err != nil {
		err = fmt.Errorf("%s: %w", w.name, err)
		if w.req.OnDemand && errors.Is(err, ErrNewerSchema) {
			// a newer certflow owns the record: no retry here can help
			return nil, certmagic.ErrNoRetry{Err: err}
		}
		return nil, err
	}
	w.rec = rec

	now := time.Now()
	w.engine.backoffs.note(w.opts.IssuerKey, w.name, rec.NextAttempt, backoffReason(rec), now)
	if live, queued := w.engine.scheduler.Stats(); queued >= w.engine.scheduler.Limits().MaxQueued {
		// fail before creating anything: the queue is this process's
		// capacity, not the name's fault, so no backoff either
		return nil, certmagic.ErrNoRetry{Err: fmt.Errorf("%s: %w (%d live, %d queued)", w.name, ErrQueueFull, live, queued)}
	}
	if w.req.OnDemand && now.Before(rec.NextAttempt) {
		// a name that just failed is not re-ordered on every handshake
		return nil, certmagic.ErrNoRetry{Err: fmt.Errorf("%s: %s", w.name, backoffReason(rec))}
	}

	w.cr = &CertificateRequest{
		Version:     SchemaVersion,
		ID:          newID(now),
		Name:        w.name,
		Identifiers: identifierValues(w.ids),
		CSR:         string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: w.req.CSR.Raw})),
		OnDemand:    w.req.OnDemand,
		State:       RequestPending,
		Attempt:     rec.Failures + 1,
		Created:     now,
		Updated:     now,
	}
	// written with the order it produces (or its failure): one write less
	w.observer().RequestChanged(*w.cr)
	w.logger.Info("certificate request created", zapRequest(w.cr.ID), zapState(w.cr.State),
		zap.Bool("on_demand", w.req.OnDemand), zap.Int("attempt", w.cr.Attempt))

	issued, err := w.obtain(ctx)
	if err != nil {
		return nil, w.recordFailure(ctx, err)
	}
	w.recordSuccess(ctx)
	return issued, nil
}

// obtain runs the Order to completion and returns the chain.
func (w *workflow) obtain(ctx context.Context) (*certmagic.IssuedCertificate, error) {
	acct, err := w.engine.account(ctx, w.opts.Storage)
	if err != nil {
		return nil, fmt.Errorf("ACME account: %w", err)
	}
	w.acct = acct

	o, err := w.resumeOrCreateOrder(ctx)
	if err != nil {
		return nil, err
	}
	w.order = o
	if w.cr.Order != o.order.ID { // resumed: the request now points at it
		w.cr.Order = o.order.ID
		if err := w.saveRequest(ctx); err != nil {
			return nil, err
		}
	}
	return o.complete(ctx)
}

func (w *workflow) recordSuccess(ctx context.Context) {
	ctx, cancel := detached(ctx)
	defer cancel()
	now := time.Now()
	w.cr.State, w.cr.Reason, w.cr.Updated = RequestReady, "", now
	w.cr.Took = Duration(now.Sub(w.started))
	// the valid order, the ready request and the name: independent writes.
	// The name is written only when it has a failure to forget: its
	// current order, now valid, is never resumed (resumeOrder skips a
	// finished order), so clearing it is not worth a synced write.
	writes := []func() error{
		func() error { return w.order.setState(ctx, OrderValid, "") },
		w.saveRequestFunc(ctx),
	}
	w.engine.backoffs.note(w.opts.IssuerKey, w.name, time.Time{}, "", now)
	if w.rec.Failures != 0 || !w.rec.NextAttempt.IsZero() || w.rec.LastError != "" {
		w.rec.Failures, w.rec.NextAttempt, w.rec.LastError, w.rec.CurrentOrder = 0, time.Time{}, "", ""
		writes = append(writes, w.saveNameRecordFunc(ctx))
	}
	if err := parallel(writes...); err != nil {
		w.logger.Error("recording the issued certificate", zapRequest(w.cr.ID), zap.Error(err))
	}
	w.observer().RequestChanged(*w.cr)
	w.logger.Info("certificate issued", zapRequest(w.cr.ID), zapOrder(w.cr.Order),
		zapState(RequestReady), zapTook(now.Sub(w.started)))
}

// recordFailure marks the CertificateRequest failed, sets the name's next
// allowed attempt (doubling backoff), and returns the error certmagic gets:
// ErrNoRetry for on-demand requests (the backoff owns the retry schedule),
// a normal error for managed names (certmagic's retry ladder keeps going).
func (w *workflow) recordFailure(ctx context.Context, cause error) error {
	ctx, cancel := detached(ctx)
	defer cancel()
	now := time.Now()
	reason := cause.Error()

	var held *HeldBackError
	nextAttempt := now
	switch {
	case errors.As(cause, &held):
		// a rate limit, not a failure of the name: no backoff of its own
		nextAttempt = held.Until
	case errors.Is(cause, ErrQueueFull):
		// this process's capacity, not the name's fault
	case errors.Is(cause, ErrNewerSchema):
		// a record a newer certflow wrote (a rolling upgrade): nobody's fault
	default:
		w.rec.Failures++
		wait := backoffFor(w.rec.Failures, w.opts.BackoffInitial, w.opts.BackoffMax)
		w.rec.NextAttempt = now.Add(wait)
		w.rec.LastError = reason
		nextAttempt = w.rec.NextAttempt
		if failed := w.getFailedType(); failed != "" {
			w.rec.TypeOffset = nextTypeOffset(w.opts.ChallengeTypes, failed)
		}
		w.observer().BackoffStarted(w.name, w.rec.NextAttempt, reason)
		w.engine.backoffs.note(w.opts.IssuerKey, w.name, w.rec.NextAttempt, backoffReason(w.rec), now)
	}
	w.cr.State, w.cr.Reason, w.cr.Updated = RequestFailed, reason, now
	w.cr.NextAttempt = nextAttempt
	w.cr.Took = Duration(now.Sub(w.started))
	if err := parallel(w.saveNameRecordFunc(ctx), w.saveRequestFunc(ctx)); err != nil {
		w.logger.Error("recording the failure", zapRequest(w.cr.ID), zap.Error(err))
	}
	w.logger.Error("certificate request failed", zapRequest(w.cr.ID), zapOrder(w.cr.Order),
		zapState(RequestFailed), zapReason(reason), zapTook(now.Sub(w.started)),
		zap.Int("failures", w.rec.Failures), zap.Time("next_attempt", nextAttempt))
	w.observer().RequestChanged(*w.cr)

	err := fmt.Errorf("%s: %w (next attempt at %s)", w.name, cause, nextAttempt.UTC().Format(time.RFC3339))
	if w.req.OnDemand {
		return certmagic.ErrNoRetry{Err: err}
	}
	return err
}

// backoffReason is the stable message of a name backing off.
func backoffReason(rec *NameRecord) string {
	return fmt.Sprintf("backing off after %d failed attempt(s), last: %s; next attempt at %s",
		rec.Failures, rec.LastError, rec.NextAttempt.UTC().Format(time.RFC3339))
}

// backoffFor is the wait after the n-th consecutive failure (n ≥ 1).
func backoffFor(n int, initial, max time.Duration) time.Duration {
	d := initial
	for i := 1; i < n && d < max; i++ {
		d *= 2
	}
	return min(d, max)
}

// nextTypeOffset rotates the type preference past the type that failed.
func nextTypeOffset(types []string, failed string) int {
	for i, t := range types {
		if t == failed {
			return (i + 1) % len(types)
		}
	}
	return 0
}

func (w *workflow) loadNameRecord(ctx context.Context) (*NameRecord, error) {
	var rec NameRecord
	err := w.store.load(ctx, kindNames, w.name, &rec)
	switch {
	case err == nil:
		return &rec, nil
	case errors.Is(err, fs.ErrNotExist):
		// absence is not proof: make sure the store answers before
		// treating the name as new (which forgets any backoff)
		if err := w.store.confirmAbsent(ctx, w.store.key(kindNames, w.name)); err != nil {
			return nil, err
		}
	case errors.Is(err, ErrCorrupt):
		w.logger.Warn("name record is corrupt; starting clean", zap.Error(err))
	default:
		return nil, err
	}
	return &NameRecord{Version: SchemaVersion, Name: w.name}, nil
}

func (w *workflow) saveNameRecord(ctx context.Context) error {
	w.rec.Version, w.rec.Updated = SchemaVersion, time.Now()
	if w.cr != nil {
		w.rec.LastRequest = w.cr.ID
	}
	return w.store.save(ctx, kindNames, w.name, w.rec)
}

func (w *workflow) saveRequest(ctx context.Context) error {
	w.cr.Updated = time.Now()
	if err := w.store.saveResource(ctx, KindRequest, w.cr.ID, w.cr.Name, w.cr.indexed, w.cr.State, w.cr); err != nil {
		return err
	}
	w.cr.indexed = w.cr.State
	return nil
}

func identifierValues(ids []acme.Identifier) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = id.Value
	}
	return out
}

func (w *workflow) observer() Observer {
	if w.opts.Observer != nil {
		return w.opts.Observer
	}
	return nopObserver{}
}

func (w *workflow) saveNameRecordFunc(ctx context.Context) func() error {
	return func() error { return w.saveNameRecord(ctx) }
}

func (w *workflow) saveRequestFunc(ctx context.Context) func() error {
	return func() error { return w.saveRequest(ctx) }
}
