package certflow

import (
	"context"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"github.com/caddyserver/certmagic"
)

// certLookup answers, for the permission module, which automation policy
// applies to a name and whether the name has a certificate in that
// policy's storage. It only reads: the certificate key certmagic would
// load, for each of the policy's issuers, for the name and for the
// wildcard certmagic would also try.
type certLookup struct {
	ctx caddy.Context
	tls *caddytls.TLS // nil when the TLS app cannot be found
	// policies that were configured with their own storage module: Caddy
	// keeps that storage unexported, so for those without a certflow
	// issuer (whose storage certflow knows) it is unknown
	ownStorage map[*caddytls.AutomationPolicy]bool
}

// newCertLookup is called while the TLS app provisions its permission
// module: its policies are not provisioned yet, so their storage modules
// are still configured (StorageRaw is emptied once loaded).
func newCertLookup(ctx caddy.Context) certLookup {
	c := certLookup{ctx: ctx, ownStorage: map[*caddytls.AutomationPolicy]bool{}}
	app, err := ctx.App("tls")
	if err != nil {
		return c
	}
	c.tls, _ = app.(*caddytls.TLS)
	if c.tls != nil && c.tls.Automation != nil {
		for _, ap := range c.tls.Automation.Policies {
			if ap != nil && ap.StorageRaw != nil {
				c.ownStorage[ap] = true
			}
		}
	}
	return c
}

// policyFor returns the automation policy Caddy uses for name, as
// caddytls's getAutomationPolicyForName chooses it; nil when none of the
// configured policies applies (Caddy's default policy, which is not on
// demand).
func (c certLookup) policyFor(name string) *caddytls.AutomationPolicy {
	if c.tls == nil || c.tls.Automation == nil {
		return nil
	}
	for _, ap := range c.tls.Automation.Policies {
		if ap == nil {
			continue
		}
		subjects := ap.Subjects()
		if len(subjects) == 0 {
			return ap
		}
		for _, s := range subjects {
			if certmagic.MatchWildcard(name, s) {
				return ap
			}
		}
	}
	return nil
}

// onlyCertflow reports whether every issuer of the policy for name is a
// certflow issuer; only then is certflow's refusal the policy's: another
// issuer in the policy (a fallback) may obtain what certflow holds back.
func (c certLookup) onlyCertflow(name string) bool {
	ap := c.policyFor(name)
	if ap == nil || len(ap.Issuers) == 0 {
		return false
	}
	for _, iss := range ap.Issuers {
		if _, ok := iss.(*Issuer); !ok {
			return false
		}
	}
	return true
}

// certificateStored reports whether name has a certificate in storage
// that Caddy would load for it. When that cannot be known (no policy, a
// policy storage that is not visible), it answers true: the caller then
// refuses nothing, since a refusal would cost a stored certificate its
// handshake. A storage that cannot be read also answers true.
func (c certLookup) certificateStored(ctx context.Context, name string) bool {
	ap := c.policyFor(name)
	if ap == nil {
		return true
	}
	storage := c.policyStorage(ap)
	if storage == nil {
		return true
	}
	candidates := []string{name}
	if i := strings.IndexByte(name, '.'); i > 0 && !strings.HasPrefix(name, "*.") {
		candidates = append(candidates, "*"+name[i:])
	}
	for _, iss := range ap.Issuers {
		key, ok := issuerKeyOf(iss)
		if !ok {
			return true
		}
		for _, n := range candidates {
			if storage.Exists(ctx, certmagic.StorageKeys.SiteCert(key, n)) {
				return true
			}
		}
	}
	return ctx.Err() != nil // an abandoned lookup proves nothing
}

// policyStorage returns the storage of the policy: that of its certflow
// issuer when it has one, Caddy's global storage when the policy was not
// configured with its own, else nil (unknown).
func (c certLookup) policyStorage(ap *caddytls.AutomationPolicy) certmagic.Storage {
	for _, iss := range ap.Issuers {
		if cf, ok := iss.(*Issuer); ok && cf.options != nil {
			if opts := cf.options.Load(); opts != nil && opts.Storage != nil {
				return opts.Storage
			}
		}
	}
	if c.ownStorage[ap] || c.ctx.Context == nil {
		return nil
	}
	return c.ctx.Storage()
}

// issuerKeyOf returns iss's key, guarding against a third-party issuer that
// cannot give it yet.
func issuerKeyOf(iss certmagic.Issuer) (key string, ok bool) {
	defer func() {
		if recover() != nil {
			key, ok = "", false
		}
	}()
	if iss == nil {
		return "", false
	}
	return iss.IssuerKey(), true
}
