package issuer

import "time"

// Refusal is why the engine would not try a name now, and until when.
type Refusal struct {
	Reason string
	Until  time.Time
}

// RefusalFor reports, from memory only, whether the engine would refuse an
// on-demand request for name under issuerKey at now: the name's failure
// backoff, a rate-limit hold on the name, its registered domain or the
// account, or an open circuit to the CA, as far as this process has seen or
// loaded them. It never touches storage or the CA.
func (e *Engine) RefusalFor(issuerKey, name string, now time.Time) (Refusal, bool) {
	return Refusal{}, false // filled in by the failure-semantics work
}
