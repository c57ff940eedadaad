package certflow

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// The Caddyfile subdirectives of DNS-01 (see UnmarshalCaddyfile for the
// grammar).

// dnsChallenge returns iss.Challenges.DNS, allocating it first if needed.
func (iss *Issuer) dnsChallenge() *DNSChallengeConfig {
	c := iss.challenges()
	if c.DNS == nil {
		c.DNS = new(DNSChallengeConfig)
	}
	return c.DNS
}

// unmarshalDNSOption parses one of the DNS challenge options, with the
// dispenser on its name:
//
//	dns <provider> [<provider args...>] [{ <provider options> }]
//	propagation_timeout <duration|-1>
//	propagation_delay <duration>
//	resolvers <host[:port]...>
//	dns_ttl <duration>
//	dns_challenge_override_domain <domain>
//	dns_serialize
func (iss *Issuer) unmarshalDNSOption(d *caddyfile.Dispenser) error {
	opt := d.Val()
	cfg := iss.dnsChallenge()
	switch opt {
	case "dns":
		if !d.NextArg() {
			return d.Err("dns needs a provider name, e.g. 'dns cloudflare {env.CF_API_TOKEN}' " +
				"(Caddy's global dns option does not reach certflow)")
		}
		if cfg.ProviderRaw != nil {
			return d.Err("a DNS provider is already specified")
		}
		name := d.Val()
		unm, err := caddyfile.UnmarshalModule(d, "dns.providers."+name)
		if err != nil {
			return err
		}
		cfg.ProviderRaw = caddyconfig.JSONModuleObject(unm, "name", name, nil)

	case "propagation_timeout":
		var s string
		if !d.AllArgs(&s) {
			return d.ArgErr()
		}
		if s == "-1" {
			cfg.PropagationTimeout = -1
			return nil
		}
		dur, err := caddy.ParseDuration(s)
		if err != nil || dur <= 0 {
			return d.Errf("invalid propagation_timeout '%s': want a positive duration, or -1 to skip the propagation check", s)
		}
		cfg.PropagationTimeout = caddy.Duration(dur)

	case "propagation_delay":
		var s string
		if !d.AllArgs(&s) {
			return d.ArgErr()
		}
		dur, err := caddy.ParseDuration(s)
		if err != nil {
			return d.Errf("invalid propagation_delay duration '%s': %v", s, err)
		}
		if dur < 0 {
			return d.Errf("invalid propagation_delay duration '%s': must not be negative", s)
		}
		cfg.PropagationDelay = caddy.Duration(dur)

	case "resolvers":
		resolvers := d.RemainingArgs()
		if len(resolvers) == 0 {
			return d.ArgErr()
		}
		for _, r := range resolvers {
			if err := checkDNSResolver(r); err != nil {
				return d.Errf("invalid resolver '%s': %v", r, err)
			}
		}
		cfg.Resolvers = append(cfg.Resolvers, resolvers...)

	case "dns_ttl":
		dur, err := durationArg(d, opt)
		if err != nil {
			return err
		}
		cfg.TTL = dur

	case "dns_challenge_override_domain":
		if !d.AllArgs(&cfg.OverrideDomain) {
			return d.ArgErr()
		}

	case "dns_serialize":
		if d.NextArg() {
			return d.ArgErr()
		}
		cfg.Serialize = true
	}
	return nil
}
