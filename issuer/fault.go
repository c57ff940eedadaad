package issuer

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Every failure is charged to exactly one party, and only that party waits
// (DESIGN.md, "Whose fault is it"). Each call site decides, visibly, with
// charge (or a constructor below); recordFailure reads the decision back
// with chargedTo and acts on it: only a failure of the name grows its
// backoff.

// Party is who a failure is charged to.
type Party string

const (
	// PartyName: the CA refused the name's challenge, rejectedIdentifier,
	// CAA, every enabled type's self-check failed. The name's failure
	// backoff grows.
	PartyName Party = "name"
	// PartyHold: a rate limit of the CA, or a Retry-After longer than a
	// request can wait: held until the time the CA gave, for the scope it
	// limited (see holds.go). Nobody's failure count grows.
	PartyHold Party = "hold"
	// PartyAccount: the ACME account (unknown, deactivated, action
	// required). The engine is held; nobody's failure count grows.
	PartyAccount Party = "account"
	// PartyCA: the CA or the network (5xx, timeouts, connection errors,
	// bad nonces): the circuit breaker; nobody's failure count grows.
	PartyCA Party = "ca"
	// PartyStorage: the storage failed; retried, nobody's count grows.
	PartyStorage Party = "storage"
	// PartyProcess: this process's capacity (the scheduler's queue).
	PartyProcess Party = "process"
	// PartyNobody: the work was cut off by a shutdown or a reload; the
	// policy asks for what the CA does not offer (a profile not in its
	// directory): the operator fixes the config; or a record a newer
	// certflow wrote (a rolling upgrade) stands in its way. Nobody waits.
	PartyNobody Party = "nobody"
)

// ChargedError is a failure and the party it is charged to.
type ChargedError struct {
	Party Party
	// Until is when the party's wait ends (holds, the account, an open
	// circuit), zero when the party decides nothing about time.
	Until time.Time
	Err   error
}

func (e *ChargedError) Error() string { return e.Err.Error() }
func (e *ChargedError) Unwrap() error { return e.Err }

// charge charges err to p, unless a call site closer to the failure has
// charged it already: the decision is made where the failure is understood.
// A nil err stays nil.
func charge(p Party, err error) error {
	if err == nil {
		return nil
	}
	var c *ChargedError
	if errors.As(err, &c) {
		return err
	}
	return &ChargedError{Party: p, Err: err}
}

// recharge charges err to p even if it was charged before: for a call site
// that knows better (a request cut off by its own deadline is charged to
// whoever was failing it).
func recharge(p Party, err error) error {
	if err == nil {
		return nil
	}
	return &ChargedError{Party: p, Err: err}
}

// heldUntil is a request held back until until for reason (a rate limit,
// a long Retry-After): not a failure of anyone.
func heldUntil(until time.Time, reason string) error {
	return &ChargedError{Party: PartyHold, Until: until, Err: &HeldBackError{Until: until, Reason: reason}}
}

// chargedTo is the party an error is charged to, and the end of its wait.
// An error no call site charged is decided by what it is: a storage
// failure, a full queue, a cancellation (a shutdown or reload: nobody's)
// or a held-back request; anything else is the name's.
func chargedTo(err error) (Party, time.Time) {
	var c *ChargedError
	if errors.As(err, &c) {
		return c.Party, c.Until
	}
	var held *HeldBackError
	switch {
	case errors.As(err, &held):
		return PartyHold, held.Until
	case errors.Is(err, ErrStorage):
		return PartyStorage, time.Time{}
	case errors.Is(err, ErrQueueFull):
		return PartyProcess, time.Time{}
	case errors.Is(err, context.Canceled):
		return PartyNobody, time.Time{}
	}
	return PartyName, time.Time{}
}

// HeldBackError means a request was not attempted, or a step not waited
// for, because of a rate limit or Retry-After that would outlast what the
// request can wait. It is not a failure of the name.
type HeldBackError struct {
	Until  time.Time
	Reason string
}

func (e *HeldBackError) Error() string {
	return fmt.Sprintf("held back until %s: %s", e.Until.UTC().Format(time.RFC3339), e.Reason)
}
