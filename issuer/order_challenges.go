package issuer

import (
	"context"
	"errors"

	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"
)

// eachStoredChallenge calls fn with each stored challenge of this order for
// the authorization at index, in attempt order, until fn returns true. It
// returns the attempt number of the first free challenge ID, for a new
// challenge (maxChallengesPerAuthz+1 when every one is taken). A corrupt
// challenge was set aside by the load, so its ID is free.
func (r *orderRun) eachStoredChallenge(ctx context.Context, index int, fn func(ch *Challenge) (stop bool)) (free int, err error) {
	for attempt := 1; attempt <= maxChallengesPerAuthz; attempt++ {
		var ch Challenge
		err := r.w.store.load(ctx, KindChallenge, challengeID(r.order.ID, index, attempt), &ch)
		if isNotExist(err) || errors.Is(err, ErrCorrupt) {
			return attempt, nil
		}
		if err != nil {
			return 0, err
		}
		ch.stored = true
		if fn(&ch) {
			return attempt, nil
		}
	}
	return maxChallengesPerAuthz + 1, nil
}

// finishStoredChallenge finds an unfinished stored challenge of this order
// for the authorization at index (left by a process that died after the CA
// was asked to validate it) and, the authorization being valid, marks it
// valid and cleans up what it presented. It reports whether there was one.
func (r *orderRun) finishStoredChallenge(ctx context.Context, index int, id acme.Identifier) (bool, error) {
	var unfinished *Challenge
	if _, err := r.eachStoredChallenge(ctx, index, func(ch *Challenge) bool {
		if !IsFinal(KindChallenge, ch.State) {
			unfinished = ch
			return true
		}
		return false
	}); err != nil || unfinished == nil {
		return false, err
	}
	c := r.newChallengeRun(unfinished, id)
	return true, c.finish(ctx, ChallengeValid, "validated by the CA before this process resumed the order")
}

// newChallengeRun is the run of a challenge; when it was presented and not
// cleaned up (resumed after a crash), whatever path it takes now, its final
// state cleans that up.
func (r *orderRun) newChallengeRun(ch *Challenge, id acme.Identifier) *challengeRun {
	w := r.w
	c := &challengeRun{
		r:      r,
		ch:     ch,
		solver: w.opts.Solvers[ch.Type],
		logger: w.logger.With(zapOrder(r.order.ID), zapChallenge(ch.ID), zap.String("type", ch.Type)),
		last:   ch.Updated,
	}
	if c.last.IsZero() {
		c.last = ch.Created
	}
	if c.solver != nil && !ch.Times.Presented.IsZero() && !ch.CleanedUp {
		c.presented = true
		c.chal = acme.Challenge{Type: ch.Type, Token: ch.Token, Identifier: id}
	}
	return c
}
