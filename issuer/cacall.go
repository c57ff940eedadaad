package issuer

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/mholt/acmez/v3/acme"
)

// caOp is what a CA call does; whose fault its failure is depends on it.
type caOp int

const (
	opDirectory caOp = iota
	opAccount        // new-account, account lookup: its refusals are the account's
	opNewOrder
	opOrder // reading or polling an order
	opFinalize
	opAuthorization
	opDeactivate
	opChallenge
	opCertificate
	opRevoke
	opRenewalInfo
)

// caCall is one CA call in flight. It rides in the call's context, where
// the transport (or a fake CA) reports each HTTP response to it.
type caCall struct {
	breaker  *breaker
	probe    bool // the one call a half-open circuit lets through
	observer Observer
	answered *answered // set by finalizeAndWait

	mu         sync.Mutex
	status     int
	retryAfter time.Duration
}

type caCallKey struct{}

func callOf(ctx context.Context) *caCall {
	c, _ := ctx.Value(caCallKey{}).(*caCall)
	return c
}

func (c *caCall) noteResponse(url string, status int, retryAfter time.Duration) {
	c.mu.Lock()
	c.status, c.retryAfter = status, retryAfter
	c.mu.Unlock()
	if a := c.answered; a != nil && url == a.url {
		a.once.Do(func() { close(a.ch) })
	}
}

// result is the status and Retry-After of the call's last response.
func (c *caCall) result() (int, time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.status, c.retryAfter
}

// answered is closed when the CA has answered a request to url: the
// finalize request, after which finalizeAndWait polls the order itself.
type answered struct {
	url  string
	ch   chan struct{}
	once sync.Once
}

// Retries inside one call.
const (
	// maxCallAttempts bounds the attempts of one call whose failure is
	// the CA's (4 attempts in all, 3 retries).
	maxCallAttempts = 4
	// maxInCallWait is the longest Retry-After one call waits for; a
	// longer one gives the request back as held (a scheduler slot is not
	// kept waiting for minutes).
	maxInCallWait = 30 * time.Second
	// defaultRateLimitWait is assumed when a 429 says nothing of when.
	defaultRateLimitWait = time.Minute
)

// callMode is how a call waits for an open circuit.
type callMode struct {
	// interactive: a handshake is waiting; an open circuit fails the
	// call at once instead of making it wait.
	interactive bool
	observer    Observer
	// problemsFinal: an ACME problem document ends the call at once, even
	// a 5xx one (the caller decides what it means); the network's and
	// non-ACME failures are still retried.
	problemsFinal bool
}

// call runs one CA request as fn, for step (in errors and logs): it asks
// the circuit breaker first (failing at once when a handshake waits,
// waiting otherwise), retries a failure of the CA a few times with jittered
// backoff or the CA's Retry-After (up to maxInCallWait), and returns the
// error charged to whoever caused it (classify).
func (e *Engine) call(ctx context.Context, op caOp, step string, mode callMode, fn func(ctx context.Context) error) error {
	wait := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		probe, err := e.admit(ctx, mode)
		if err != nil {
			return fmt.Errorf("%s: %w", step, err)
		}
		call := &caCall{breaker: e.breaker, probe: probe, observer: mode.observer}
		if a, ok := ctx.Value(answeredKey{}).(*answered); ok {
			call.answered = a
		}
		err = fn(context.WithValue(ctx, caCallKey{}, call))
		if call.probe {
			e.breaker.probeEnded()
		}
		if err == nil {
			return nil
		}
		status, retryAfter := call.result()
		err = classify(ctx, op, err, status, retryAfter, time.Now())
		var limited *RateLimitedError
		if errors.As(err, &limited) && (op == opNewOrder || op == opAccount) {
			return fmt.Errorf("%s: %w", step, err) // the order gate decides what it holds
		}
		if party, _ := chargedTo(err); (party != PartyCA && limited == nil) || ctx.Err() != nil || attempt == maxCallAttempts ||
			(mode.problemsFinal && errors.As(err, new(acme.Problem))) {
			return fmt.Errorf("%s: %w", step, err)
		}
		d := wait + rand.N(wait/2)
		if retryAfter > 0 {
			d = retryAfter
		}
		if d > maxInCallWait {
			return fmt.Errorf("%s: %w", step, heldUntil(time.Now().Add(d),
				fmt.Sprintf("the CA asked to wait %s (Retry-After) on %s: %s", d.Round(time.Second), step, problemDetail(err))))
		}
		if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) < d {
			return fmt.Errorf("%s: %w", step, err)
		}
		if err := sleepCtx(ctx, d); err != nil {
			return fmt.Errorf("%s: %w (while waiting to retry after: %w)", step, recharge(PartyNobody, err), err)
		}
		wait = min(wait*2, 5*time.Second)
	}
}

// admit asks the circuit breaker whether a call may go: an interactive call
// is refused at once while the circuit is open; any other waits for it
// (until ctx ends).
func (e *Engine) admit(ctx context.Context, mode callMode) (probe bool, err error) {
	for range maxBreakerWaits {
		probe, err := e.breaker.admit()
		if err == nil {
			return probe, nil
		}
		if mode.interactive {
			return false, charge(PartyCA, err)
		}
		if werr := e.breaker.awaitChange(ctx); werr != nil {
			return false, charge(PartyCA, fmt.Errorf("%w (waited until: %w)", err, werr))
		}
	}
	return false, charge(PartyCA, errors.New("waited too many times for the circuit to the CA"))
}

