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

// challengeRun reconciles one Challenge through its lifecycle:
// queued → scheduled → synced → presented → self-checked → accepted →
// valid/invalid/errored. It changes the challenge in memory (advance) and
// writes it under its own key (commit) at the points SaveRules lists; its
// final state goes with its request's record. The steps live in
// challenge_present.go, challenge_selfcheck.go and challenge_await.go.
type challengeRun struct {
	r      *orderRun
	ch     *Challenge
	solver solvers.Solver
	chal   acme.Challenge     // the challenge being presented (type, token, key authorization)
	authz  acme.Authorization // the latest read of its authorization
	logger *zap.Logger
	last   time.Time // when the last transition happened, for "took"

	presented bool   // something may be published: a final state cleans it up
	liveState string // the last non-final state, for deadline reasons
}

// authzFreshness is how old a read of the authorization may be and still
// count as the challenge's sync when it was scheduled without waiting.
const authzFreshness = 2 * time.Second

// solve runs the challenge to a final state. authz was read at readAt.
func (r *orderRun) solve(ctx context.Context, ch *Challenge, authz acme.Authorization, readAt time.Time) error {
	w := r.w
	c := r.newChallengeRun(ch, authz.Identifier)
	c.last = time.Now()
	if c.solver == nil {
		return c.end(ctx, ChallengeErrored, charge(PartyName, fmt.Errorf("no solver for challenge type %s", ch.Type)))
	}

	// this engine runs it now (a resumed one too): maintenance, here and
	// elsewhere, judges it by this process's heartbeat and its own
	// deadline, set once it is scheduled
	ch.Owner, ch.Policy, ch.Deadline = w.engine.owner, w.opts.PolicyID, time.Time{}
	defer w.engine.running(w.store, ch.ID)()

	var key string
	if k, ok := c.solver.(solvers.ExclusionKeyer); ok {
		key = k.ExclusionKey(acme.Challenge{Type: ch.Type, Identifier: authz.Identifier, Token: ch.Token})
	}
	ticket := Ticket{Created: ch.Created, Urgent: ch.OnDemand, Key: key}
	release, ok := w.engine.scheduler.TryAcquire(ticket)
	if ok {
		c.advance(ChallengeQueued, "") // passed through at once: nothing to write (SaveRules)
	} else {
		// it has to wait: the wait is visible in storage (SaveRules)
		c.advance(ChallengeQueued, "")
		if err := c.commit(ctx); err != nil {
			return err
		}
		authz = waitingAuthz(authz, ch.Type)
		var err error
		if release, err = w.engine.scheduler.Acquire(ctx, ticket); err != nil {
			err = cutOff(ctx, PartyProcess, fmt.Errorf("challenge for %s: %w", ch.Name, err))
			return c.end(ctx, ChallengeErrored, err)
		}
	}
	defer release()

	// a challenge stuck past its deadline frees its slot and fails
	c.ch.Deadline = time.Now().Add(w.opts.ChallengeTimeout)
	liveCtx, cancel := context.WithDeadline(ctx, c.ch.Deadline)
	defer cancel()
	c.advance(ChallengeScheduled, "")
	err := c.live(liveCtx, authz, readAt)
	if err != nil && errors.Is(liveCtx.Err(), context.DeadlineExceeded) && ctx.Err() == nil {
		// charged to whoever was failing it (a self-check that kept
		// failing is the name's; a CA that never decided is the CA's)
		party, _ := chargedTo(err)
		return c.end(ctx, ChallengeErrored, recharge(party, fmt.Errorf("challenge exceeded its deadline of %s while %s: %w",
			w.opts.ChallengeTimeout, c.liveState, err)))
	}
	return err
}

// live runs the scheduled part of the lifecycle.
func (c *challengeRun) live(ctx context.Context, authz acme.Authorization, readAt time.Time) error {
	// synced: the state is read through the authorization URL (some CAs
	// treat a POST to the challenge URL as "accept")
	if time.Since(readAt) > authzFreshness {
		var err error
		if authz, err = c.readAuthorization(ctx, "syncing"); err != nil {
			return c.fail(ctx, err)
		}
	}
	c.authz = authz
	switch authz.Status {
	case acme.StatusValid:
		return c.finish(ctx, ChallengeValid, "authorization already valid")
	case acme.StatusPending:
	default:
		return c.end(ctx, ChallengeInvalid, charge(PartyName, fmt.Errorf("authorization is %s at the CA", authz.Status)))
	}
	chal, ok := findChallenge(authz, c.ch.Type)
	if !ok {
		return c.end(ctx, ChallengeErrored, charge(PartyName, fmt.Errorf("the authorization no longer offers %s", c.ch.Type)))
	}
	c.chal = chal
	if chal.Status == acme.StatusProcessing || chal.Status == acme.StatusValid {
		// accepted before (a resumed workflow): just wait for the result
		c.ch.State = ChallengeAccepted
		return c.await(ctx)
	}
	c.advance(ChallengeSynced, "")

	// presented and self-checked, trying the next type when one keeps
	// failing its self-check
	if err := c.presentAndCheck(ctx); err != nil {
		return err
	}

	// accepted
	if err := c.r.w.call(ctx, opChallenge, "accepting challenge "+c.chal.URL, func(ctx context.Context) error {
		_, err := c.r.w.engine.ca.InitiateChallenge(ctx, c.r.w.acct, c.chal)
		return err
	}); err != nil {
		return c.fail(ctx, err)
	}
	// not committed (SaveRules): after a crash the authorization tells
	// that it was accepted, and the times are written with the final state
	c.advance(ChallengeAccepted, "")
	return c.await(ctx)
}

