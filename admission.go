package certflow

import (
	"time"

	"github.com/certflow/certflow/issuer"
)

// What certflow's issuers of this process would refuse now, answered from
// memory: the permission module (tls.permission.certflow) asks before it
// calls an ask endpoint, so that a name certflow is holding back costs
// nobody anything. Nothing here reads or writes storage.

// Refusal is why certflow would not try to obtain a certificate for a name
// now, and when it may be tried again (zero: never, e.g. a name no enabled
// challenge type can obtain).
type Refusal struct {
	Reason string
	Until  time.Time
}

// refusalFor reports whether every certflow issuer instance of this process
// would refuse an on-demand request for name at now: a name none of them
// can ever obtain (PreCheck), or one they hold back (its failure backoff, a
// rate-limit hold on the name, its registered domain or the account, an
// open circuit to the CA), as far as this process has seen or loaded it.
// With no certflow issuer registered it refuses nothing. name must already
// be normalised (lower case, A-labels).
func refusalFor(name string, now time.Time) (Refusal, bool) {
	insts := registeredIssuers()
	if len(insts) == 0 {
		return Refusal{}, false
	}
	var first Refusal
	for i, iss := range insts {
		r, refused := iss.refusal(name, now)
		if !refused {
			return Refusal{}, false
		}
		if i == 0 {
			first = r
		}
	}
	return first, true
}

// refusal is this instance's answer for refusalFor.
func (iss *Issuer) refusal(name string, now time.Time) (Refusal, bool) {
	if err := iss.canIssue(name); err != nil {
		return Refusal{Reason: err.Error()}, true
	}
	if iss.engine == nil {
		return Refusal{}, false
	}
	if r, ok := iss.engine.RefusalFor(iss.issuerKey, name, now); ok {
		return Refusal{Reason: r.Reason, Until: r.Until}, true
	}
	return Refusal{}, false
}

// forgetInIssuers drops what every issuer instance of this process
// remembers of name's backoff and own hold (after an operator cleared
// them in storage).
func forgetInIssuers(name string) {
	for _, iss := range registeredIssuers() {
		if iss.engine != nil {
			iss.engine.Forget(iss.issuerKey, name)
			iss.engine.ForgetHold(issuer.NameHoldKey(name))
		}
	}
}
