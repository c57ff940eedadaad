package certflow

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/certflow/certflow/issuer"
)

// The holds on the admin API:
//
//	GET    /certflow/holds         the holds in force in every storage certflow uses
//	                               (names, registered domains, accounts), and the state of
//	                               this process's circuit to each CA
//	DELETE /certflow/holds/<key>   clear one hold, by the key the list gives
//
// A hold stops new orders for its scope until the CA's Retry-After (see
// issuer/holds.go). Clearing it deletes it from storage: this node forgets
// it at once, other nodes within a few seconds (they re-read the holds at
// most every 5 s). A name's own hold is also cleared by
// POST /certflow/retry/<name>, with its backoff.

// HoldView is one hold as the admin API shows it.
type HoldView struct {
	IssuerKey string `json:"issuer_key"`
	// Key is what DELETE /certflow/holds/<key> takes.
	Key string `json:"key"`
	issuer.Hold
}

// CircuitView is the state of this process's circuit to one CA and account.
type CircuitView struct {
	CA      string `json:"ca"`
	Account string `json:"account"`
	issuer.BreakerState
}

// HoldsResponse is the body of GET /certflow/holds.
type HoldsResponse struct {
	Holds    []HoldView    `json:"holds"`
	Circuits []CircuitView `json:"circuits"`
}

func (a *adminAPI) handleHolds(w http.ResponseWriter, r *http.Request, key string) error {
	switch {
	case key == "" && (r.Method == http.MethodGet || r.Method == http.MethodHead):
		resp, err := a.holds(r.Context())
		if err != nil {
			return err
		}
		return writeJSON(w, r, resp)
	case key != "" && r.Method == http.MethodDelete:
		return a.clearHold(w, r, key)
	case key == "":
		return allowMethod(r, http.MethodGet)
	}
	return allowMethod(r, http.MethodDelete)
}

func (a *adminAPI) holds(ctx context.Context) (HoldsResponse, error) {
	srcs, err := a.sources(ctx)
	if err != nil {
		return HoldsResponse{}, err
	}
	now := time.Now()
	resp := HoldsResponse{Holds: []HoldView{}, Circuits: circuits()}
	for _, s := range srcs {
		holds, err := s.reader().Holds(ctx, now)
		if err != nil {
			return HoldsResponse{}, caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: err}
		}
		for _, h := range holds {
			resp.Holds = append(resp.Holds, HoldView{IssuerKey: s.issuerKey, Key: h.Scope.Key(), Hold: h})
		}
	}
	slices.SortFunc(resp.Holds, func(x, y HoldView) int { return strings.Compare(x.IssuerKey+x.Key, y.IssuerKey+y.Key) })
	return resp, nil
}

func (a *adminAPI) clearHold(w http.ResponseWriter, r *http.Request, key string) error {
	if key == "" || strings.ContainsAny(key, "/\\ ") {
		return badRequest("invalid hold key %q", key)
	}
	srcs, err := a.sources(r.Context())
	if err != nil {
		return err
	}
	cleared := 0
	for _, s := range srcs {
		ok, err := s.reader().ClearHold(r.Context(), key)
		if err != nil {
			return caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: fmt.Errorf("clearing hold %s: %w", key, err)}
		}
		if ok {
			cleared++
		}
	}
	forgetHoldInIssuers(key)
	if cleared == 0 {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("no hold %q", key)}
	}
	a.log().Info("cleared hold", zap.String("hold", key))
	resp, err := a.holds(r.Context())
	if err != nil {
		return err
	}
	return writeJSON(w, r, resp)
}

// clearNameHolds deletes the hold on exactly name in every source (retry).
func clearNameHolds(ctx context.Context, srcs []source, name string) error {
	key := issuer.NameHoldKey(name)
	for _, s := range srcs {
		if _, err := s.reader().ClearHold(ctx, key); err != nil {
			return err
		}
	}
	forgetHoldInIssuers(key)
	return nil
}

// addHolds fills a name status with the holds in force over the name and
// this process's circuits that are not closed; a held name is failing.
func addHolds(ctx context.Context, st *NameStatus, src source) {
	holds, err := src.reader().HoldsOver(ctx, st.Name, time.Now())
	if err != nil {
		return
	}
	st.Holds = holds
	for _, c := range circuits() {
		if c.State != "closed" {
			st.Circuits = append(st.Circuits, c)
		}
	}
	for _, h := range holds {
		st.Failing = true
		if h.Until.After(st.NextAttempt) {
			st.NextAttempt = h.Until
		}
	}
}

// circuits returns the state of each engine of this process.
func circuits() []CircuitView {
	out := []CircuitView{}
	seen := map[*issuer.Engine]bool{}
	for _, iss := range registeredIssuers() {
		if iss.engine == nil || seen[iss.engine] {
			continue
		}
		seen[iss.engine] = true
		out = append(out, CircuitView{CA: iss.CA, Account: iss.Email, BreakerState: iss.engine.Breaker()})
	}
	slices.SortFunc(out, func(x, y CircuitView) int { return strings.Compare(x.CA+x.Account, y.CA+y.Account) })
	return out
}

// forgetHoldInIssuers drops a cleared hold from this process's engines.
func forgetHoldInIssuers(key string) {
	for _, iss := range registeredIssuers() {
		if iss.engine != nil {
			iss.engine.ForgetHold(key)
		}
	}
}

// holdsOnlyStatus is the status of a name certflow has no record of but
// holds back (a handshake refused by a hold writes nothing): nil when no
// hold covers it.
func holdsOnlyStatus(ctx context.Context, srcs []source, name string) *NameStatus {
	for _, s := range srcs {
		st := &NameStatus{NameStatus: issuer.NameStatus{Name: name}, IssuerKey: s.issuerKey}
		addHolds(ctx, st, s)
		if len(st.Holds) > 0 {
			return st
		}
	}
	return nil
}

// sourceOf is the source of srcs with issuerKey (the first, when several
// storages hold it).
func sourceOf(srcs []source, issuerKey string) source {
	for _, s := range srcs {
		if s.issuerKey == issuerKey {
			return s
		}
	}
	return source{}
}
