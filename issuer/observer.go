package issuer

import "time"

// Observer is told about every transition of the workflow, for metrics,
// events and status views. Implementations MUST be safe for concurrent use
// and SHOULD return quickly: they run on the workflow's goroutine. The
// resources passed are snapshots; an Observer MUST NOT keep or modify them.
type Observer interface {
	// RequestChanged is called when a CertificateRequest is created or
	// reaches ready or failed.
	RequestChanged(cr CertificateRequest)
	// OrderCreated is called once when an Order was created at the CA;
	// took is the new-order request's.
	OrderCreated(o Order, took time.Duration)
	// OrderChanged is called when an Order changes state; took is the time
	// since its previous state.
	OrderChanged(o Order, took time.Duration)
	// ChallengeChanged is called when a Challenge changes state; took is
	// the time since its previous state.
	ChallengeChanged(ch Challenge, took time.Duration)
	// CAResponded is called for every HTTP response (or transport error,
	// status 0) from the CA.
	CAResponded(status int, took time.Duration)
	// BackoffStarted is called when a name starts backing off after a
	// failure, or is held back by a rate limit or the CA's Retry-After.
	BackoffStarted(name string, until time.Time, reason string)
}

// nopObserver is used when Options.Observer is nil.
type nopObserver struct{}

func (nopObserver) RequestChanged(CertificateRequest)         {}
func (nopObserver) OrderCreated(Order, time.Duration)         {}
func (nopObserver) OrderChanged(Order, time.Duration)         {}
func (nopObserver) ChallengeChanged(Challenge, time.Duration) {}
func (nopObserver) CAResponded(int, time.Duration)            {}
func (nopObserver) BackoffStarted(string, time.Time, string)  {}
