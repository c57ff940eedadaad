package issuer

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"
)

// Renewal is a step of its own: certmagic decides when a certificate is
// renewed and calls Issue again, with a new key and nothing that says it
// renews. The workflow learns it from storage: when certmagic has a
// certificate of the name stored under one of the policy's issuer keys,
// Issue renews it (certmagic saves the new one only after Issue returns, so
// the old one is still there). The CertificateRequest records which
// certificate it renews and why, and the new order carries `replaces` (RFC
// 9773) when the old certificate comes from the same CA and account and
// the CA offers renewal information.

// CertificateRequest kinds.
const (
	// RequestIssuance: no certificate of the name was stored.
	RequestIssuance = "issuance"
	// RequestRenewal: a stored certificate of the name is replaced.
	RequestRenewal = "renewal"
)

// Why a certificate is renewed, as certmagic decides it (certmagic v0.25.6
// Config.certNeedsRenewal), told apart from what is stored.
const (
	// RenewalARIWindow: the time the CA's ARI window selected has come.
	RenewalARIWindow = "ari_window"
	// RenewalLifetime: the share of its lifetime the policy renews at is
	// left (renewal_window_ratio, default 1/3), or expiry is imminent.
	RenewalLifetime = "lifetime"
	// RenewalExpired: the certificate has expired.
	RenewalExpired = "expired"
	// RenewalForced: an operator asked for it (POST /certflow/renew,
	// caddy certflow renew), or certmagic renewed a certificate none of
	// the above makes due (it does for a revoked one).
	RenewalForced = "forced"
)

// RenewalReasons lists the reasons, for bounded metric labels.
func RenewalReasons() []string {
	return []string{RenewalARIWindow, RenewalLifetime, RenewalExpired, RenewalForced}
}

