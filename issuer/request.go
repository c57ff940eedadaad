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
	names   []string // the identifiers' values
	name    string   // the first: certmagic's name for the certificate
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

// mode is how this request's CA calls wait for an open circuit: not at all
// when a handshake is waiting.
func (w *workflow) mode() callMode {
	return callMode{interactive: w.req.OnDemand, observer: w.observer()}
}

// call runs one CA request for this workflow (Engine.call); a problem of
// the account is the account's, and holds the engine.
func (w *workflow) call(ctx context.Context, op caOp, step string, fn func(ctx context.Context) error) error {
	err := w.engine.call(ctx, op, step, w.mode(), fn)
	if party, _ := chargedTo(err); party == PartyAccount {
		return w.engine.accountFailed(ctx, w.store, err)
	}
	return err
}

func (w *workflow) run(ctx context.Context) (*certmagic.IssuedCertificate, error) {
	rec, err := w.loadNameRecord(ctx)
	if err != nil {
		return nil, w.refuse(fmt.Errorf("%s: %w", w.name, charge(PartyStorage, err)))
	}
	w.rec = rec
	now := time.Now()
	w.engine.backoffs.note(w.opts.IssuerKey, w.name, rec.NextAttempt, backoffReason(rec), now)
	if err := w.refuseEarly(ctx, now); err != nil {
		return nil, w.refuse(fmt.Errorf("%s: %w", w.name, err))
	}
	if w.req.OnDemand {
		w.rec.OnDemand = true // written with the next write of the record
	}

	forced := forcedRenewalOf(ctx)
	w.cr = &CertificateRequest{
		Version:     SchemaVersion,
		ID:          newID(now),
		Name:        w.name,
		Identifiers: w.names,
		CSR:         string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: w.req.CSR.Raw})),
		OnDemand:    w.req.OnDemand,
		Kind:        RequestIssuance,
		Renews:      w.findRenewal(ctx, forced != nil, now),
		State:       RequestPending,
		Attempt:     rec.Failures + 1,
		Created:     now,
		Updated:     now,
	}
	if w.cr.Renews != nil {
		w.cr.Kind = RequestRenewal
		w.rec.LastRenewal = w.cr.ID // written with the next write of the record
	}
	forced.report(w.cr.ID)
	// written with the order it produces, in the name's record (or with
	// its failure): see SaveRules
	w.observer().RequestChanged(*w.cr)
	fields := []zap.Field{zapRequest(w.cr.ID), zapState(w.cr.State), zap.Bool("on_demand", w.req.OnDemand),
		zap.Int("attempt", w.cr.Attempt), zap.String("kind", w.cr.Kind)}
	if r := w.cr.Renews; r != nil {
		fields = append(fields, zap.String("renews", r.Serial), zap.Time("renews_not_after", r.NotAfter),
			zap.String("renewal_reason", r.Reason))
	}
	w.logger.Info("certificate request created", fields...)

	issued, err := w.obtain(ctx)
	if err != nil {
		return nil, w.recordFailure(ctx, err)
	}
	w.recordSuccess(ctx)
	return issued, nil
}

// refuse is the error for a request refused before anything was written:
// certmagic.ErrNoRetry only when a handshake waits (its retry is the
// backoff's and the holds' business); a managed name's obtain keeps
// certmagic's retry ladder running.
func (w *workflow) refuse(err error) error {
	if w.req.OnDemand {
		return certmagic.ErrNoRetry{Err: err}
	}
	return err
}

// refuseEarly fails a request at once, writing nothing, when it cannot go
// anywhere now: the scheduler's queue is full (this process's capacity);
// the name backs off after a failure (when a handshake asks, or certmagic
// renews in the background a certificate a handshake asked for); or, when
// a handshake waits, a hold covers the name (its own, its registered
// domain's, the account's) for longer than it can wait, or the circuit to
// the CA is open.
func (w *workflow) refuseEarly(ctx context.Context, now time.Time) error {
	if live, queued := w.engine.scheduler.Stats(); queued >= w.engine.scheduler.Limits().MaxQueued {
		return charge(PartyProcess, fmt.Errorf("%w (%d live, %d queued)", ErrQueueFull, live, queued))
	}
	if (w.req.OnDemand || w.rec.OnDemand) && now.Before(w.rec.NextAttempt) {
		// a name that just failed is not re-ordered on every handshake
		return &ChargedError{Party: PartyName, Until: w.rec.NextAttempt, Err: errors.New(backoffReason(w.rec))}
	}
	if !w.req.OnDemand {
		return nil // a managed request waits for holds and the circuit where it meets them
	}
	if h, ok := w.holdOver(ctx, now); ok && h.Until.Sub(now) > w.budgetLeft() {
		return errHeld(h)
	}
	return w.engine.breaker.refusesNow(now)
}

// holdOver returns the longest hold over the request's names, refreshing
// this process's view of the stored holds when it is stale.
func (w *workflow) holdOver(ctx context.Context, now time.Time) (Hold, bool) {
	t := w.engine.holdsFor(w.store)
	t.refresh(ctx, w.store, now)
	return t.covering(w.names, w.engine.cfg.accountUser(), now)
}

