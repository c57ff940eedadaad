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
	Version     int      `json:"version"`
	ID          string   `json:"id"`
	Name        string   `json:"name"`
	Identifiers []string `json:"identifiers"`
	CSR         string   `json:"csr"`
	OnDemand    bool     `json:"on_demand,omitempty"`
	// Kind is RequestIssuance (no certificate of the name was stored)
	// or RequestRenewal; Renews says which certificate a renewal
	// replaces and why it was renewed.
	Kind   string   `json:"kind,omitempty"`
	Renews *Renewal `json:"renews,omitempty"`
	State  string   `json:"state"`
	Reason string   `json:"reason,omitempty"`
	// ChargedTo is who a failure was charged to (see Party): only the
	// name's own failures grow its backoff.
	ChargedTo   Party     `json:"charged_to,omitempty"`
	Order       string    `json:"order,omitempty"`
	Attempt     int       `json:"attempt"`
	NextAttempt time.Time `json:"next_attempt,omitzero"`
	Created     time.Time `json:"created"`
	Updated     time.Time `json:"updated"`
	Took        Duration  `json:"took,omitempty"`

	// OrderRecord and ChallengeRecords are the request's order and
	// challenges as they were when the request ended, stored with it: a
	// finished issuance is one write. An order or a challenge that has a
	// record of its own (orders/, challenges/: one that waited in the
	// queue, failed a self-check, was published by DNS-01, ended apart
	// from its request, or was written by an earlier version) is
	// authoritative over its copy here.
	OrderRecord      *Order      `json:"order_record,omitempty"`
	ChallengeRecords []Challenge `json:"challenge_records,omitempty"`
}

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

	// Replaces is the ARI identifier of the certificate the order
	// replaces (RFC 9773), as the CA accepted it; ReplacesRefused is the
	// CA's reason when it refused an order with replaces and the order
	// was made again without.
	Replaces        string `json:"replaces,omitempty"`
	ReplacesRefused string `json:"replaces_refused,omitempty"`
}

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
	// SelfCheckFailures is the last failed self-check's reason per
	// challenge type tried (a failing type gives way to the next one).
	SelfCheckFailures map[string]string `json:"self_check_failures,omitempty"`
	CleanedUp         bool              `json:"cleaned_up,omitempty"`
	// Owner is the engine (process) that runs it, Policy the automation
	// policy whose solvers present it (see Options.PolicyID), and
	// Deadline when it must be final (zero while queued): maintenance
	// judges an abandoned challenge by them.
	Owner    string         `json:"owner,omitempty"`
	Policy   string         `json:"policy,omitempty"`
	Deadline time.Time      `json:"deadline,omitzero"`
	Created  time.Time      `json:"created"`
	Updated  time.Time      `json:"updated"`
	Times    ChallengeTimes `json:"times"`

	// stored is true once the challenge has a record of its own
	// (challenges/<id>): its later states are written there too.
	stored bool
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

// NameRecord is certflow's memory of one name, kept apart from the bounded
// history: the order in progress (resumed after a restart), the failure
// backoff, and which challenge type to try next. It is written when an
// order is made or resumed and when a request fails (or succeeds after
// failures), and deleted by maintenance once there is nothing left to
// remember (nameexpiry.go).
type NameRecord struct {
	Version      int    `json:"version"`
	Name         string `json:"name"`
	CurrentOrder string `json:"current_order,omitempty"`
	LastRequest  string `json:"last_request,omitempty"`
	// Request and Order are the request in flight and the order it works
	// on, as they were when the record was last written: the order a
	// restart resumes (CurrentOrder), and what the status views show
	// until the request's own record is written. Once that record exists
	// (requests/<LastRequest>) they are stale.
	Request *CertificateRequest `json:"request,omitempty"`
	Order   *Order              `json:"order,omitempty"`
	// Recent are the IDs of the name's latest CertificateRequests, oldest
	// first, at most maxRecentRequests: the admin lists by name start
	// from them.
	Recent []string `json:"recent,omitempty"`
	// LastRenewal is the latest CertificateRequest that renewed the
	// name's certificate.
	LastRenewal string    `json:"last_renewal,omitempty"`
	Failures    int       `json:"failures,omitempty"`
	NextAttempt time.Time `json:"next_attempt,omitzero"`
	LastError   string    `json:"last_error,omitempty"`
	// TypeOffset rotates the challenge type preference after a failed
	// validation, so the next attempt uses the next enabled type.
	TypeOffset int `json:"type_offset,omitempty"`
	// OnDemand is true once the name was asked for by a handshake: a
	// background renewal of its certificate (certmagic sends no
	// ClientHello then) respects its backoff like a handshake does.
	OnDemand bool      `json:"on_demand,omitempty"`
	Updated  time.Time `json:"updated"`
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
