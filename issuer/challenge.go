package issuer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"

	"github.com/certflow/certflow/solvers"
)

// errChallengeFailed marks a challenge that reached a final failed state:
// the order cannot be completed and is not retried as is.
var errChallengeFailed = errors.New("challenge failed")

// authzFreshness is how old a read of the authorization may be and still
// count as the challenge's sync when it was scheduled without waiting.
const authzFreshness = 2 * time.Second

// challengeRun reconciles one Challenge through its lifecycle:
// queued → scheduled → synced → presented → self-checked → accepted →
// valid/invalid/errored. Every transition is written to storage.
type challengeRun struct {
	r      *orderRun
	ch     *Challenge
	solver solvers.Solver
	chal   acme.Challenge
	logger *zap.Logger
	last   time.Time // when the last transition happened, for "took"

	presented bool   // Present succeeded: clean up at the final state
	liveState string // the last non-final state, for deadline reasons
}

// solve runs the challenge to a final state. authz was read at readAt.
func (r *orderRun) solve(ctx context.Context, ch *Challenge, authz acme.Authorization, readAt time.Time) error {
	w := r.w
	c := &challengeRun{
		r:      r,
		ch:     ch,
		solver: w.opts.Solvers[ch.Type],
		logger: w.logger.With(zapOrder(r.order.ID), zapChallenge(ch.ID), zap.String("type", ch.Type)),
		last:   time.Now(),
	}
	if c.solver == nil {
		return c.finish(ctx, ChallengeErrored, fmt.Sprintf("no solver for challenge type %s", ch.Type))
	}
	if !ch.Times.Presented.IsZero() && !ch.CleanedUp {
		// resumed after a crash with something presented: whatever path
		// the challenge takes now, its final state cleans that up
		c.presented = true
		c.chal = acme.Challenge{Type: ch.Type, Token: ch.Token, Identifier: authz.Identifier}
	}

	var key string
	if k, ok := c.solver.(solvers.ExclusionKeyer); ok {
		key = k.ExclusionKey(acme.Challenge{Type: ch.Type, Identifier: authz.Identifier, Token: ch.Token})
	}
	ticket := Ticket{Created: ch.Created, Urgent: ch.OnDemand, Key: key}
	release, ok := w.engine.scheduler.TryAcquire(ticket)
	if !ok {
		// it has to wait: make the wait visible in storage
		if err := c.transition(ctx, ChallengeQueued, ""); err != nil {
			return err
		}
		authz = waitingAuthz(authz, ch.Type)
		var err error
		if release, err = w.engine.scheduler.Acquire(ctx, ticket); err != nil {
			_ = c.finish(ctx, ChallengeErrored, err.Error())
			return fmt.Errorf("challenge for %s: %w", ch.Name, err)
		}
	} else {
		c.step(ChallengeQueued, "")
	}
	defer release()

	// a challenge stuck past its deadline frees its slot and fails
	liveCtx, cancel := context.WithTimeout(ctx, w.opts.ChallengeTimeout)
	defer cancel()
	c.step(ChallengeScheduled, "")
	err := c.live(liveCtx, authz, readAt)
	if err != nil && liveCtx.Err() == context.DeadlineExceeded && ctx.Err() == nil {
		return c.finish(ctx, ChallengeErrored, fmt.Sprintf("challenge exceeded its deadline of %s while %s: %v",
			w.opts.ChallengeTimeout, c.liveState, err))
	}
	return err
}