// obtain runs the Order to completion and returns the chain.
func (w *workflow) obtain(ctx context.Context) (*certmagic.IssuedCertificate, error) {
	acct, err := w.engine.account(ctx, w.store, w.mode(), w.budgetLeft())
	if err != nil {
		return nil, fmt.Errorf("ACME account: %w", err)
	}
	w.acct = acct

	o, err := w.resumeOrCreateOrder(ctx)
	if err != nil {
		return nil, err
	}
	return o.complete(ctx)
}

func (w *workflow) recordSuccess(ctx context.Context) {
	ctx, cancel := detached(ctx)
	defer cancel()
	now := time.Now()
	w.cr.State, w.cr.Reason, w.cr.Updated = RequestReady, "", now
	w.cr.Took = Duration(now.Sub(w.started))
	w.order.advance(OrderValid, "")
	// the request's record, with the valid order and its challenges: the
	// issuance's one write. The name's record is written only when it has
	// a failure to forget: its current order, now valid, is never resumed
	// (findOrder finds it valid in the request's record), so clearing it
	// is not worth a write.
	writes := []func() error{
		func() error { return w.writeRequestRecord(ctx) },
		func() error { return w.order.commitOwn(ctx) },
	}
	w.engine.backoffs.note(w.opts.IssuerKey, w.name, time.Time{}, "", now)
	// a renewal is written too, so the record points at it (status shows
	// the last renewal's outcome); a resumed order wrote the record with it
	if w.rec.Failures != 0 || !w.rec.NextAttempt.IsZero() || w.rec.LastError != "" {
		w.rec.Failures, w.rec.NextAttempt, w.rec.LastError, w.rec.CurrentOrder = 0, time.Time{}, "", ""
		writes = append(writes, func() error { return w.writeNameRecord(ctx, false) })
	}
	if err := parallel(writes...); err != nil {
		w.logger.Error("recording the issued certificate", zapRequest(w.cr.ID), zap.Error(err))
	}
	w.observer().RequestChanged(*w.cr)
	w.logger.Info("certificate issued", zapRequest(w.cr.ID), zapOrder(w.cr.Order),
		zapState(RequestReady), zapTook(now.Sub(w.started)))
}

// recordFailure marks the CertificateRequest failed and charges the
// failure to whoever caused it (chargedTo): only a failure of the name
// grows its backoff; a hold, the account or an open circuit set the next
// attempt to the end of their wait; the CA's network, storage, this
// process's queue and a shutdown set nothing. It returns the error
// certmagic gets: ErrNoRetry for on-demand requests, a normal error for
// managed names (certmagic's retry ladder keeps going).
func (w *workflow) recordFailure(ctx context.Context, cause error) error {
	if errors.Is(ctx.Err(), context.Canceled) {
		cause = recharge(PartyNobody, cause) // a shutdown or reload cut it off
	}
	ctx, cancel := detached(ctx)
	defer cancel()
	now := time.Now()
	reason := cause.Error()
	party, until := chargedTo(cause)

	nextAttempt := now
	switch party {
	case PartyName:
		w.rec.Failures++
		w.rec.NextAttempt = now.Add(backoffFor(w.rec.Failures, w.opts.BackoffInitial, w.opts.BackoffMax))
		w.rec.LastError = reason
		nextAttempt = w.rec.NextAttempt
		if failed := w.getFailedType(); failed != "" {
			w.rec.TypeOffset = nextTypeOffset(w.opts.ChallengeTypes, failed)
		}
		w.observer().BackoffStarted(w.name, w.rec.NextAttempt, reason)
		w.engine.backoffs.note(w.opts.IssuerKey, w.name, w.rec.NextAttempt, backoffReason(w.rec), now)
	case PartyHold, PartyAccount, PartyCA:
		if until.IsZero() && party == PartyCA {
			if st := w.engine.breaker.snapshot(); st.State != breakerClosed {
				until = st.Until
			}
		}
		if until.After(now) {
			nextAttempt = until
			w.observer().BackoffStarted(w.name, until, reason)
		}
	}
	w.cr.State, w.cr.Reason, w.cr.Updated = RequestFailed, reason, now
	w.cr.ChargedTo = party
	w.cr.NextAttempt = nextAttempt
	w.cr.Took = Duration(now.Sub(w.started))
	if err := parallel(func() error { return w.writeNameRecord(ctx, false) }, func() error { return w.writeRequestRecord(ctx) }); err != nil {
		w.logger.Error("recording the failure", zapRequest(w.cr.ID), zap.Error(err))
	}
	w.logger.Error("certificate request failed", zapRequest(w.cr.ID), zapOrder(w.cr.Order),
		zapState(RequestFailed), zapReason(reason), zap.String("charged_to", string(party)), zapTook(now.Sub(w.started)),
		zap.Int("failures", w.rec.Failures), zap.Time("next_attempt", nextAttempt))
	w.observer().RequestChanged(*w.cr)

	err := fmt.Errorf("%s: %w (next attempt at %s)", w.name, cause, nextAttempt.UTC().Format(time.RFC3339))
	if w.req.OnDemand {
		return certmagic.ErrNoRetry{Err: err}
	}
	return err
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
