package issuer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/mholt/acmez/v3/acme"
)

// What a new-order request carries besides the identifiers: the ACME
// profile and the certificate's notAfter, as the stock acme issuer sends
// them (certmagic v0.25.6 ACMEIssuer.doIssue).

// ProfileError is a profile the CA's directory does not offer. It is
// decided when an order is made, never when the config is loaded, so a
// reload does not depend on the CA being reachable.
type ProfileError struct {
	Profile string
	Offered []string // sorted; empty when the CA offers no profiles
}

func (e *ProfileError) Error() string {
	if len(e.Offered) == 0 {
		return fmt.Sprintf("ACME profile %q: the CA's directory offers no profiles; remove profile", e.Profile)
	}
	return fmt.Sprintf("ACME profile %q is not offered by the CA; its directory offers: %s",
		e.Profile, strings.Join(e.Offered, ", "))
}

// checkOrderProfile makes sure, before an order is made, that the CA's
// directory offers the policy's profile (acmez caches the directory, so this
// costs a request only the first time, and every 12 hours). A profile the
// CA does not offer is the policy's mistake, not the name's: nobody's
// failure count grows and nobody waits; the operator fixes the config.
func (w *workflow) checkOrderProfile(ctx context.Context) error {
	profile := w.opts.Profile
	if profile == "" {
		return nil
	}
	var dir acme.Directory
	err := w.call(ctx, opDirectory, "reading the CA's directory for its profiles", func(ctx context.Context) error {
		var err error
		dir, err = w.engine.ca.Directory(ctx)
		return err
	})
	if err != nil {
		return err
	}
	var offered []string
	if dir.Meta != nil {
		for name := range dir.Meta.Profiles {
			offered = append(offered, name)
		}
	}
	if slices.Contains(offered, profile) {
		return nil
	}
	slices.Sort(offered)
	return charge(PartyNobody, &ProfileError{Profile: profile, Offered: offered})
}

// newOrderRequest is what the new-order request asks the CA for: the
// identifiers, the policy's profile (checked by checkOrderProfile), notAfter
// from the certificate lifetime, counted from now, and the ARI identifier
// of the certificate it replaces, if any (see replaces).
func (w *workflow) newOrderRequest(replaces string) acme.Order {
	order := acme.Order{Identifiers: w.ids, Profile: w.opts.Profile, Replaces: replaces}
	if lifetime := w.opts.CertificateLifetime; lifetime > 0 {
		notAfter := time.Now().Add(lifetime).Truncate(time.Second).UTC()
		order.NotAfter = &notAfter
	}
	return order
}

// recordOrderTerms notes on the Order what the CA says it will issue: the
// profile (which a CA may choose when none was asked for) and notAfter.
func recordOrderTerms(o *Order, created acme.Order) {
	o.Profile = created.Profile
	if created.NotAfter != nil && !created.NotAfter.IsZero() {
		notAfter := created.NotAfter.UTC()
		o.NotAfter = &notAfter
	}
}

// orderTermsChanged says why a stored order no longer fits the policy, or
// "" when it still does: an order made for another profile than the one now
// configured is replaced rather than resumed.
func (w *workflow) orderTermsChanged(o *Order) string {
	if want := w.opts.Profile; want != "" && o.Profile != want {
		if o.Profile == "" {
			return fmt.Sprintf("it was made without a profile and the policy now asks for %q", want)
		}
		return fmt.Sprintf("it was made for profile %q and the policy now asks for %q", o.Profile, want)
	}
	return ""
}

// decisionContext bounds how long the CA may take to decide (to validate an
// accepted challenge, or to issue a finalized order) by the policy's
// acme_timeout, the stock acme issuer's polling timeout. Without one, only
// the challenge timeout and the request's own deadline apply.
func (o *Options) decisionContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if o.PollTimeout <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeoutCause(ctx, o.PollTimeout, decisionTimeout(o.PollTimeout))
}

// decisionTimeout is the cause of a decisionContext that ran out.
type decisionTimeout time.Duration

func (d decisionTimeout) Error() string {
	return fmt.Sprintf("the CA did not decide within acme_timeout %s", time.Duration(d))
}

func (d decisionTimeout) Unwrap() error { return context.DeadlineExceeded }

// decisionError says so when err happened because acme_timeout ran out
// (a request cut short reports only "context deadline exceeded").
func decisionError(ctx context.Context, err error) error {
	var bound decisionTimeout
	if err != nil && errors.As(context.Cause(ctx), &bound) {
		return fmt.Errorf("%w: %w", bound, err)
	}
	return err
}