// Renewal is the certificate a renewal request replaces.
type Renewal struct {
	// Serial (hex) and validity of the certificate being replaced.
	Serial    string    `json:"serial"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	// IssuerKey is the issuer key certmagic stored it under.
	IssuerKey string `json:"issuer_key"`
	// CA and Account are the CA directory and account URL that obtained
	// it, as its stored metadata says (empty when it does not).
	CA      string `json:"ca,omitempty"`
	Account string `json:"account,omitempty"`
	// Reason is why it is renewed (RenewalARIWindow, …).
	Reason string `json:"reason"`
	// ARIID is its ARI certificate identifier; Replaces is true when the
	// new order was sent with it as replaces, and NoReplaces says why it
	// was not (not asked, or refused by the CA).
	ARIID      string `json:"ari_id,omitempty"`
	Replaces   bool   `json:"replaces"`
	NoReplaces string `json:"no_replaces,omitempty"`
}

// StoredCertificate is a certificate certmagic stored, with the ACME
// metadata next to it.
type StoredCertificate struct {
	IssuerKey string
	Leaf      *x509.Certificate
	// Meta is the stored issuer data read as ACME metadata (zero when
	// there is none or it is not ACME's).
	Meta acme.Certificate
}

// LoadStoredCertificate reads the certificate certmagic stored for name
// under issuerKey (certificates/<key>/<name>/<name>.crt and .json; never
// the private key). It returns an error satisfying
// errors.Is(err, fs.ErrNotExist) when there is none.
func LoadStoredCertificate(ctx context.Context, storage certmagic.Storage, issuerKey, name string) (*StoredCertificate, error) {
	certKey := certmagic.StorageKeys.SiteCert(issuerKey, name)
	b, err := storage.Load(ctx, certKey)
	if err != nil {
		return nil, fmt.Errorf("loading %s: %w", certKey, err)
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s: no PEM certificate", certKey)
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", certKey, err)
	}
	sc := &StoredCertificate{IssuerKey: issuerKey, Leaf: leaf}
	if meta, err := storage.Load(ctx, certmagic.StorageKeys.SiteMeta(issuerKey, name)); err == nil {
		var res struct {
			IssuerData json.RawMessage `json:"issuer_data"`
		}
		if json.Unmarshal(meta, &res) == nil && len(res.IssuerData) > 0 {
			_ = json.Unmarshal(res.IssuerData, &sc.Meta) // not ACME's: no metadata
		}
	}
	return sc, nil
}

// findRenewal looks for the certificate this request renews: the first
// one stored for the name under the policy's issuer keys. It returns nil
// for a first issuance. A storage that cannot be read makes it a first
// issuance too, said in the log: what is lost is only `replaces`.
func (w *workflow) findRenewal(ctx context.Context, forced bool, now time.Time) *Renewal {
	for _, key := range w.opts.CertificateKeys {
		sc, err := LoadStoredCertificate(ctx, w.opts.Storage, key, w.name)
		if isNotExist(err) {
			continue
		}
		if err != nil {
			w.logger.Warn("reading the stored certificate to know whether this request renews it; treating it as a first issuance",
				zap.String("issuer_key", key), zap.Error(err))
			return nil
		}
		r := &Renewal{
			Serial:    hex.EncodeToString(sc.Leaf.SerialNumber.Bytes()),
			NotBefore: sc.Leaf.NotBefore,
			NotAfter:  sc.Leaf.NotAfter,
			IssuerKey: key,
			CA:        sc.Meta.CA,
			Account:   sc.Meta.Account,
			Reason:    renewalReason(sc.Leaf, sc.Meta.RenewalInfo, w.opts, forced, now),
		}
		if id, err := acme.ARIUniqueIdentifier(sc.Leaf); err == nil {
			r.ARIID = id
		} else {
			r.NoReplaces = "the certificate has no ARI identifier: " + err.Error()
		}
		return r
	}
	return nil
}

// renewalReason is why certmagic renews leaf now, decided as certmagic
// does: the ARI window's selected time (less one renewal check interval),
// then the lifetime ratio and imminent expiry; what none of them explains
// was forced.
func renewalReason(leaf *x509.Certificate, ari *acme.RenewalInfo, o *Options, forced bool, now time.Time) string {
	switch {
	case forced:
		return RenewalForced
	case !now.Before(expiresAt(leaf)):
		return RenewalExpired
	}
	plan := PlanRenewal(leaf, ari, o.RenewalPolicy())
	if !plan.At.After(now) {
		return plan.Reason
	}
	return RenewalForced
}

// RenewalPolicy is what decides when certmagic renews a certificate: the
// policy's renewal_window_ratio, the renewal check interval and whether
// ARI is used.
type RenewalPolicy struct {
	// WindowRatio is the share of the lifetime left at which a
	// certificate is renewed; 0 means certmagic's default (1/3).
	WindowRatio float64
	// CheckInterval is how often certmagic checks; 0 means its default
	// (10 minutes).
	CheckInterval time.Duration
	// DisableARI ignores the CA's renewal windows (and sends no replaces).
	DisableARI bool
}

// RenewalPolicy returns the options' renewal policy.
func (o *Options) RenewalPolicy() RenewalPolicy {
	return RenewalPolicy{WindowRatio: o.RenewalWindowRatio, CheckInterval: o.RenewCheckInterval, DisableARI: o.DisableARI}
}

// RenewalPlan is when a certificate is due for renewal, and why.
type RenewalPlan struct {
	At     time.Time `json:"at"`
	Reason string    `json:"reason"`
}

// PlanRenewal returns when certmagic renews leaf (with its stored ARI
// information, if any) under p, and why: the earliest of the ARI window's
// selected time less one check interval, the emergency point (1/20 of the
// lifetime left) once an ARI time is known, the lifetime ratio, and the
// imminent-expiry points (1/50 of the lifetime, or five check intervals,
// left).
func PlanRenewal(leaf *x509.Certificate, ari *acme.RenewalInfo, p RenewalPolicy) RenewalPlan {
	ratio := p.WindowRatio
	if ratio <= 0 {
		ratio = certmagic.DefaultRenewalWindowRatio
	}
	interval := p.CheckInterval
	if interval <= 0 {
		interval = certmagic.DefaultRenewCheckInterval
	}
	end := expiresAt(leaf)
	lifetime := end.Sub(leaf.NotBefore)
	at := func(share float64) time.Time { return end.Add(-time.Duration(float64(lifetime) * share)) }

	plan := RenewalPlan{At: at(ratio), Reason: RenewalLifetime}
	earlier := func(t time.Time, reason string) {
		if t.Before(plan.At) {
			plan = RenewalPlan{At: t, Reason: reason}
		}
	}
	earlier(at(1.0/50), RenewalLifetime)
	earlier(end.Add(-5*interval), RenewalLifetime)
	if !p.DisableARI && ari != nil {
		selected := ari.SelectedTime
		if selected.IsZero() && ari.HasWindow() {
			selected = ari.SuggestedWindow.Start
		}
		if !selected.IsZero() {
			earlier(selected.Add(-interval), RenewalARIWindow)
			earlier(at(1.0/20), RenewalLifetime)
		}
	}
	return plan
}

// expiresAt is when leaf stops being valid: certmagic counts the second of
// NotAfter in (ASN.1 times have a resolution of one second).
func expiresAt(leaf *x509.Certificate) time.Time {
	return leaf.NotAfter.Truncate(time.Second).Add(time.Second)
}

// replaces decides whether the new order of this request carries
// `replaces`, and returns it (or ""): only for a renewal of a certificate
// obtained from this CA with this account, when ARI is not disabled and
// the CA's directory offers renewal information. Why not is recorded on
// the request.
func (w *workflow) replaces(ctx context.Context) string {
	r := w.cr.Renews
	if r == nil || r.ARIID == "" {
		return ""
	}
	why := ""
	switch {
	case w.opts.DisableARI:
		why = "ARI is disabled for this policy"
	case r.CA != "" && CAKey(r.CA) != CAKey(w.engine.cfg.CA):
		why = "the certificate was obtained from another CA (" + r.CA + ")"
	case r.Account != "" && w.acct.Location != "" && r.Account != w.acct.Location:
		why = "the certificate was obtained with another ACME account (" + r.Account + ")"
	default:
		var dir acme.Directory
		err := w.call(ctx, opDirectory, "reading the CA's directory for renewal information", func(ctx context.Context) error {
			var err error
			dir, err = w.engine.ca.Directory(ctx)
			return err
		})
		switch {
		case err != nil:
			why = "the CA's directory could not be read: " + err.Error()
		case dir.RenewalInfo == "":
			why = "the CA's directory offers no renewal information"
		}
	}
	r.NoReplaces = why
	if why != "" {
		return ""
	}
	return r.ARIID
}

// isReplacementRefusal reports whether the CA refused a new-order that
// carried `replaces` for a reason other than a rate limit or the network:
// alreadyReplaced, unauthorized (another account's certificate), a server
// error for a serial it does not know, malformed. Such an order is made
// again at once without `replaces`, charged to nobody.
func isReplacementRefusal(err error) bool {
	var prob acme.Problem
	if !errors.As(err, &prob) {
		return false // the network, or an answer that is not ACME's
	}
	var limited *RateLimitedError
	return !errors.As(err, &limited) && prob.Type != acme.ProblemTypeRateLimited && prob.Status != 429
}
