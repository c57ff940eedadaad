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
//
// Event names (one per transition the engine reports):
//
//	certflow_request_created      a CertificateRequest was created (Issue was called)
//	certflow_request_ready        it ended with a certificate
//	certflow_request_failed       it ended without one
//	certflow_order_created        an ACME order was created (state pending, or ready when
//	                              the CA already holds every authorization as valid)
//	certflow_order_pending        a step of the order failed transiently; it stays
//	                              resumable (reason set)
//	certflow_order_ready          the order became ready
//	certflow_order_processing     the order is being finalized
//	certflow_order_valid          the certificate was downloaded
//	certflow_order_invalid        the CA refused the order or one of its authorizations
//	certflow_order_errored        certflow gave up on the order
//	certflow_challenge_queued     a challenge waits for a scheduler slot
//	certflow_challenge_scheduled  it got one
//	certflow_challenge_synced     its state was read from the CA
//	certflow_challenge_presented  its token or TXT record is in place
//	certflow_challenge_self_checked  the self-check passed (or was skipped)
//	certflow_challenge_accepted   the CA was asked to validate
//	certflow_challenge_valid      the CA validated it
//	certflow_challenge_invalid    the CA refused it
//	certflow_challenge_errored    certflow gave up on it
//	certflow_backoff              a name starts backing off after a failure, or is held
//	                              back by a rate limit or the CA's Retry-After
//
// Event data (keys present when they apply; times are time.Time, durations
// float64 seconds):
//
//	name          the certificate's name (requests, orders, backoff) or the
//	              challenge's identifier (challenges)
//	identifiers   []string, the request's or order's identifiers
//	request       CertificateRequest ID
//	order         Order ID
//	challenge     Challenge ID
//	state         the new state (challenge states as stored, e.g. "self-checked")
//	took          seconds since the resource's previous state; for request_ready
//	              and request_failed the whole request; for order_created the
//	              new-order request
//	reason        why (failures, transient errors, self-check failures)
//	challenge_type  http-01, tls-alpn-01 or dns-01 (challenges)
//	wildcard      bool (challenges)
//	on_demand     bool, a TLS handshake is waiting (requests, challenges)
//	attempt       int, the request's attempt number for the name (requests)
//	next_attempt  time.Time, when a failed name may be tried again (request_failed)
//	until         time.Time, the end of the backoff (backoff)
//	url           the order's URL at the CA (orders)
//	reused_authorizations  int (order_created)
//
// Nothing in an event is secret: no key, key authorization or EAB secret.
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