// live runs the scheduled part of the lifecycle.
func (c *challengeRun) live(ctx context.Context, authz acme.Authorization, readAt time.Time) error {
	w := c.r.w

	// synced: the state is read through the authorization URL (some CAs
	// treat a POST to the challenge URL as "accept")
	if time.Since(readAt) > authzFreshness {
		if err := callCA(ctx, "syncing authorization "+c.ch.AuthorizationURL, func(ctx context.Context) error {
			var err error
			authz, err = w.engine.client.GetAuthorization(ctx, w.acct, c.ch.AuthorizationURL)
			return err
		}); err != nil {
			return c.fail(ctx, err)
		}
	}
	switch authz.Status {
	case acme.StatusValid:
		return c.finish(ctx, ChallengeValid, "authorization already valid")
	case acme.StatusPending:
	default:
		return c.finish(ctx, ChallengeInvalid, "authorization is "+authz.Status+" at the CA")
	}
	chal, ok := findChallenge(authz, c.ch.Type)
	if !ok {
		return c.finish(ctx, ChallengeErrored, "the authorization no longer offers "+c.ch.Type)
	}
	c.chal = chal
	if chal.Status == acme.StatusProcessing || chal.Status == acme.StatusValid {
		// accepted before (a resumed workflow): just wait for the result
		c.ch.State = ChallengeAccepted
		return c.await(ctx)
	}
	c.step(ChallengeSynced, "")

	// presented
	memo, err := c.solver.Present(ctx, chal)
	if err != nil {
		return c.fail(ctx, fmt.Errorf("presenting: %w", err))
	}
	c.ch.Presented = memo
	c.presented = true
	// persisted: what was presented must be cleaned up even after a crash
	if err := c.transition(ctx, ChallengePresented, ""); err != nil {
		return err
	}

	// self-checked
	tuning := c.selfCheckTuning()
	if tuning.Delay > 0 {
		c.logger.Info("waiting before the self-check", zap.Duration("delay", tuning.Delay))
		select {
		case <-ctx.Done():
			return c.fail(ctx, fmt.Errorf("waiting %s before the self-check: %w", tuning.Delay, ctx.Err()))
		case <-time.After(tuning.Delay):
		}
	}
	if !tuning.Skip {
		if err := c.selfCheck(ctx, tuning); err != nil {
			return c.finish(ctx, ChallengeErrored, err.Error())
		}
	}
	c.step(ChallengeSelfChecked, "")

	// accepted
	if err := callCA(ctx, "accepting challenge "+chal.URL, func(ctx context.Context) error {
		_, err := w.engine.client.InitiateChallenge(ctx, w.acct, chal)
		return err
	}); err != nil {
		return c.fail(ctx, err)
	}
	// not persisted: after a crash the authorization tells that it was
	// accepted, and the times are written with the final state
	c.step(ChallengeAccepted, "")
	return c.await(ctx)
}

// selfCheck runs the solver's check at once and then on an interval until
// it passes or the self-check timeout ends, recording each failure's reason.
func (c *challengeRun) selfCheck(ctx context.Context, tuning solvers.SelfCheckTuning) error {
	checkCtx, cancel := context.WithTimeout(ctx, tuning.Timeout)
	defer cancel()
	var last error // the reason of the last attempt that ran to its end
	for {
		err := c.solver.SelfCheck(checkCtx, c.chal)
		if err == nil {
			return nil
		}
		if checkCtx.Err() != nil && last != nil {
			// cut short by the deadline: its reason would only say
			// so; the previous attempt's reason is the real one
			err = last
		} else {
			last = err
			c.ch.SelfChecks++
			if err := c.record(ctx, "self-check failed: "+err.Error()); err != nil {
				return err
			}
			if c.ch.SelfChecks == 1 || c.ch.SelfChecks%10 == 0 {
				c.logger.Warn("self-check failed; retrying", zapState(c.ch.State), zapReason(err.Error()),
					zap.Int("attempts", c.ch.SelfChecks), zap.Duration("interval", tuning.Interval))
			}
		}
		select {
		case <-checkCtx.Done():
			if ctx.Err() != nil {
				return fmt.Errorf("self-check interrupted: %w; last reason: %v", ctx.Err(), err)
			}
			return fmt.Errorf("self-check did not pass within %s: %v", tuning.Timeout, err)
		case <-time.After(tuning.Interval):
		}
	}
}

