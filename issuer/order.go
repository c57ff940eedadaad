package issuer

import (
	"bytes"
	"context"
	"crypto/x509"
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

// orderRun reconciles one Order: authorizations → challenges → finalize.
type orderRun struct {
	w     *workflow
	mu    sync.Mutex // guards order: its challenges are solved concurrently
	order *Order
	acme  acme.Order

	lastChange time.Time // of the order's state, for "took"
	resumed    bool      // loaded from storage rather than created now
}

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
	err = callCA(ctx, "reading order "+o.URL, func(ctx context.Context) error {
		var err error
		fresh, err = w.engine.client.GetOrder(ctx, w.acct, acme.Order{Location: o.URL})
		return err
	})
	if err != nil {
		if isFinalError(err) {
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
	o.Request, o.State = w.cr.ID, fresh.Status
	run := &orderRun{w: w, order: &o, acme: fresh, lastChange: time.Now(), resumed: true}
	if err := run.save(ctx); err != nil {
		return nil, err
	}
	w.logger.Info("resuming order", zapOrder(o.ID), zapState(o.State), zapRequest(w.cr.ID))
	return run, nil
}

func (w *workflow) replaceOrder(ctx context.Context, o *Order, why string) {
	o.State, o.Reason = OrderErrored, "replaced by a new order: "+why
	o.Updated = time.Now()
	if err := w.store.saveResource(ctx, KindOrder, o.ID, o.Name, o.indexed, o.State, o); err != nil {
		w.logger.Warn("recording replaced order", zapOrder(o.ID), zap.Error(err))
	}
	w.observer().OrderChanged(*o, 0)
	w.logger.Info("replacing order", zapOrder(o.ID), zapReason(o.Reason))
}

// maxRateLimitedOrderAttempts bounds new-order attempts that meet a 429.
const maxRateLimitedOrderAttempts = 3

func (w *workflow) createOrder(ctx context.Context) (*orderRun, error) {
	var created acme.Order
	var start time.Time
	for attempt := 1; ; attempt++ {
		if err := w.waitForOrderSlot(ctx); err != nil {
			return nil, err
		}
		start = time.Now()
		tmpl, err := w.newOrderTemplate(ctx)
		if err != nil {
			return nil, err
		}
		err = callCANoWaitOn429(ctx, "creating order", func(ctx context.Context) error {
			var err error
			created, err = w.engine.client.NewOrder(ctx, w.acct, tmpl)
			return err
		})
		var limited *RateLimitedError
		if errors.As(err, &limited) {
			// no new order for this account, on any node, before the
			// CA's Retry-After has passed
			w.engine.recordBlock(ctx, w.store, limited.Until, problemDetail(limited.Err))
			w.observer().BackoffStarted(w.name, limited.Until, "rate limited by the CA")
			w.logger.Warn("the CA rate-limited new orders", zap.Time("until", limited.Until), zapReason(problemDetail(limited.Err)))
			if attempt < maxRateLimitedOrderAttempts {
				continue
			}
			return nil, &HeldBackError{Until: limited.Until, Reason: "the CA keeps rate-limiting new orders: " + problemDetail(limited.Err)}
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
		Identifiers:    identifierValues(w.ids),
		URL:            created.Location,
		Authorizations: created.Authorizations,
		Finalize:       created.Finalize,
		State:          created.Status,
		Expires:        created.Expires,
		Created:        now,
	}
	recordOrderTerms(o, created)
	if created.Status == acme.StatusReady {
		// the CA already holds every authorization as valid: no challenge
		o.ReusedAuthzs = len(created.Authorizations)
	}
	run := &orderRun{w: w, order: o, acme: created, lastChange: now}
	w.rec.CurrentOrder = o.ID
	w.cr.Order, w.cr.Reason, w.cr.NextAttempt = o.ID, "", time.Time{}
	// the order, the name's pointer to it (what a restart resumes) and the
	// request are independent writes
	if err := parallel(
		func() error { return run.save(ctx) },
		w.saveNameRecordFunc(ctx),
		w.saveRequestFunc(ctx),
	); err != nil {
		return nil, err
	}
	w.observer().OrderChanged(*o, now.Sub(start))
	w.logger.Info("order created", zapOrder(o.ID), zapState(o.State), zapRequest(w.cr.ID),
		zap.Int("authorizations", len(o.Authorizations)), zap.Int("reused_authorizations", o.ReusedAuthzs),
		zapTook(now.Sub(start)))
	return run, nil
}

func (r *orderRun) save(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.order.Version, r.order.Updated = SchemaVersion, time.Now()
	if err := r.w.store.saveResource(ctx, KindOrder, r.order.ID, r.order.Name, r.order.indexed, r.order.State, r.order); err != nil {
		return err
	}
	r.order.indexed = r.order.State
	return nil
}

// setState moves the order to a state and writes it.
func (r *orderRun) setState(ctx context.Context, state, reason string) error {
	r.changeState(state, reason)
	return r.save(ctx)
}

// step moves the order to a state without writing it; the state is written
// with the next persisted change.
func (r *orderRun) step(state string) {
	r.changeState(state, "")
}

// changeState records a state and tells the observer, with the time since
// the previous one.
func (r *orderRun) changeState(state, reason string) {
	r.mu.Lock()
	r.order.State, r.order.Reason = state, reason
	now := time.Now()
	took := now.Sub(r.lastChange)
	r.lastChange = now
	snapshot := *r.order
	r.mu.Unlock()
	r.w.observer().OrderChanged(snapshot, took)
}

// fail records a final order failure, detached from ctx, and returns err.
func (r *orderRun) fail(ctx context.Context, state string, err error) error {
	ctx, cancel := detached(ctx)
	defer cancel()
	if saveErr := r.setState(ctx, state, err.Error()); saveErr != nil {
		r.w.logger.Error("recording failed order", zapOrder(r.order.ID), zap.Error(saveErr))
	}
	r.w.logger.Error("order failed", zapOrder(r.order.ID), zapState(state), zapReason(err.Error()))
	if state == OrderInvalid || state == OrderErrored {
		r.w.rec.CurrentOrder = ""
	}
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
			state := OrderPending // transient: the order stays resumable
			if isFinalError(err) || errors.Is(err, errChallengeFailed) {
				state = OrderInvalid
			}
			if state == OrderPending {
				if saveErr := r.setState(context.WithoutCancel(ctx), OrderPending, err.Error()); saveErr != nil {
					r.w.logger.Error("recording order error", zapOrder(r.order.ID), zap.Error(saveErr))
				}
				return nil, err
			}
			return nil, r.fail(ctx, state, err)
		}
		r.step(OrderReady)
	}
	return r.finalize(ctx)
}

// authorize solves the order's authorizations concurrently; an
// authorization that is already valid needs no Challenge.
func (r *orderRun) authorize(ctx context.Context) error {
	urls := r.acme.Authorizations
	if len(urls) == 1 {
		// one name, the usual case: solved on the caller's goroutine, so
		// an order waiting in the scheduler's queue or in its self-check
		// holds no goroutine (and stack) beyond its caller's
		return r.authorizeOne(ctx, 0, urls[0])
	}
	errs := make([]error, len(urls))
	var wg sync.WaitGroup
	for i, u := range urls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = r.authorizeOne(ctx, i, u)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (r *orderRun) authorizeOne(ctx context.Context, index int, authzURL string) error {
	w := r.w
	var authz acme.Authorization
	err := callCA(ctx, "reading authorization "+authzURL, func(ctx context.Context) error {
		var err error
		authz, err = w.engine.client.GetAuthorization(ctx, w.acct, authzURL)
		return err
	})
	if err != nil {
		return err
	}
	read := time.Now()
	switch authz.Status {
	case acme.StatusValid:
		if ours, err := r.finishStoredChallenge(ctx, index, authz.Identifier); err != nil || ours {
			return err // our own challenge made it valid (before a restart)
		}
		r.mu.Lock()
		r.order.ReusedAuthzs++
		r.mu.Unlock()
		w.logger.Info("authorization already valid; no challenge needed",
			zapOrder(r.order.ID), zap.String("identifier", authz.IdentifierValue()))
		return r.save(ctx)
	case acme.StatusPending:
	default:
		return fmt.Errorf("%w: authorization for %s is %s at the CA", errChallengeFailed, authz.IdentifierValue(), authz.Status)
	}

	ch, err := r.challengeFor(ctx, index, authz)
	if err != nil {
		return err
	}
	return r.solve(ctx, ch, authz, read)
}

// maxChallengesPerAuthz bounds the challenges one authorization of one
// order gets (a resumed order retries a challenge that errored).
const maxChallengesPerAuthz = 5

// challengeID is deterministic, so a resumed order finds its challenge
// without the order having to be written when the challenge is created.
func challengeID(orderID string, authzIndex, attempt int) string {
	return fmt.Sprintf("%s-a%d-%d", orderID, authzIndex, attempt)
}

// challengeFor returns the order's Challenge for this authorization: the
// stored one when resuming, else a new queued one of the preferred type.
func (r *orderRun) challengeFor(ctx context.Context, index int, authz acme.Authorization) (*Challenge, error) {
	w := r.w
	attempt := 1
	for ; attempt <= maxChallengesPerAuthz; attempt++ {
		var ch Challenge
		err := w.store.load(ctx, KindChallenge, challengeID(r.order.ID, index, attempt), &ch)
		if isNotExist(err) || errors.Is(err, ErrCorrupt) {
			break // a free ID (a corrupt one was set aside)
		}
		if err != nil {
			return nil, err
		}
		if ch.AuthorizationURL == authz.Location && !isFinalChallengeState(ch.State) {
			ch.indexed = indexUnknown
			return &ch, nil
		}
	}
	if attempt > maxChallengesPerAuthz {
		return nil, fmt.Errorf("%w: %s already had %d challenges in order %s", errChallengeFailed,
			authz.IdentifierValue(), maxChallengesPerAuthz, r.order.ID)
	}

	chosen, ok := r.pickChallenge(authz)
	if !ok {
		return nil, fmt.Errorf("%w: the CA offers no enabled challenge type for %s (offered: %s; enabled: %v)",
			errChallengeFailed, authz.IdentifierValue(), offeredTypes(authz), w.opts.ChallengeTypes)
	}
	now := time.Now()
	ch := &Challenge{
		Version:          SchemaVersion,
		ID:               challengeID(r.order.ID, index, attempt),
		Order:            r.order.ID,
		Name:             authz.IdentifierValue(),
		Wildcard:         authz.Wildcard,
		Type:             chosen.Type,
		Token:            chosen.Token,
		AuthorizationURL: authz.Location,
		URL:              chosen.URL,
		State:            ChallengeQueued,
		OnDemand:         w.req.OnDemand,
		Created:          now,
	}
	r.mu.Lock()
	r.order.Challenges = append(r.order.Challenges, ch.ID)
	r.mu.Unlock()
	return ch, nil
}

// finishStoredChallenge finds an unfinished stored challenge of this order
// for the authorization at index (left by a process that died after the CA
// was asked to validate it) and, the authorization being valid, marks it
// valid and cleans up what it presented. It reports whether there was one.
func (r *orderRun) finishStoredChallenge(ctx context.Context, index int, id acme.Identifier) (bool, error) {
	w := r.w
	for attempt := 1; attempt <= maxChallengesPerAuthz; attempt++ {
		var ch Challenge
		err := w.store.load(ctx, KindChallenge, challengeID(r.order.ID, index, attempt), &ch)
		if isNotExist(err) || errors.Is(err, ErrCorrupt) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		if isFinalChallengeState(ch.State) {
			continue
		}
		ch.indexed = indexUnknown
		c := &challengeRun{
			r:      r,
			ch:     &ch,
			solver: w.opts.Solvers[ch.Type],
			logger: w.logger.With(zapOrder(r.order.ID), zapChallenge(ch.ID), zap.String("type", ch.Type)),
			last:   ch.Updated,
		}
		if c.solver != nil && !ch.Times.Presented.IsZero() && !ch.CleanedUp {
			c.presented = true
			c.chal = acme.Challenge{Type: ch.Type, Token: ch.Token, Identifier: id}
		}
		return true, c.finish(ctx, ChallengeValid, "validated by the CA before this process resumed the order")
	}
	return false, nil
}

// pickChallenge chooses the first enabled type the CA offers, starting from
// the name's current preference (rotated after a failed validation).
func (r *orderRun) pickChallenge(authz acme.Authorization) (acme.Challenge, bool) {
	types := r.w.opts.ChallengeTypes
	offset := r.w.rec.TypeOffset
	for i := range types {
		t := types[(offset+i)%len(types)]
		if _, ok := r.w.opts.Solvers[t]; !ok {
			continue
		}
		for _, c := range authz.Challenges {
			if c.Type == t {
				return c, true
			}
		}
	}
	return acme.Challenge{}, false
}

func offeredTypes(authz acme.Authorization) []string {
	var out []string
	for _, c := range authz.Challenges {
		out = append(out, c.Type)
	}
	return out
}

// finalize sends the CSR, waits for the certificate, downloads the chain and
// checks that it is for the CSR's key.
func (r *orderRun) finalize(ctx context.Context) (*certmagic.IssuedCertificate, error) {
	w := r.w
	start := time.Now()
	// not persisted: after a crash, the order's state at the CA tells that
	// it was finalized (and so cannot be resumed with a new key)
	r.step(OrderProcessing)
	finalized, err := r.finalizeAndWait(ctx)
	if err != nil {
		if isFinalError(err) {
			return nil, r.fail(ctx, OrderInvalid, err)
		}
		return nil, r.fail(ctx, OrderErrored, err)
	}
	if finalized.Status != acme.StatusValid {
		return nil, r.fail(ctx, OrderInvalid, fmt.Errorf("order is %s after finalizing: %s", finalized.Status, problemText(finalized.Error)))
	}
	r.mu.Lock()
	r.order.Certificate, r.order.Finalized = finalized.Certificate, time.Now()
	r.mu.Unlock()

	var chains []acme.Certificate
	err = callCA(ctx, "downloading certificate "+finalized.Certificate, func(ctx context.Context) error {
		var err error
		chains, err = w.engine.client.GetCertificateChain(ctx, w.acct, finalized.Certificate)
		return err
	})
	if err != nil {
		return nil, r.fail(ctx, OrderErrored, err)
	}
	if len(chains) == 0 {
		return nil, r.fail(ctx, OrderErrored, errors.New("the CA returned no certificate chain"))
	}
	chain := r.preferredChain(chains)
	if err := leafMatchesCSR(chain.ChainPEM, w.req.CSR); err != nil {
		return nil, r.fail(ctx, OrderErrored, err)
	}
	r.mu.Lock()
	r.order.State, r.order.Reason = OrderValid, ""
	r.mu.Unlock()
	w.logger.Info("order finalized", zapOrder(r.order.ID), zapState(OrderValid), zapTook(time.Since(start)))
	return &certmagic.IssuedCertificate{Certificate: chain.ChainPEM, Metadata: chain}, nil
}

// finalizeAndWait sends the CSR and waits for the CA's decision. acmez's
// FinalizeOrder polls a processing order at a fixed interval; once the
// finalize request is answered we poll the order ourselves, starting within
// milliseconds and backing off (or waiting as the CA's Retry-After says),
// and end FinalizeOrder's wait as soon as the order is valid or invalid.
// Cancelling it then is safe: the finalize request has been answered.
func (r *orderRun) finalizeAndWait(ctx context.Context) (acme.Order, error) {
	w := r.w
	ctx, cancelDecision := w.opts.decisionContext(ctx)
	defer cancelDecision()
	finCtx, cancelFinalize := context.WithCancel(ctx)
	defer cancelFinalize()
	// poll only once the finalize request has been answered: polling
	// alongside it gains nothing and races some CAs' order updates
	sent := &answered{url: r.acme.Finalize, ch: make(chan struct{})}
	finCtx = context.WithValue(finCtx, answeredKey{}, sent)
	type result struct {
		order acme.Order
		err   error
	}
	finalized := make(chan result, 1)
	go func() {
		var o acme.Order
		err := callCA(finCtx, "finalizing order "+r.order.URL, func(ctx context.Context) error {
			var err error
			o, err = w.engine.client.FinalizeOrder(ctx, w.acct, r.acme, w.req.CSR.Raw)
			return err
		})
		finalized <- result{o, err}
	}()

	select {
	case <-sent.ch:
	case res := <-finalized:
		return res.order, decisionError(ctx, res.err)
	case <-ctx.Done():
		<-finalized
		return acme.Order{}, fmt.Errorf("finalizing the order: %w", context.Cause(ctx))
	}
	var retryAfter time.Duration
	for n := 0; ; n++ {
		timer := time.NewTimer(pollWait(n, retryAfter))
		select {
		case res := <-finalized:
			timer.Stop()
			return res.order, decisionError(ctx, res.err)
		case <-ctx.Done():
			timer.Stop()
			<-finalized
			return acme.Order{}, fmt.Errorf("waiting for the order to be issued: %w", context.Cause(ctx))
		case <-timer.C:
		}
		var polled acme.Order
		err := callCA(ctx, "polling order "+r.order.URL, func(ctx context.Context) error {
			var err error
			polled, err = w.engine.client.GetOrder(ctx, w.acct, acme.Order{Location: r.order.URL})
			if note, ok := ctx.Value(responseNoteKey{}).(*responseNote); ok {
				retryAfter, _ = note.get()
			}
			return err
		})
		if err != nil {
			continue // FinalizeOrder's own result decides
		}
		if polled.Status == acme.StatusValid || polled.Status == acme.StatusInvalid {
			cancelFinalize()
			<-finalized
			polled.Location = r.order.URL
			return polled, nil
		}
	}
}

// leafMatchesCSR makes sure the chain's leaf certifies the CSR's public key:
// a chain for any other key would be useless to certmagic.
func leafMatchesCSR(chainPEM []byte, csr *x509.CertificateRequest) error {
	block, _ := pem.Decode(chainPEM)
	if block == nil {
		return errors.New("the CA's chain holds no PEM certificate")
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return fmt.Errorf("parsing the CA's leaf certificate: %w", err)
	}
	want, err := x509.MarshalPKIXPublicKey(csr.PublicKey)
	if err != nil {
		return fmt.Errorf("encoding the CSR's public key: %w", err)
	}
	got, err := x509.MarshalPKIXPublicKey(leaf.PublicKey)
	if err != nil {
		return fmt.Errorf("encoding the leaf's public key: %w", err)
	}
	if !bytes.Equal(want, got) {
		return errors.New("the CA's leaf certificate is for another public key than the CSR's")
	}
	return nil
}

func problemText(p *acme.Problem) string {
	if p == nil {
		return "no reason given"
	}
	if p.Detail != "" {
		return p.Detail
	}
	return p.Type
}
