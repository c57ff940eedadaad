package certflow

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"github.com/certflow/certflow/solvers"
	"github.com/mholt/acmez/v3/acme"
)

// The challenge types an issuer instance enables and the solvers it gives
// each request: HTTP-01 and TLS-ALPN-01 answered by Caddy from storage,
// DNS-01 through the configured caddy-dns provider.

func (iss *Issuer) selfCheck() SelfCheckConfig {
	if iss.SelfCheck == nil {
		return SelfCheckConfig{}
	}
	return *iss.SelfCheck
}

// challengeTypes lists the enabled challenge types in preference order. As
// in the stock acme issuer, a DNS provider makes dns-01 the only type,
// unless http-01 or tls-alpn-01 is explicitly enabled.
func (iss *Issuer) challengeTypes() []string {
	var types []string
	c := iss.Challenges
	if c == nil {
		c = new(ChallengesConfig)
	}
	dns := iss.dnsEnabled()
	if c.HTTP.use(dns) {
		types = append(types, acme.ChallengeTypeHTTP01)
	}
	if c.TLSALPN.use(dns) {
		types = append(types, acme.ChallengeTypeTLSALPN01)
	}
	if dns {
		types = append(types, acme.ChallengeTypeDNS01)
	}
	return types
}

// use reports whether a challenge type with this config (nil: none) is
// enabled, given whether a DNS provider is configured.
func (c *ChallengeTypeConfig) use(dnsProvider bool) bool {
	switch {
	case c != nil && c.Disabled:
		return false
	case dnsProvider:
		return c != nil && c.Enabled
	default:
		return true
	}
}

// provisionDNS expands placeholders in the DNS override domain and loads
// the DNS provider module, as the stock acme issuer does. Caddy's global
// dns option does not reach a third-party issuer, so the provider must be
// configured here.
func (iss *Issuer) provisionDNS(ctx caddy.Context, repl *caddy.Replacer) error {
	if iss.Challenges == nil || iss.Challenges.DNS == nil {
		return nil
	}
	dnsCfg := iss.Challenges.DNS
	if dnsCfg.OverrideDomain != "" {
		v, err := repl.ReplaceOrErr(dnsCfg.OverrideDomain, true, true)
		if err != nil {
			return fmt.Errorf("expanding DNS override domain %q: %w", dnsCfg.OverrideDomain, err)
		}
		dnsCfg.OverrideDomain = v
	}
	if dnsCfg.ProviderRaw == nil {
		return errors.New("DNS challenge settings are given but no DNS provider: add 'dns <provider>' " +
			"(the provider of Caddy's global dns option, which acme_dns without a provider and tls { dns } " +
			"without one refer to, does not reach certflow)")
	}
	val, err := ctx.LoadModule(dnsCfg, "ProviderRaw")
	if err != nil {
		return fmt.Errorf("loading DNS provider module: %w", err)
	}
	prov, ok := val.(certmagic.DNSProvider)
	if !ok {
		return fmt.Errorf("DNS provider module %T cannot add and delete records "+
			"(it must be a libdns RecordAppender and RecordDeleter)", val)
	}
	iss.dnsProvider = prov
	return nil
}

// validateDNS checks the DNS challenge settings.
func (iss *Issuer) validateDNS() error {
	if iss.Challenges == nil || iss.Challenges.DNS == nil {
		return nil
	}
	d := iss.Challenges.DNS
	switch {
	case d.TTL < 0:
		return fmt.Errorf("dns ttl must not be negative, got %s", time.Duration(d.TTL))
	case d.PropagationDelay < 0:
		return fmt.Errorf("propagation_delay must not be negative, got %s", time.Duration(d.PropagationDelay))
	case d.PropagationTimeout < 0 && d.PropagationTimeout != -1:
		return fmt.Errorf("propagation_timeout must be positive, or -1 to skip the propagation check, got %s",
			time.Duration(d.PropagationTimeout))
	}
	for _, r := range d.Resolvers {
		if err := checkDNSResolver(r); err != nil {
			return fmt.Errorf("dns resolver %q: %w", r, err)
		}
	}
	if d.OverrideDomain != "" && (strings.ContainsAny(d.OverrideDomain, " */:@") || strings.Trim(d.OverrideDomain, ".") == "") {
		return fmt.Errorf("dns challenge override domain %q is not a domain name", d.OverrideDomain)
	}
	return nil
}

// checkDNSResolver accepts host or host:port, as the stock acme issuer's
// resolvers (port 53 when none is given).
func checkDNSResolver(r string) error {
	host, port, err := net.SplitHostPort(r)
	if err != nil {
		host, port = strings.Trim(r, "[]"), "53"
	}
	if host == "" || strings.ContainsAny(host, " /") {
		return errors.New("not a host or host:port")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("invalid port %q", port)
	}
	return nil
}

// dnsEnabled reports whether dns-01 is configured: a provider is (or, before
// Provision, will be) loaded.
func (iss *Issuer) dnsEnabled() bool {
	if iss.dnsProvider != nil {
		return true
	}
	return iss.Challenges != nil && iss.Challenges.DNS != nil && iss.Challenges.DNS.ProviderRaw != nil
}

// dns01Config is the DNS-01 solver's configuration. The self_check
// interval and attempt timeout, when set, also pace the propagation check.
func (iss *Issuer) dns01Config() solvers.DNS01Config {
	d := iss.Challenges.DNS
	return solvers.DNS01Config{
		Provider:           iss.dnsProvider,
		TTL:                time.Duration(d.TTL),
		PropagationDelay:   time.Duration(d.PropagationDelay),
		PropagationTimeout: time.Duration(d.PropagationTimeout),
		Resolvers:          d.Resolvers,
		OverrideDomain:     d.OverrideDomain,
		Serialize:          d.Serialize,
		Interval:           time.Duration(iss.selfCheck().Interval),
		AttemptTimeout:     time.Duration(iss.selfCheck().AttemptTimeout),
		Logger:             iss.logger.Named("dns01"),
	}
}

func (iss *Issuer) buildSolvers(storage certmagic.Storage) map[string]solvers.Solver {
	cfg := iss.solverCfg
	cfg.Storage = storage
	m := map[string]solvers.Solver{
		acme.ChallengeTypeHTTP01:    solvers.NewHTTP01(cfg),
		acme.ChallengeTypeTLSALPN01: solvers.NewTLSALPN01(cfg),
	}
	if iss.dnsProvider != nil {
		m[acme.ChallengeTypeDNS01] = solvers.NewDNS01(iss.dns01Config())
	}
	return m
}
