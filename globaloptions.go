package certflow

import (
	"encoding/json"
	"runtime"
	"slices"

	"github.com/caddyserver/caddy/v2/modules/caddytls"
)

// Caddy's global Caddyfile options for ACME issuers (email, acme_ca,
// acme_ca_root, acme_eab, acme_dns, cert_lifetime, preferred_chains, and
// http_port, https_port, default_bind, tls_resolvers) are applied while a
// Caddyfile is adapted, by httpcaddyfile's fillInGlobalACMEDefaults, to
// every issuer whose GetACMEIssuer returns an ACME issuer, filling only what
// the issuer leaves unset. That same method is how the Caddyfile's tls
// shortcuts (tls <email>, tls { dns … }) copy a global cert_issuer into
// stock acme issuers for their site. So certflow answers that one caller,
// and only it, with a private stock-issuer view of its own settings, and
// folds what Caddy filled in back into its JSON (MarshalJSON): the global
// options reach certflow where its block does not set them, and every other
// caller sees nil, as before Provision, so no stock issuer of any site is
// changed (TestGlobalOptionsLeaveStockIssuersAlone compares the adapted
// configs with and without this).

// globalDefaultsFunc is the function, in caddy v2.11.9, that fills the
// global options into ACME issuers. If Caddy renames it, the global options
// stop reaching certflow (as before) and the golden tests of
// caddyfile/testdata/global_*.caddyfiletest fail.
const globalDefaultsFunc = "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile.fillInGlobalACMEDefaults"

// globalOptionsHook can be turned off by tests, to compare.
var globalOptionsHook = true

// GetACMEIssuer returns the private shadow issuer through which Caddy's HTTP
// servers find our HTTP-01 tokens in storage; before Provision, that is
// while a Caddyfile is adapted, it is nil except for the caller that fills
// in Caddy's global ACME options (see above).
func (iss *Issuer) GetACMEIssuer() *caddytls.ACMEIssuer {
	if iss.shadow != nil {
		return iss.shadow
	}
	if !globalOptionsHook || !calledBy(globalDefaultsFunc) {
		return nil
	}
	if iss.globals == nil {
		iss.globals = iss.stockView()
	}
	return iss.globals
}

// calledBy reports whether the caller of the function calling calledBy is
// fn.
func calledBy(fn string) bool {
	var pcs [1]uintptr
	// skip runtime.Callers, calledBy and GetACMEIssuer
	if runtime.Callers(3, pcs[:]) == 0 {
		return false
	}
	frame, _ := runtime.CallersFrames(pcs[:]).Next()
	return frame.Function == fn
}

// stockView is a stock acme issuer holding what certflow sets of the
// options the global ones fill in, so Caddy fills only what certflow leaves
// unset.
func (iss *Issuer) stockView() *caddytls.ACMEIssuer {
	v := &caddytls.ACMEIssuer{
		CA:                   iss.CA,
		Email:                iss.Email,
		TrustedRootsPEMFiles: slices.Clone(iss.TrustedRootsPEMFiles),
		ExternalAccount:      iss.ExternalAccount,
		PreferredChains:      iss.PreferredChains,
		CertificateLifetime:  iss.CertificateLifetime,
	}
	if c := iss.Challenges; c != nil {
		v.Challenges = &caddytls.ChallengesConfig{BindHost: c.BindHost, Distributed: c.Distributed}
		if c.HTTP != nil {
			v.Challenges.HTTP = &caddytls.HTTPChallengeConfig{Disabled: c.HTTP.Disabled, AlternatePort: c.HTTP.AlternatePort}
		}
		if c.TLSALPN != nil {
			v.Challenges.TLSALPN = &caddytls.TLSALPNChallengeConfig{Disabled: c.TLSALPN.Disabled, AlternatePort: c.TLSALPN.AlternatePort}
		}
		if d := c.DNS; d != nil {
			v.Challenges.DNS = &caddytls.DNSChallengeConfig{ProviderRaw: d.ProviderRaw, Resolvers: slices.Clone(d.Resolvers)}
		}
	}
	return v
}

// MarshalJSON encodes the issuer, with the global options Caddy filled in
// while adapting a Caddyfile folded into the fields certflow left unset.
func (iss *Issuer) MarshalJSON() ([]byte, error) {
	type plain Issuer // without this method
	out := plain(*iss)
	if g := iss.globals; g != nil {
		folded := Issuer(out)
		folded.foldGlobals(g)
		out = plain(folded)
	}
	return json.Marshal(out)
}

// foldGlobals copies into iss what g (the stock view after Caddy filled in
// the global options) holds and iss does not. Pointers iss shares with the
// original issuer are copied before they are changed.
func (iss *Issuer) foldGlobals(g *caddytls.ACMEIssuer) {
	if iss.CA == "" {
		iss.CA = g.CA
	}
	if iss.Email == "" {
		iss.Email = g.Email
	}
	for _, f := range g.TrustedRootsPEMFiles {
		if !slices.Contains(iss.TrustedRootsPEMFiles, f) {
			iss.TrustedRootsPEMFiles = append(slices.Clip(iss.TrustedRootsPEMFiles), f)
		}
	}
	if iss.ExternalAccount == nil {
		iss.ExternalAccount = g.ExternalAccount
	}
	if iss.PreferredChains == nil {
		iss.PreferredChains = g.PreferredChains
	}
	if iss.CertificateLifetime == 0 {
		iss.CertificateLifetime = g.CertificateLifetime
	}
	gc := g.Challenges
	if gc == nil {
		return
	}
	c := new(ChallengesConfig)
	if iss.Challenges != nil {
		*c = *iss.Challenges
	}
	if c.BindHost == "" {
		c.BindHost = gc.BindHost
	}
	if gc.HTTP != nil && gc.HTTP.AlternatePort != 0 && (c.HTTP == nil || c.HTTP.AlternatePort == 0) {
		c.HTTP = cloneTypeConfig(c.HTTP)
		c.HTTP.AlternatePort = gc.HTTP.AlternatePort
	}
	if gc.TLSALPN != nil && gc.TLSALPN.AlternatePort != 0 && (c.TLSALPN == nil || c.TLSALPN.AlternatePort == 0) {
		c.TLSALPN = cloneTypeConfig(c.TLSALPN)
		c.TLSALPN.AlternatePort = gc.TLSALPN.AlternatePort
	}
	if gd := gc.DNS; gd != nil {
		d := new(DNSChallengeConfig)
		if c.DNS != nil {
			*d = *c.DNS
		}
		if d.ProviderRaw == nil {
			// nil when the global option names the TLS app's dns
			// provider, which certflow cannot use: Provision says so
			d.ProviderRaw = gd.ProviderRaw
		}
		if len(d.Resolvers) == 0 {
			d.Resolvers = gd.Resolvers
		}
		c.DNS = d
	}
	if *c != (ChallengesConfig{}) {
		iss.Challenges = c
	}
}

func cloneTypeConfig(c *ChallengeTypeConfig) *ChallengeTypeConfig {
	out := new(ChallengeTypeConfig)
	if c != nil {
		*out = *c
	}
	return out
}
