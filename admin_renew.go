package certflow

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

// POST /certflow/renew/<name>[?wait=<duration>] renews the name's
// certificate now, through certmagic (see renew.go), and answers with the
// CertificateRequest it became: RenewResult, 200 once the renewal is
// finished (its state says whether it was issued or failed), 202 while it
// is still running after wait (default 3m, at most 10m; it goes on, and
// /certflow/status/<name> shows it). It answers 404 when no certflow issuer
// of this node issues the name, 409 when certmagic refused before certflow
// was asked (e.g. the name has no certificate and cannot be obtained now).
//
// The node that renewed serves the new certificate as soon as the answer
// is sent; the other nodes sharing the storage within RenewalServedWithin.
func (a *adminAPI) handleRenew(w http.ResponseWriter, r *http.Request, rawName string) error {
	name, err := parseName(rawName)
	if err != nil {
		return err
	}
	wait := forcedRenewalWait
	if v := r.URL.Query().Get("wait"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 || d > forcedRenewalTimeout {
			return badRequest("wait must be a duration from 0s to %s, got %q", forcedRenewalTimeout, v)
		}
		wait = d
	}
	res, err := forceRenewal(r.Context(), name, wait, a.log())
	if errors.Is(err, errNotCertflow) {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: err}
	}
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: fmt.Errorf("renewing %s: %w", name, err)}
	}
	a.log().Info("forced renewal", zap.String("name", name), zap.String("request", res.Request),
		zap.String("state", res.State), zap.String("error", res.Error))
	status := http.StatusOK
	switch {
	case res.State == "pending":
		status = http.StatusAccepted
	case res.Request == "" && res.State == "failed":
		status = http.StatusConflict // certmagic failed before it asked certflow
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	return writeJSON(w, r, res)
}