// maxBreakerWaits bounds admit's loop; each wait lasts until the breaker
// changes or its open period ends (at most breakerMaxRetryAfter).
const maxBreakerWaits = 100000

// classify decides whose fault a failed CA call is, from what the call
// did and what the CA answered:
//   - a 429 (with or without a problem document) is a rate limit: held,
//     nobody's failure (RateLimitedError, its scope decided by the caller);
//   - a 5xx, a bad nonce, a network error, a timeout, an answer that is
//     not ACME's (a proxy's error page) is the CA's;
//   - accountDoesNotExist, userActionRequired, and unauthorized on an
//     account request or naming the account are the account's;
//   - any other refusal (rejectedIdentifier, caa, malformed, unauthorized
//     for the name …) is the name's;
//   - a call cut off by a shutdown or reload is nobody's.
func classify(ctx context.Context, op caOp, err error, status int, retryAfter time.Duration, now time.Time) error {
	var prob acme.Problem
	isProblem := errors.As(err, &prob)
	if isProblem && prob.Status == 0 {
		prob.Status = status
	}
	if isProblem {
		status = prob.Status
	}
	switch {
	case errors.Is(err, ErrCircuitOpen):
		return charge(PartyCA, err)
	case errors.Is(err, context.Canceled) && ctx.Err() != nil:
		return charge(PartyNobody, err)
	case status == http.StatusTooManyRequests || (isProblem && prob.Type == acme.ProblemTypeRateLimited):
		wait := retryAfter
		if wait <= 0 {
			wait = retryAfterInDetail(problemDetail(err), now)
		}
		if wait <= 0 {
			wait = defaultRateLimitWait
		}
		limited := &RateLimitedError{Until: now.Add(wait), Detail: problemDetail(err), Err: err}
		return &ChargedError{Party: PartyHold, Until: limited.Until, Err: limited}
	case !isProblem || prob.Type == acme.ProblemTypeBadNonce || status >= 500:
		return charge(PartyCA, err)
	case isAccountProblem(op, prob):
		return charge(PartyAccount, err)
	}
	return charge(PartyName, err)
}

// isAccountProblem reports whether a refusal is about the account rather
// than the request: decided by the call that got it (an unauthorized on an
// account request is the account's, on anything else the name's, unless
// the CA says the account is not valid).
func isAccountProblem(op caOp, prob acme.Problem) bool {
	switch prob.Type {
	case acme.ProblemTypeAccountDoesNotExist, acme.ProblemTypeUserActionRequired:
		return true
	case acme.ProblemTypeUnauthorized:
		if op == opAccount {
			return true
		}
		d := strings.ToLower(prob.Detail)
		return strings.Contains(d, "account") && (strings.Contains(d, "deactivated") ||
			strings.Contains(d, "revoked") || strings.Contains(d, "not valid"))
	}
	return false
}

// isRefusal reports whether the CA refused the request (a 4xx problem
// other than a rate limit or a bad nonce): the resource it was about
// cannot go on as it is. Transient failures (network, 5xx, 429, bad nonce)
// leave it resumable.
func isRefusal(err error) bool {
	var prob acme.Problem
	if !errors.As(err, &prob) {
		return false
	}
	switch {
	case prob.Status == http.StatusTooManyRequests, prob.Type == acme.ProblemTypeRateLimited,
		prob.Type == acme.ProblemTypeBadNonce, prob.Status >= 500:
		return false
	}
	return prob.Status >= 400
}

// problemDetail is the CA's own words for an error, if it is an ACME
// problem.
func problemDetail(err error) string {
	var prob acme.Problem
	if errors.As(err, &prob) {
		if prob.Detail != "" {
			return prob.Detail
		}
		return prob.Type
	}
	return err.Error()
}

// problemType is the ACME problem type of err, or "".
func problemType(err error) string {
	var prob acme.Problem
	if errors.As(err, &prob) {
		return prob.Type
	}
	return ""
}

// RateLimitedError is a 429 from the CA and when it said to try again.
type RateLimitedError struct {
	Until  time.Time
	Detail string
	Err    error
}

func (e *RateLimitedError) Error() string {
	return fmt.Sprintf("rate limited by the CA until %s: %s", e.Until.UTC().Format(time.RFC3339), e.Detail)
}

func (e *RateLimitedError) Unwrap() error { return e.Err }

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

// pollWait returns how long to wait before poll number n (0-based): start
// within milliseconds and double up to a cap, unless the CA said otherwise.
func pollWait(n int, retryAfter time.Duration) time.Duration {
	return pollWaitFrom(minPollStep, n, retryAfter)
}

// minPollStep is the first gap between polls.
const minPollStep = 2 * time.Millisecond

// pollWaitFrom is pollWait with a first gap of step.
func pollWaitFrom(step time.Duration, n int, retryAfter time.Duration) time.Duration {
	if retryAfter > 0 {
		return retryAfter
	}
	d := max(step, minPollStep) << min(n, 10)
	return min(d, time.Second)
}