// await polls the authorization until the CA has decided: first after most
// of the CA's usual validation time (see validationTime), then within
// milliseconds and backing off, or waiting as long as the CA's Retry-After.
func (c *challengeRun) await(ctx context.Context) error {
	w := c.r.w
	ctx, cancel := w.opts.decisionContext(ctx)
	defer cancel()
	accepted := time.Now()
	w.engine.validation.awaiting.Add(1)
	defer w.engine.validation.awaiting.Add(-1)
	step := w.engine.validation.pollStep()
	select {
	case <-ctx.Done():
		return c.fail(ctx, fmt.Errorf("waiting for the CA to validate: %w", context.Cause(ctx)))
	case <-time.After(w.engine.validation.firstPollWait()):
	}
	for n := 0; ; n++ {
		var authz acme.Authorization
		var retryAfter time.Duration
		err := callCA(ctx, "polling authorization "+c.ch.AuthorizationURL, func(ctx context.Context) error {
			var err error
			authz, err = w.engine.client.GetAuthorization(ctx, w.acct, c.ch.AuthorizationURL)
			if note, ok := ctx.Value(responseNoteKey{}).(*responseNote); ok {
				retryAfter, _ = note.get()
			}
			return err
		})
		if err != nil {
			return c.fail(ctx, decisionError(ctx, err))
		}
		switch authz.Status {
		case acme.StatusValid:
			w.engine.validation.observe(time.Since(accepted))
			return c.finish(ctx, ChallengeValid, "")
		case acme.StatusPending:
			// still validating; if our challenge already failed the
			// authorization will not become valid
			if chal, ok := findChallenge(authz, c.ch.Type); ok && chal.Status == acme.StatusInvalid {
				return c.invalid(ctx, chal)
			}
		default:
			chal, _ := findChallenge(authz, c.ch.Type)
			return c.invalid(ctx, chal)
		}
		select {
		case <-ctx.Done():
			return c.fail(ctx, fmt.Errorf("waiting for the CA to validate: %w", context.Cause(ctx)))
		case <-time.After(pollWaitFrom(step, n, retryAfter)):
		}
	}
}

func (c *challengeRun) invalid(ctx context.Context, chal acme.Challenge) error {
	c.r.w.setFailedType(c.ch.Type)
	reason := "the CA could not validate the challenge"
	if chal.Error != nil {
		reason = "the CA could not validate the challenge: " + problemText(chal.Error)
	}
	return c.finish(ctx, ChallengeInvalid, reason)
}

// fail ends the challenge after an error of a CA call or a step: a CA
// refusal makes it invalid, anything else errored. The error is returned.
func (c *challengeRun) fail(ctx context.Context, err error) error {
	state := ChallengeErrored
	if isFinalError(err) {
		state = ChallengeInvalid
	}
	if finishErr := c.finish(ctx, state, err.Error()); finishErr != nil && !errors.Is(finishErr, errChallengeFailed) {
		return finishErr
	}
	if state == ChallengeInvalid {
		return fmt.Errorf("%w: %w", errChallengeFailed, err)
	}
	return err
}

// finish moves the challenge to a final state. Failing states return
// errChallengeFailed (invalid) or an error with the reason (errored).
func (c *challengeRun) finish(ctx context.Context, state, reason string) error {
	saveCtx, cancel := detached(ctx)
	defer cancel()
	c.ch.Times.Finished = time.Now()
	if isFinalChallengeState(c.ch.State) {
		// already final (a deadline hit after a failure): only the reason changes
		c.ch.Reason = reason
		if err := c.save(saveCtx); err != nil {
			return err
		}
	} else if err := c.finalTransition(saveCtx, state, reason); err != nil {
		return err
	}
	switch state {
	case ChallengeValid:
		return nil
	case ChallengeInvalid:
		return fmt.Errorf("%w: %s: %s", errChallengeFailed, c.ch.Name, reason)
	default:
		return fmt.Errorf("challenge for %s errored: %s", c.ch.Name, reason)
	}
}

