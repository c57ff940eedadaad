package certflow

import (
	"errors"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/certflow/certflow/issuer"
)

// AdmissionStatus is the permission module's cached answer for a name, as
// GET /certflow/status/<name> shows it: this node's cache only (each node
// of a cluster caches for itself).
type AdmissionStatus struct {
	// Allowed is the answer.
	Allowed bool `json:"allowed"`
	// Source is the endpoint or module that answered.
	Source string `json:"source"`
	// Decided is when the answer came; Expires when it will be asked again.
	Decided time.Time `json:"decided"`
	Expires time.Time `json:"expires"`
}

// admissionStatus returns the newest unexpired cached answer for name in
// any permission module of this process, or nil.
func admissionStatus(name string) *AdmissionStatus {
	name = normalizeAdmissionName(name)
	now := time.Now()
	var best *AdmissionStatus
	admissionPool.Range(func(_, v any) bool {
		st := v.(*admissionState)
		if d, ok := st.cache.peek(name, now); ok && (best == nil || d.decided.After(best.Decided)) {
			best = &AdmissionStatus{Allowed: d.allowed, Source: st.source, Decided: d.decided, Expires: d.expires}
		}
		return true
	})
	return best
}

// admissionLine is `caddy certflow status`'s line for a cached answer.
func admissionLine(a *AdmissionStatus, now time.Time) string {
	answer := "denied"
	if a.Allowed {
		answer = "allowed"
	}
	return answer + " by " + a.Source + " (answered " + relative(a.Decided, now) + ", asked again " + relative(a.Expires, now) + ")"
}

// withAdmission adds the cached admission answer to a status, or makes a
// status of it alone when certflow's storage knows nothing of the name (a
// denied name never reaches an issuer).
func withAdmission(st *NameStatus, err error, name string) (*NameStatus, error) {
	a := admissionStatus(name)
	if err != nil {
		var apiErr caddy.APIError
		if a == nil || !errors.As(err, &apiErr) || apiErr.HTTPStatus != http.StatusNotFound {
			return nil, err
		}
		return &NameStatus{NameStatus: issuer.NameStatus{Name: name}, Admission: a}, nil
	}
	st.Admission = a
	return st, nil
}
