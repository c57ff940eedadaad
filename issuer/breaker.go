package issuer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// The circuit breaker keeps a CA outage from turning into a retry storm
// against a recovering CA: after a few failed responses in a row (network
// errors, timeouts, 5xx), the circuit opens and no request is sent until
// it has been open for a while; then one probe call at a time goes
// through, and the first response that proves the CA answers closes it.
// While it is open, on-demand requests fail at once with its state and
// managed ones wait. A CA outage is nobody's failure: no name's backoff
// grows. One breaker per engine (CA and account); the transport consults
// it for every HTTP request, so a call already in flight when the circuit
// opens stops at its next retry instead of finishing its own storm.

// Breaker tuning, documented in the README.
const (
	// BreakerThreshold is how many failed responses in a row open it.
	BreakerThreshold = 5
	// BreakerMinOpen and BreakerMaxOpen bound how long it stays open
	// before a probe: the wait doubles with each failed probe.
	BreakerMinOpen = time.Second
	BreakerMaxOpen = 30 * time.Second
	// breakerMaxRetryAfter caps how long a 503's Retry-After keeps it
	// open.
	breakerMaxRetryAfter = 10 * time.Minute
)

// BreakerState is the circuit breaker's state, for status views.
type BreakerState struct {
	// State is "closed", "open" or "probing".
	State string `json:"state"`
	// Since is when it last opened; Until when the next probe may go.
	Since time.Time `json:"since,omitzero"`
	Until time.Time `json:"until,omitzero"`
	// Failures is the failed responses in a row that opened it (or since
	// the last success while closed).
	Failures int `json:"failures,omitempty"`
	// Reason is the last failure.
	Reason string `json:"reason,omitempty"`
}

const (
	breakerClosed  = "closed"
	breakerOpen    = "open"
	breakerProbing = "probing"
)

// ErrCircuitOpen is returned for a CA request not sent because the
// circuit to the CA is open.
var ErrCircuitOpen = errors.New("the circuit to the CA is open")

type breaker struct {
	mu       sync.Mutex
	state    string
	failures int
	opened   time.Time
	until    time.Time     // open: when a probe may go
	wait     time.Duration // the current open period
	reason   string
	probing  bool          // a probe call is in flight
	changed  chan struct{} // closed and replaced at every change, for waiters
	now      func() time.Time
}

func newBreaker() *breaker {
	return &breaker{state: breakerClosed, changed: make(chan struct{}), now: time.Now}
}

// admit is asked before a CA call starts: nil lets it go (probe reports
// that it is the one probe of a half-open circuit), an error refuses it.
func (b *breaker) admit() (probe bool, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.state == breakerClosed:
		return false, nil
	case b.probing:
		return false, b.refusalLocked("a probe of the CA is in flight")
	case b.now().Before(b.until):
		return false, b.refusalLocked("next probe at " + b.until.UTC().Format(time.RFC3339))
	}
	b.probing = true
	b.state = breakerProbing
	b.signalLocked()
	return true, nil
}

func (b *breaker) refusalLocked(detail string) error {
	return fmt.Errorf("%w since %s after %d failed responses (%s; last: %s)", ErrCircuitOpen,
		b.opened.UTC().Format(time.RFC3339), b.failures, detail, b.reason)
}

// allows reports whether a request of a call may be sent now: always while
// closed, only the probe's while not.
func (b *breaker) allows(probe bool) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.state == breakerClosed || (probe && b.probing)
}

// succeeded records a response that proves the CA answers (any status
// below 500): the circuit closes.
func (b *breaker) succeeded() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state == breakerClosed && b.failures == 0 {
		return
	}
	b.state, b.failures, b.probing, b.wait, b.reason = breakerClosed, 0, false, 0, ""
	b.signalLocked()
}

// failed records a response that did not come, or came with a 5xx:
// retryAfter is the CA's Retry-After, if it gave one.
func (b *breaker) failed(reason string, retryAfter time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	b.failures++
	b.reason = reason
	switch {
	case b.state == breakerClosed && b.failures < BreakerThreshold:
		return
	case b.state == breakerClosed:
		b.opened, b.wait = now, BreakerMinOpen
	case b.state == breakerProbing:
		b.wait = min(b.wait*2, BreakerMaxOpen)
	default: // open: a straggler of a call admitted before it opened
		return
	}
	if retryAfter > b.wait {
		b.wait = min(retryAfter, breakerMaxRetryAfter)
	}
	b.state, b.probing, b.until = breakerOpen, false, now.Add(b.wait)
	b.signalLocked()
}

// probeEnded is called when a probe call ends without any response that
// decided (e.g. cut off by its context): another may go.
func (b *breaker) probeEnded() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state == breakerProbing {
		b.state, b.probing = breakerOpen, false
		b.signalLocked()
	}
}

func (b *breaker) signalLocked() {
	close(b.changed)
	b.changed = make(chan struct{})
}

// awaitChange waits until the breaker changes, its open period ends, or
// ctx is done.
func (b *breaker) awaitChange(ctx context.Context) error {
	b.mu.Lock()
	ch, until := b.changed, b.until
	b.mu.Unlock()
	wait := time.Until(until)
	if wait <= 0 {
		wait = 50 * time.Millisecond // a probe is in flight: look again soon
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-ch:
	case <-t.C:
	}
	return nil
}

// snapshot returns the state for status views.
func (b *breaker) snapshot() BreakerState {
	b.mu.Lock()
	defer b.mu.Unlock()
	st := BreakerState{State: b.state, Failures: b.failures, Reason: b.reason}
	if b.state != breakerClosed {
		st.Since, st.Until = b.opened, b.until
	}
	return st
}

// refusesNow returns the refusal a handshake would meet now, without
// taking the probe: the circuit is open and no probe may go yet, or the
// probe is in flight. nil when a call could go (closed, or a probe may be
// sent).
func (b *breaker) refusesNow(now time.Time) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.state == breakerClosed:
		return nil
	case b.probing:
		return &ChargedError{Party: PartyCA, Until: now.Add(b.wait), Err: b.refusalLocked("a probe of the CA is in flight")}
	case now.Before(b.until):
		return &ChargedError{Party: PartyCA, Until: b.until, Err: b.refusalLocked("next probe at " + b.until.UTC().Format(time.RFC3339))}
	}
	return nil
}