// finalTransition writes the final state and, at the same time, removes
// what was presented (whatever the outcome), so the two storage writes cost
// one write's latency. If the clean-up fails, the record says so and the
// start-up clean-up of a later process retries it.
func (c *challengeRun) finalTransition(ctx context.Context, state, reason string) error {
	if !c.presented {
		return c.transition(ctx, state, reason)
	}
	c.ch.CleanedUp = true
	var cleanErr error
	err := parallel(
		func() error { return c.transition(ctx, state, reason) },
		func() error { cleanErr = c.solver.CleanUp(ctx, c.chal, c.ch.Presented); return nil },
	)
	if cleanErr != nil {
		c.logger.Warn("cleaning up presented challenge", zap.Error(cleanErr))
		c.ch.CleanedUp = false
		if saveErr := c.save(ctx); saveErr != nil {
			c.logger.Warn("recording failed clean-up", zap.Error(saveErr))
		}
	}
	return err
}

// step moves to a state without writing it: the time is recorded and
// written with the next persisted transition. Used for steps that crash
// recovery does not need, so an issuance costs fewer storage writes.
func (c *challengeRun) step(state, reason string) {
	c.setState(state, reason)
}

// transition writes a new state and logs it with the time since the last one.
func (c *challengeRun) transition(ctx context.Context, state, reason string) error {
	c.setState(state, reason)
	return c.save(ctx)
}

// setState records a state, its time, tells the observer and logs it.
func (c *challengeRun) setState(state, reason string) {
	now := time.Now()
	if !isFinalChallengeState(state) {
		c.liveState = state
	}
	c.ch.State, c.ch.Reason = state, reason
	t := &c.ch.Times
	switch state {
	case ChallengeScheduled:
		t.Scheduled = now
	case ChallengeSynced:
		t.Synced = now
	case ChallengePresented:
		t.Presented = now
	case ChallengeSelfChecked:
		t.SelfChecked = now
	case ChallengeAccepted:
		t.Accepted = now
	}
	c.r.w.observer().ChallengeChanged(*c.ch, now.Sub(c.last))
	fields := []zap.Field{zapState(state), zapTook(now.Sub(c.last))}
	if reason != "" {
		fields = append(fields, zapReason(reason))
	}
	c.logger.Info("challenge "+state, fields...)
	c.last = now
}

// record writes a new reason without changing the state.
func (c *challengeRun) record(ctx context.Context, reason string) error {
	c.ch.Reason = reason
	return c.save(ctx)
}

func (c *challengeRun) save(ctx context.Context) error {
	c.ch.Version, c.ch.Updated = SchemaVersion, time.Now()
	if err := c.r.w.store.saveResource(ctx, KindChallenge, c.ch.ID, c.ch.Name, c.ch.indexed, c.ch.State, c.ch); err != nil {
		return err
	}
	c.ch.indexed = c.ch.State
	return nil
}

// waitingAuthz keeps of an authorization what live needs of it (its
// status and the challenge of typ), so a challenge waiting in the
// scheduler's queue does not hold the CA's whole answer: the challenges
// of the other types are about 1.5 KiB per waiting challenge.
func waitingAuthz(authz acme.Authorization, typ string) acme.Authorization {
	kept := acme.Authorization{Identifier: authz.Identifier, Status: authz.Status, Wildcard: authz.Wildcard, Location: authz.Location}
	if chal, ok := findChallenge(authz, typ); ok {
		kept.Challenges = []acme.Challenge{chal}
	}
	return kept
}

func findChallenge(authz acme.Authorization, typ string) (acme.Challenge, bool) {
	for _, c := range authz.Challenges {
		if c.Type == typ {
			return c, true
		}
	}
	return acme.Challenge{}, false
}

// selfCheckTuning is the solver's own schedule where it has one (DNS-01),
// else the issuer's self_check settings.
func (c *challengeRun) selfCheckTuning() solvers.SelfCheckTuning {
	opts := c.r.w.opts
	t := solvers.SelfCheckTuning{Skip: opts.SelfCheckDisabled}
	if tuner, ok := c.solver.(solvers.SelfCheckTuner); ok {
		t = tuner.SelfCheckTuning()
	}
	if t.Interval <= 0 {
		t.Interval = opts.SelfCheckInterval
	}
	if t.Timeout <= 0 {
		t.Timeout = opts.SelfCheckTimeout
	}
	return t
}
