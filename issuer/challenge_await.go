package issuer

import (
	"context"
	"fmt"
	"time"

	"github.com/mholt/acmez/v3/acme"
)

// await polls the authorization until the CA has decided: first after most
// of the CA's usual validation time (see validationTime), then within
// milliseconds and backing off, or waiting as long as the CA's Retry-After
// up to maxInCallWait. A longer Retry-After gives the scheduler slot back:
// the challenge ends errored as held (nobody's failure), and the order
// stays resumable (the authorization tells a later request it was
// accepted).
func (c *challengeRun) await(ctx context.Context) error {
	w := c.r.w
	ctx, cancel := w.opts.decisionContext(ctx)
	defer cancel()
	accepted := time.Now()
	w.engine.validation.awaiting.Add(1)
	defer w.engine.validation.awaiting.Add(-1)
	step := w.engine.validation.pollStep()
	if err := sleepCtx(ctx, w.engine.validation.firstPollWait()); err != nil {
		return c.end(ctx, ChallengeErrored, cutOff(ctx, PartyCA, fmt.Errorf("waiting for the CA to validate: %w", decisionError(ctx, err))))
	}
	for n := 0; n < maxAuthorizationPolls; n++ {
		var authz acme.Authorization
		var retryAfter time.Duration
		err := w.call(ctx, opAuthorization, "polling authorization "+c.ch.AuthorizationURL, func(ctx context.Context) error {
			var err error
			authz, err = w.engine.ca.GetAuthorization(ctx, w.acct, c.ch.AuthorizationURL)
			if call := callOf(ctx); call != nil {
				_, retryAfter = call.result()
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
		if retryAfter > maxInCallWait {
			return c.end(ctx, ChallengeErrored, heldUntil(time.Now().Add(retryAfter),
				fmt.Sprintf("the CA asked to wait %s (Retry-After) before polling the authorization again", retryAfter.Round(time.Second))))
		}
		if err := sleepCtx(ctx, pollWaitFrom(step, n, retryAfter)); err != nil {
			return c.end(ctx, ChallengeErrored, cutOff(ctx, PartyCA, fmt.Errorf("waiting for the CA to validate: %w", decisionError(ctx, err))))
		}
	}
	return c.end(ctx, ChallengeErrored, charge(PartyCA, fmt.Errorf("the CA did not decide after %d polls", maxAuthorizationPolls)))
}

// maxAuthorizationPolls bounds await's loop; the challenge's deadline ends
// it long before (polls are at most a second apart).
const maxAuthorizationPolls = 100000

// invalid ends the challenge the CA refused to validate: a failure of the
// name, whose next attempt starts with the next enabled type.
func (c *challengeRun) invalid(ctx context.Context, chal acme.Challenge) error {
	c.r.w.setFailedType(c.ch.Type)
	reason := "the CA could not validate the challenge"
	if chal.Error != nil {
		reason = "the CA could not validate the challenge: " + problemText(chal.Error)
	}
	return c.end(ctx, ChallengeInvalid, charge(PartyName, fmt.Errorf("%s", reason)))
}
