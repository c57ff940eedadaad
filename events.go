package certflow

import (
	"strings"

	"github.com/certflow/certflow/issuer"
)

// Caddy events emitted by certflow, through Caddy's events app, with the
// issuer module (tls.issuance.certflow) as origin: subscribe to them by name,
// or to everything from the module ID or a prefix of it ("tls.issuance",
// "tls"). Events are emitted synchronously on the workflow's goroutine, so
// handlers should be quick; certflow never aborts on a handler's error.
// There is one event per transition the engine reports (EventNames), and
// none carries a secret: no key, key authorization or EAB secret. The
// names and the data each carries are listed for users in
// docs/metrics-and-events.md, which TestDocumentedEvents holds to
// EventNames.
const (
	EventRequestCreated = "certflow_request_created"
	EventRequestReady   = "certflow_request_ready"
	EventRequestFailed  = "certflow_request_failed"
	EventOrderCreated   = "certflow_order_created"
	EventBackoff        = "certflow_backoff"
	// Orders emit "certflow_order_" + state and challenges
	// "certflow_challenge_" + state with '-' turned into '_'; see
	// OrderEventName and ChallengeEventName.
	eventOrderPrefix     = "certflow_order_"
	eventChallengePrefix = "certflow_challenge_"
)

// OrderEventName is the event emitted when an order reaches state.
func OrderEventName(state string) string {
	return eventOrderPrefix + eventSuffix(state)
}

// ChallengeEventName is the event emitted when a challenge reaches state
// (e.g. "self-checked" → "certflow_challenge_self_checked").
func ChallengeEventName(state string) string {
	return eventChallengePrefix + eventSuffix(state)
}

func eventSuffix(state string) string { return strings.ReplaceAll(state, "-", "_") }

// EventNames lists every event certflow emits, in lifecycle order.
func EventNames() []string {
	names := []string{EventRequestCreated, EventRequestReady, EventRequestFailed, EventOrderCreated}
	for _, s := range []string{issuer.OrderPending, issuer.OrderReady, issuer.OrderProcessing, issuer.OrderValid, issuer.OrderInvalid, issuer.OrderErrored} {
		names = append(names, OrderEventName(s))
	}
	for _, s := range []string{issuer.ChallengeQueued, issuer.ChallengeScheduled, issuer.ChallengeSynced, issuer.ChallengePresented,
		issuer.ChallengeSelfChecked, issuer.ChallengeAccepted, issuer.ChallengeValid, issuer.ChallengeInvalid, issuer.ChallengeErrored} {
		names = append(names, ChallengeEventName(s))
	}
	return append(names, EventBackoff)
}
