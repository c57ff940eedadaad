package issuer

import "slices"

// The states of each kind of resource, in lifecycle order, and which of
// them are final: the one source for the engine, the index, the admin API,
// events and metrics.

// CertificateRequest states.
const (
	RequestPending = "pending"
	RequestReady   = "ready"
	RequestFailed  = "failed"
)

// Order states: the ACME ones, plus errored when certflow itself gave up.
const (
	OrderPending    = "pending"
	OrderReady      = "ready"
	OrderProcessing = "processing"
	OrderValid      = "valid"
	OrderInvalid    = "invalid"
	OrderErrored    = "errored"
)

// Challenge states, in lifecycle order.
const (
	ChallengeQueued      = "queued"
	ChallengeScheduled   = "scheduled"
	ChallengeSynced      = "synced"
	ChallengePresented   = "presented"
	ChallengeSelfChecked = "self-checked"
	ChallengeAccepted    = "accepted"
	ChallengeValid       = "valid"
	ChallengeInvalid     = "invalid"
	ChallengeErrored     = "errored"
)

var (
	requestStates   = []string{RequestPending, RequestReady, RequestFailed}
	orderStates     = []string{OrderPending, OrderReady, OrderProcessing, OrderValid, OrderInvalid, OrderErrored}
	challengeStates = []string{ChallengeQueued, ChallengeScheduled, ChallengeSynced, ChallengePresented,
		ChallengeSelfChecked, ChallengeAccepted, ChallengeValid, ChallengeInvalid, ChallengeErrored}
)

// States returns the states of a kind of resource in lifecycle order (nil
// for an unknown kind).
func States(kind string) []string {
	switch kind {
	case KindRequest:
		return slices.Clone(requestStates)
	case KindOrder:
		return slices.Clone(orderStates)
	case KindChallenge:
		return slices.Clone(challengeStates)
	}
	return nil
}

// FinalStates returns the states a resource of kind ends in.
func FinalStates(kind string) []string {
	switch kind {
	case KindRequest:
		return []string{RequestReady, RequestFailed}
	case KindOrder:
		return []string{OrderValid, OrderInvalid, OrderErrored}
	case KindChallenge:
		return []string{ChallengeValid, ChallengeInvalid, ChallengeErrored}
	}
	return nil
}

// IsFinal reports whether state is final for resources of kind.
func IsFinal(kind, state string) bool {
	return slices.Contains(FinalStates(kind), state)
}
