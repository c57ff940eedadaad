package issuer

import (
	"encoding/json"
	"time"
)

// SchemaVersion is the version of every stored resource. A resource with
// another version is reported and set aside, never guessed at.
const SchemaVersion = 1

// Resource kinds, also the storage folder names.
const (
	KindRequest   = "requests"
	KindOrder     = "orders"
	KindChallenge = "challenges"
	kindNames     = "names"
)

// CertificateRequest is one call of Issue: the CSR, the identifiers, the
// outcome, and the time of the next allowed attempt after a failure.
type CertificateRequest struct {
	Version     int       `json:"version"`
	ID          string    `json:"id"`
	Name        string    `json:"name"`
	Identifiers []string  `json:"identifiers"`
	CSR         string    `json:"csr"`
	OnDemand    bool      `json:"on_demand,omitempty"`
	State       string    `json:"state"`
	Reason      string    `json:"reason,omitempty"`
	Order       string    `json:"order,omitempty"`
	Attempt     int       `json:"attempt"`
	NextAttempt time.Time `json:"next_attempt,omitzero"`
	Created     time.Time `json:"created"`
	Updated     time.Time `json:"updated"`
	Took        Duration  `json:"took,omitempty"`

	indexed string // the state the index shows; "" until first saved
}

// CertificateRequest states.
const (
	RequestPending = "pending"
	RequestReady   = "ready"
	RequestFailed  = "failed"
)

// Order mirrors an ACME order.
type Order struct {
	Version        int       `json:"version"`
	ID             string    `json:"id"`
	Request        string    `json:"request"`
	Name           string    `json:"name"`
	Identifiers    []string  `json:"identifiers"`
	URL            string    `json:"url,omitempty"`
	Authorizations []string  `json:"authorizations,omitempty"`
	Finalize       string    `json:"finalize,omitempty"`
	Certificate    string    `json:"certificate,omitempty"`
	State          string    `json:"state"`
	Reason         string    `json:"reason,omitempty"`
	Challenges     []string  `json:"challenges,omitempty"`
	ReusedAuthzs   int       `json:"reused_authorizations,omitempty"`
	Expires        time.Time `json:"expires,omitzero"`
	Created        time.Time `json:"created"`
	Updated        time.Time `json:"updated"`
	Finalized      time.Time `json:"finalized,omitzero"`

	// Profile is the ACME profile the CA says the order is for, NotAfter
	// the notAfter it was asked for, Chain the URL of the alternate chain
	// preferred_chains chose (empty: the CA's default chain).
	Profile  string     `json:"profile,omitempty"`
	NotAfter *time.Time `json:"not_after,omitempty"`
	Chain    string     `json:"chain,omitempty"`

	indexed string // the state the index shows; "" until first saved
}

// Order states: the ACME ones, plus errored when certflow itself gave up.
const (
	OrderPending    = "pending"
	OrderReady      = "ready"
	OrderProcessing = "processing"
	OrderValid      = "valid"
	OrderInvalid    = "invalid"
	OrderErrored    = "errored"
)

// Challenge is one identifier's authorization being solved.
type Challenge struct {
	Version          int             `json:"version"`
	ID               string          `json:"id"`
	Order            string          `json:"order"`
	Name             string          `json:"name"`
	Wildcard         bool            `json:"wildcard,omitempty"`
	Type             string          `json:"type"`
	Token            string          `json:"token,omitempty"`
	AuthorizationURL string          `json:"authorization_url"`
	URL              string          `json:"url,omitempty"`
	State            string          `json:"state"`
	Reason           string          `json:"reason,omitempty"`
	OnDemand         bool            `json:"on_demand,omitempty"`
	Presented        json.RawMessage `json:"presented,omitempty"`
	SelfChecks       int             `json:"self_checks,omitempty"`
	CleanedUp        bool            `json:"cleaned_up,omitempty"`
	Created          time.Time       `json:"created"`
	Updated          time.Time       `json:"updated"`
	Times            ChallengeTimes  `json:"times"`

	indexed string // the state the index shows; "" until first saved
}

// ChallengeTimes records when each lifecycle step was reached.
type ChallengeTimes struct {
	Scheduled   time.Time `json:"scheduled,omitzero"`
	Synced      time.Time `json:"synced,omitzero"`
	Presented   time.Time `json:"presented,omitzero"`
	SelfChecked time.Time `json:"self_checked,omitzero"`
	Accepted    time.Time `json:"accepted,omitzero"`
	Finished    time.Time `json:"finished,omitzero"`
}

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

// isFinal reports whether a challenge state is final.
func isFinalChallengeState(state string) bool {
	return state == ChallengeValid || state == ChallengeInvalid || state == ChallengeErrored
}

// NameRecord is certflow's memory of one name, kept apart from the bounded
// history so retention never erases it: the order in progress (resumed after
// a restart), the failure backoff, and which challenge type to try next.
type NameRecord struct {
	Version      int       `json:"version"`
	Name         string    `json:"name"`
	CurrentOrder string    `json:"current_order,omitempty"`
	LastRequest  string    `json:"last_request,omitempty"`
	Failures     int       `json:"failures,omitempty"`
	NextAttempt  time.Time `json:"next_attempt,omitzero"`
	LastError    string    `json:"last_error,omitempty"`
	// TypeOffset rotates the challenge type preference after a failed
	// validation, so the next attempt uses the next enabled type.
	TypeOffset int       `json:"type_offset,omitempty"`
	Updated    time.Time `json:"updated"`
}

// Duration marshals as a Go duration string ("1.5s") for readability.
type Duration time.Duration

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	*d = Duration(v)
	return err
}