// readAuthorization reads the challenge's authorization (why names the
// step).
func (c *challengeRun) readAuthorization(ctx context.Context, why string) (acme.Authorization, error) {
	w := c.r.w
	var authz acme.Authorization
	err := w.call(ctx, opAuthorization, why+" authorization "+c.ch.AuthorizationURL, func(ctx context.Context) error {
		var err error
		authz, err = w.engine.ca.GetAuthorization(ctx, w.acct, c.ch.AuthorizationURL)
		return err
	})
	return authz, err
}

// fail ends the challenge after a failed CA call or step: a refusal of
// the CA makes it invalid, anything else errored.
func (c *challengeRun) fail(ctx context.Context, err error) error {
	if isRefusal(err) {
		return c.end(ctx, ChallengeInvalid, err)
	}
	return c.end(ctx, ChallengeErrored, err)
}

// end moves the challenge to a final state, committing it and removing
// what was presented at the same time, and returns what the order gets:
// nil when valid; errChallengeFailed for invalid (the order cannot be
// completed), charged as cause is (the name's when it is not charged);
// cause itself for errored.
func (c *challengeRun) end(ctx context.Context, state string, cause error) error {
	reason := ""
	if cause != nil {
		reason = cause.Error()
	}
	if err := c.finish(ctx, state, reason); err != nil {
		return err
	}
	switch state {
	case ChallengeValid:
		return nil
	case ChallengeInvalid:
		party, until := chargedTo(cause)
		if cause == nil {
			party = PartyName
		}
		return &ChargedError{Party: party, Until: until, Err: fmt.Errorf("%w: %s: %s", errChallengeFailed, c.ch.Name, reason)}
	}
	if cause == nil {
		cause = errors.New(reason)
	}
	return fmt.Errorf("challenge for %s errored: %w", c.ch.Name, cause)
}

// finish moves the challenge to a final state and removes what was
// presented (whatever the outcome). The final state is kept for the
// request's record (records.go); a challenge that has a record of its own
// is written there too, at the same time as the clean-up (one write's
// latency for both). A clean-up that fails is written to the challenge's
// own record and handed to maintenance, which retries it.
func (c *challengeRun) finish(ctx context.Context, state, reason string) error {
	ctx, cancel := detached(ctx)
	defer cancel()
	c.ch.Times.Finished = time.Now()
	if IsFinal(KindChallenge, c.ch.State) {
		// already final (a deadline hit after a failure): only the reason changes
		c.ch.Reason = reason
		c.r.challengeEnded(c.ch)
		return c.commitOwn(ctx)
	}
	if !c.presented {
		c.advance(state, reason)
		c.r.challengeEnded(c.ch)
		err := c.commitOwn(ctx)
		if err != nil {
			c.r.w.engine.reportLeftover(c.r.w.opts, c.ch.ID) // maintenance ends it
		}
		return err
	}
	c.ch.CleanedUp = true
	c.advance(state, reason)
	stored := c.ch.stored
	var cleanErr error
	err := parallel(
		func() error { return c.commitOwn(ctx) },
		func() error { cleanErr = c.cleanUp(ctx); return nil },
	)
	if cleanErr != nil {
		c.logger.Warn("cleaning up presented challenge", zap.Error(cleanErr))
		c.ch.CleanedUp = false
		// maintenance retries it from the challenge's own record
		if saveErr := c.commit(ctx); saveErr != nil {
			c.logger.Warn("recording failed clean-up", zap.Error(saveErr))
			if err == nil && !stored {
				err = saveErr
			}
		}
	}
	c.r.challengeEnded(c.ch)
	if err != nil || cleanErr != nil {
		// maintenance removes the answer (from what was stored) and
		// records the end
		c.r.w.engine.reportLeftover(c.r.w.opts, c.ch.ID)
	}
	return err
}

// cleanUp removes what is presented. The workflow holds the name's
// issue_cert lock: a token file can only be this challenge's, so it is
// removed without reading it first.
func (c *challengeRun) cleanUp(ctx context.Context) error {
	if k, ok := c.solver.(solvers.TokenKeeper); ok {
		return k.CleanUpOwned(ctx, c.chal)
	}
	return c.solver.CleanUp(ctx, c.chal, c.ch.Presented)
}

// advance moves the challenge to a state in memory: its time is recorded,
// the observer told and the step logged. Nothing is written: see commit.
func (c *challengeRun) advance(state, reason string) {
	now := time.Now()
	if !IsFinal(KindChallenge, state) {
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

// commit writes the challenge as it is now under its own key
// (challenges/<id>); from then on its states are written there too.
func (c *challengeRun) commit(ctx context.Context) error {
	c.ch.Version, c.ch.Updated = SchemaVersion, time.Now()
	if err := c.r.w.store.saveResource(ctx, KindChallenge, c.ch.ID, c.ch.Name, c.ch.State, c.ch); err != nil {
		return err
	}
	c.ch.stored = true
	return nil
}

// commitOwn writes the challenge under its own key if it has one;
// otherwise it is written with its request's record.
func (c *challengeRun) commitOwn(ctx context.Context) error {
	if !c.ch.stored {
		return nil
	}
	return c.commit(ctx)
}

// waitingAuthz keeps of an authorization what live needs of it (its
// status and the challenge of typ), so a challenge waiting in the
// scheduler's queue does not hold the CA's whole answer: the challenges
// of the other types are about 1.5 KiB per waiting challenge. A type
// switch reads the authorization again.
func waitingAuthz(authz acme.Authorization, typ string) acme.Authorization {
	kept := acme.Authorization{Identifier: authz.Identifier, Status: authz.Status, Wildcard: authz.Wildcard, Location: authz.Location}
	if chal, ok := findChallenge(authz, typ); ok {
		kept.Challenges = []acme.Challenge{chal}
	}
	return kept
}
