package certflow

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/certflow/certflow/issuer"
)

// Forcing a renewal (POST /certflow/renew/<name>, caddy certflow renew
// <name>) goes through certmagic, as its own renewals do: RenewCertSync on
// the certmagic config of the policy that issues the name, so its
// issue_cert_<name> lock (one renewal per name across a cluster), its
// storage of the new certificate and its events hold. certflow's Issue
// learns from the context that the renewal was forced and reports the
// CertificateRequest it became. The renewed certificate is then served at
// once by this node (see cachesync.go), and by the other nodes of a
// cluster within RenewalServedWithin.

// renewalHooks are what an issuer instance keeps for forced renewals: the
// TLS app that provisioned it (which policy issues a name) and its
// policy's certmagic config (the latest SetConfig's).
type renewalHooks struct {
	tls   *caddytls.TLS // nil when the TLS app cannot be found
	magic atomic.Pointer[certmagic.Config]
}

func newRenewalHooks(ctx caddy.Context) *renewalHooks {
	h := new(renewalHooks)
	if app, err := ctx.App("tls"); err == nil {
		h.tls, _ = app.(*caddytls.TLS)
	}
	return h
}

// renewalOptions copies the settings that decide when certmagic renews a
// certificate into opts, so a request can tell why it renews one.
func (iss *Issuer) renewalOptions(opts *issuer.Options, cfg *certmagic.Config) {
	opts.RenewalWindowRatio = cfg.RenewalWindowRatio
	opts.DisableARI = cfg.DisableARI
	if h := iss.renewal; h != nil && h.tls != nil && h.tls.Automation != nil {
		opts.RenewCheckInterval = time.Duration(h.tls.Automation.RenewCheckInterval)
	}
}

// Forced renewal bounds.
const (
	// forcedRenewalTimeout bounds a forced renewal, which goes on when the
	// client that asked for it goes away.
	forcedRenewalTimeout = 10 * time.Minute
	// forcedRenewalWait is how long the admin API waits for the outcome
	// before it answers with the request still pending.
	forcedRenewalWait = 3 * time.Minute
)

// errNotCertflow: no certflow issuer issues the name on this node.
var errNotCertflow = errors.New("no automation policy with a certflow issuer applies to this name")

// RenewResult is the answer to a forced renewal.
type RenewResult struct {
	Name string `json:"name"`
	// Request is the ID of the CertificateRequest the renewal became ("":
	// certflow was not asked, e.g. another issuer of the policy renewed).
	Request string `json:"request,omitempty"`
	// State is ready, failed, or pending when the renewal was still
	// running when the answer was sent.
	State string `json:"state"`
	// Error is why it failed.
	Error string `json:"error,omitempty"`
	// Replaced is the serial (hex) of the certificate it replaced, and
	// Certificate the one stored now.
	Replaced    string           `json:"replaced,omitempty"`
	Certificate *CertificateInfo `json:"certificate,omitempty"`
	// Served says whether this node serves the new certificate now;
	// other nodes sharing the storage do within ServedElsewhereWithin.
	Served                bool     `json:"served"`
	ServedElsewhereWithin Duration `json:"served_elsewhere_within"`
}

// Duration marshals as a Go duration string.
type Duration = issuer.Duration

// forceRenewal renews name now through the certmagic config of the policy
// that issues it with certflow, waiting up to wait for the outcome.
func forceRenewal(ctx context.Context, name string, wait time.Duration, logger *zap.Logger) (RenewResult, error) {
	res := RenewResult{Name: name, State: issuer.RequestPending, ServedElsewhereWithin: Duration(RenewalServedWithin)}
	inst, cfg := issuerFor(name)
	if inst == nil {
		return res, fmt.Errorf("%w: %s", errNotCertflow, name)
	}
	if old, err := issuer.LoadStoredCertificate(ctx, cfg.Storage, inst.IssuerKey(), name); err == nil {
		res.Replaced = serialHex(old.Leaf)
	}

	replaced := res.Replaced
	mark := issuer.NewForcedRenewal()
	rctx, cancel := context.WithTimeout(issuer.WithForcedRenewal(context.WithoutCancel(ctx), mark), forcedRenewalTimeout)
	done := make(chan error, 1)
	go func() {
		defer cancel()
		err := cfg.RenewCertSync(rctx, name, true)
		if err == nil {
			// served here at once, announced to the other nodes
			serveRenewed(context.WithoutCancel(rctx), cfg, inst, name, replaced, logger)
		}
		done <- err
	}()
	logger.Info("forcing a renewal", zap.String("name", name))

	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case err := <-done:
		res.Request = mark.RequestID()
		if err != nil {
			res.State, res.Error = issuer.RequestFailed, err.Error()
			return res, nil
		}
		res.State = issuer.RequestReady
	case <-timer.C:
		res.Request = mark.RequestID()
		return res, nil
	case <-ctx.Done():
		res.Request = mark.RequestID()
		return res, nil
	}
	if sc, err := issuer.LoadStoredCertificate(ctx, cfg.Storage, inst.IssuerKey(), name); err == nil {
		res.Certificate = certificateInfo(sc, inst.renewalPolicy())
		res.Served = servesSerial(cfg, name, res.Certificate.Serial)
	}
	return res, nil
}

// issuerFor returns the certflow issuer instance of this process whose
// automation policy issues name, and that policy's certmagic config; nil
// when there is none (no policy matches, its issuers are not certflow's,
// or it has no config yet).
func issuerFor(name string) (*Issuer, *certmagic.Config) {
	for _, inst := range registeredIssuers() {
		h := inst.renewal
		if h == nil || h.tls == nil {
			continue
		}
		cfg := h.magic.Load()
		if cfg == nil {
			continue
		}
		ap := certLookup{tls: h.tls}.policyFor(name)
		if ap != nil && slices.ContainsFunc(ap.Issuers, func(i certmagic.Issuer) bool { return i == certmagic.Issuer(inst) }) {
			return inst, cfg
		}
	}
	return nil, nil
}

// renewalPolicy is when the instance's policy renews certificates.
func (iss *Issuer) renewalPolicy() issuer.RenewalPolicy {
	if iss.options != nil {
		if opts := iss.options.Load(); opts != nil {
			return opts.RenewalPolicy()
		}
	}
	return issuer.RenewalPolicy{}
}
