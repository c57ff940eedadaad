package issuer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"
)

// errChallengeFailed marks a challenge (or authorization) that reached a
// final failed state: the order cannot be completed and is not retried as
// is.
var errChallengeFailed = errors.New("challenge failed")

func isChallengeFailure(err error) bool { return errors.Is(err, errChallengeFailed) }

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
	err := w.call(ctx, opAuthorization, "reading authorization "+authzURL, func(ctx context.Context) error {
		var err error
		authz, err = w.engine.ca.GetAuthorization(ctx, w.acct, authzURL)
		return err
	})
	if err != nil {
		return err
	}
	read := time.Now()
	switch authz.Status {
	case acme.StatusValid:
		if r.resumed {
			if ours, err := r.finishStoredChallenge(ctx, index, authz.Identifier); err != nil || ours {
				return err // our own challenge made it valid (before a restart)
			}
		}
		r.mu.Lock()
		r.order.ReusedAuthzs++
		r.mu.Unlock()
		w.logger.Info("authorization already valid; no challenge needed",
			zapOrder(r.order.ID), zap.String("identifier", authz.IdentifierValue()))
		return nil // recorded with the order
	case acme.StatusPending:
	case acme.StatusExpired, acme.StatusDeactivated:
		// nobody's fault: the order is given up and a new one made
		return charge(PartyNobody, fmt.Errorf("%w: authorization for %s is %s at the CA", errChallengeFailed, authz.IdentifierValue(), authz.Status))
	default:
		return charge(PartyName, fmt.Errorf("%w: authorization for %s is %s at the CA", errChallengeFailed, authz.IdentifierValue(), authz.Status))
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
// An order made by this run has none stored: nothing is read.
func (r *orderRun) challengeFor(ctx context.Context, index int, authz acme.Authorization) (*Challenge, error) {
	w := r.w
	var resumed *Challenge
	free := 1
	if r.resumed {
		var err error
		free, err = r.eachStoredChallenge(ctx, index, func(ch *Challenge) bool {
			if ch.AuthorizationURL == authz.Location && !IsFinal(KindChallenge, ch.State) {
				resumed = ch
				return true
			}
			return false
		})
		if err != nil {
			return nil, err
		}
	}
	if resumed != nil {
		return resumed, nil
	}
	if free > maxChallengesPerAuthz {
		return nil, charge(PartyName, fmt.Errorf("%w: %s already had %d challenges in order %s", errChallengeFailed,
			authz.IdentifierValue(), maxChallengesPerAuthz, r.order.ID))
	}

	chosen, ok := r.pickChallenge(authz)
	if !ok {
		return nil, charge(PartyName, fmt.Errorf("%w: the CA offers no enabled challenge type for %s (offered: %s; enabled: %v)",
			errChallengeFailed, authz.IdentifierValue(), offeredTypes(authz), w.opts.ChallengeTypes))
	}
	now := time.Now()
	ch := &Challenge{
		Version:          SchemaVersion,
		ID:               challengeID(r.order.ID, index, free),
		Order:            r.order.ID,
		Name:             authz.IdentifierValue(),
		Wildcard:         authz.Wildcard,
		Type:             chosen.Type,
		Token:            chosen.Token,
		AuthorizationURL: authz.Location,
		URL:              chosen.URL,
		State:            ChallengeQueued,
		OnDemand:         w.req.OnDemand,
		Owner:            w.engine.owner,
		Policy:           w.opts.PolicyID,
		Created:          now,
	}
	r.mu.Lock()
	r.order.Challenges = append(r.order.Challenges, ch.ID)
	r.mu.Unlock()
	return ch, nil
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
		if c, ok := findChallenge(authz, t); ok {
			return c, true
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

func findChallenge(authz acme.Authorization, typ string) (acme.Challenge, bool) {
	for _, c := range authz.Challenges {
		if c.Type == typ {
			return c, true
		}
	}
	return acme.Challenge{}, false
}
