package certflow

import (
	"net"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"github.com/mholt/acmez/v3/acme"
)

// UnmarshalCaddyfile deserializes Caddyfile tokens into iss.
//
//	... certflow [<directory_url>] {
//	    dir <directory_url>
//	    email <address>
//	    profile <name>
//	    lifetime <duration>
//	    preferred_chains [smallest] {
//	        root_common_name <common_names...>
//	        any_common_name  <common_names...>
//	    }
//	    eab <key_id> <mac_key>
//	    account_key <pem>
//	    account_key_file <pem_file>
//	    trusted_roots <pem_files...>
//	    timeout <duration>
//	    request_timeout <duration>
//	    disable_http_challenge
//	    disable_tlsalpn_challenge
//	    enable_http_challenge
//	    enable_tlsalpn_challenge
//	    alt_http_port <port>
//	    alt_tlsalpn_port <port>
//	    distributed false
//	    max_concurrent_challenges <n>
//	    max_queued_challenges <n>
//	    challenge_timeout <duration>
//	    failure_backoff <initial> [<max>]
//	    order_rate_limit <orders> <window> | off
//	    retention <max_count> [<max_age>]
//	    self_check off
//	    self_check {
//	        resolvers <host:port...>
//	        port <http-01 port>
//	        tlsalpn_port <port>
//	        interval <duration>
//	        attempt_timeout <duration>
//	        timeout <duration>
//	    }
//	    dns <provider> [<provider args...>] [{
//	        <provider options>
//	    }]
//	    propagation_timeout <duration|-1>
//	    propagation_delay <duration>
//	    resolvers <host[:port]...>
//	    dns_ttl <duration>
//	    dns_challenge_override_domain <domain>
//	    dns_serialize
//	}
//
// The directory URL may be given as the argument or with dir, not both.
// The options the stock acme issuer has too keep its names and meanings:
// profile, lifetime (certificate_lifetime in JSON), preferred_chains (the
// stock grammar), timeout (acme_timeout: how long the CA may take to
// validate or issue), alt_http_port, alt_tlsalpn_port and distributed false
// (accepted, not needed: certflow starts no listener and always answers
// through storage). account_key takes the account's PEM key itself, as the
// stock JSON does (e.g. {env.ACME_ACCOUNT_KEY}); account_key_file reads it
// from a file. test_dir is refused: certflow has no test-CA fallback.
// request_timeout is the timeout of each request to the CA. As in the stock
// issuer, dns makes dns-01 the only challenge type; enable_http_challenge
// and enable_tlsalpn_challenge keep http-01 or tls-alpn-01 beside it.
// Durations and counts must be positive. order_rate_limit holds new orders
// to <orders> per <window> for the account in this process (default: the
// limit a well-known public CA publishes; off turns it off). trusted_roots and self_check may be
// repeated: files and resolvers accumulate, later self_check settings win.
//
// The DNS options mirror the stock acme issuer's and fill challenges.dns in
// JSON. dns loads any dns.providers.<provider> module (a caddy-dns plugin)
// and enables the dns-01 challenge; Caddy's global dns option does not reach
// certflow, so the provider must be named here. propagation_timeout -1 skips
// the propagation check; propagation_delay may be 0; resolvers (port 53 by
// default) are where the propagation check asks instead of the zone's
// authoritative nameservers, and accumulate like trusted_roots. The
// propagation check runs every second, or every self_check interval when
// that is set, each attempt bounded by self_check attempt_timeout.
// dns_serialize runs challenges that write the same TXT record (a wildcard
// and its apex) one at a time. The other DNS options need dns.
func (iss *Issuer) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume issuer name

	if d.NextArg() {
		iss.CA = d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
	}

	for d.NextBlock(0) {
		opt := d.Val()
		switch opt {
		case "dir":
			if iss.CA != "" {
				return d.Errf("directory is already specified: %s", iss.CA)
			}
			if !d.AllArgs(&iss.CA) {
				return d.ArgErr()
			}

		case "email":
			if !d.AllArgs(&iss.Email) {
				return d.ArgErr()
			}

		case "eab":
			eab := new(acme.EAB)
			if !d.AllArgs(&eab.KeyID, &eab.MACKey) {
				return d.ArgErr()
			}
			iss.ExternalAccount = eab

		case "account_key":
			if !d.AllArgs(&iss.AccountKey) {
				return d.ArgErr()
			}
			if !strings.Contains(iss.AccountKey, "-----BEGIN") && !strings.Contains(iss.AccountKey, "{") {
				return d.Errf("account_key takes the account's PEM-encoded private key itself, as the stock acme "+
					"issuer's account_key (e.g. {env.ACME_ACCOUNT_KEY}); to read it from a file, write "+
					"account_key_file %s", iss.AccountKey)
			}

		case "account_key_file":
			if !d.AllArgs(&iss.AccountKeyFile) {
				return d.ArgErr()
			}

		case "test_dir":
			return d.Err("test_dir is not supported: certflow does not retry against a test CA before the CA " +
				"itself; a failing name waits out its failure backoff instead. Remove test_dir")

		case "profile":
			if !d.AllArgs(&iss.Profile) {
				return d.ArgErr()
			}

		case "lifetime":
			var s string
			if !d.AllArgs(&s) {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(s)
			if err != nil {
				return d.Errf("invalid lifetime duration '%s': %v", s, err)
			}
			if dur < 0 {
				return d.Errf("invalid lifetime duration '%s': must not be negative", s)
			}
			iss.CertificateLifetime = caddy.Duration(dur)

		case "preferred_chains":
			pref, err := caddytls.ParseCaddyfilePreferredChainsOptions(d)
			if err != nil {
				return err
			}
			iss.PreferredChains = pref

		case "request_timeout":
			dur, err := durationArg(d, opt)
			if err != nil {
				return err
			}
			iss.RequestTimeout = dur

		case "enable_http_challenge":
			if d.NextArg() {
				return d.ArgErr()
			}
			iss.typeConfig(&iss.challenges().HTTP).Enabled = true

		case "enable_tlsalpn_challenge":
			if d.NextArg() {
				return d.ArgErr()
			}
			iss.typeConfig(&iss.challenges().TLSALPN).Enabled = true

		case "alt_http_port":
			port, err := portArg(d, opt)
			if err != nil {
				return err
			}
			iss.typeConfig(&iss.challenges().HTTP).AlternatePort = port

		case "alt_tlsalpn_port":
			port, err := portArg(d, opt)
			if err != nil {
				return err
			}
			iss.typeConfig(&iss.challenges().TLSALPN).AlternatePort = port

		case "distributed":
			var v string
			if !d.AllArgs(&v) {
				return d.ArgErr()
			}
			if v != "false" {
				return d.Errf("distributed takes only 'false' (answers are always distributed through storage), not '%s'", v)
			}
			distributed := false
			iss.challenges().Distributed = &distributed

		case "trusted_roots":
			files := d.RemainingArgs()
			if len(files) == 0 {
				return d.ArgErr()
			}
			iss.TrustedRootsPEMFiles = append(iss.TrustedRootsPEMFiles, files...)

		case "timeout":
			dur, err := durationArg(d, opt)
			if err != nil {
				return err
			}
			iss.ACMETimeout = dur

		case "disable_http_challenge":
			if d.NextArg() {
				return d.ArgErr()
			}
			iss.typeConfig(&iss.challenges().HTTP).Disabled = true

		case "disable_tlsalpn_challenge":
			if d.NextArg() {
				return d.ArgErr()
			}
			iss.typeConfig(&iss.challenges().TLSALPN).Disabled = true

		case "max_concurrent_challenges":
			n, err := countArg(d, opt)
			if err != nil {
				return err
			}
			iss.MaxConcurrentChallenges = n

		case "max_queued_challenges":
			n, err := countArg(d, opt)
			if err != nil {
				return err
			}
			iss.MaxQueuedChallenges = n

		case "challenge_timeout":
			dur, err := durationArg(d, opt)
			if err != nil {
				return err
			}
			iss.ChallengeTimeout = dur

		case "failure_backoff":
			backoff, err := parseFailureBackoff(d)
			if err != nil {
				return err
			}
			iss.FailureBackoff = backoff

		case "order_rate_limit":
			limit, err := parseOrderRateLimit(d)
			if err != nil {
				return err
			}
			iss.OrderRateLimit = limit

		case "retention":
			retention, err := parseRetention(d)
			if err != nil {
				return err
			}
			iss.Retention = retention

		case "self_check":
			if err := iss.unmarshalSelfCheck(d); err != nil {
				return err
			}

		case "dns", "propagation_timeout", "propagation_delay", "resolvers",
			"dns_ttl", "dns_challenge_override_domain", "dns_serialize":
			if err := iss.unmarshalDNSOption(d); err != nil {
				return err
			}

		default:
			return d.Errf("unrecognized certflow option '%s'", d.Val())
		}
	}

	if c := iss.Challenges; c != nil && c.DNS != nil && c.DNS.ProviderRaw == nil {
		return d.Err("the DNS challenge options need a DNS provider: add 'dns <provider>' " +
			"(the provider of Caddy's global dns option does not reach certflow)")
	}
	for _, t := range []*ChallengeTypeConfig{iss.challengesOrNil().HTTP, iss.challengesOrNil().TLSALPN} {
		if t != nil && t.Disabled && t.Enabled {
			return d.Err("a challenge type is both disabled and enabled: keep one of disable_… and enable_…")
		}
	}
	return nil
}

// challengesOrNil returns iss.Challenges or an empty config, never nil.
func (iss *Issuer) challengesOrNil() *ChallengesConfig {
	if iss.Challenges == nil {
		return new(ChallengesConfig)
	}
	return iss.Challenges
}

// typeConfig returns *field, allocating it first if needed.
func (iss *Issuer) typeConfig(field **ChallengeTypeConfig) *ChallengeTypeConfig {
	if *field == nil {
		*field = new(ChallengeTypeConfig)
	}
	return *field
}

// challenges returns iss.Challenges, allocating it first if needed.
func (iss *Issuer) challenges() *ChallengesConfig {
	if iss.Challenges == nil {
		iss.Challenges = new(ChallengesConfig)
	}
	return iss.Challenges
}

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

// parseFailureBackoff parses the arguments of
//
//	failure_backoff <initial> [<max>]
func parseFailureBackoff(d *caddyfile.Dispenser) (*BackoffConfig, error) {
	args := d.RemainingArgs()
	if len(args) < 1 || len(args) > 2 {
		return nil, d.ArgErr()
	}
	initial, err := parseDuration(d, "failure_backoff initial", args[0])
	if err != nil {
		return nil, err
	}
	backoff := &BackoffConfig{Initial: initial}
	if len(args) == 2 {
		if backoff.Max, err = parseDuration(d, "failure_backoff max", args[1]); err != nil {
			return nil, err
		}
		if backoff.Max < backoff.Initial {
			return nil, d.Errf("failure_backoff max %s is shorter than its initial wait %s",
				args[1], args[0])
		}
	}
	return backoff, nil
}

// parseOrderRateLimit parses the arguments of
//
//	order_rate_limit <orders> <window> | off
func parseOrderRateLimit(d *caddyfile.Dispenser) (*OrderRateLimitConfig, error) {
	args := d.RemainingArgs()
	if len(args) == 1 && args[0] == "off" {
		return &OrderRateLimitConfig{Disabled: true}, nil
	}
	if len(args) != 2 {
		return nil, d.ArgErr()
	}
	orders, err := parseCount(d, "order_rate_limit orders", args[0])
	if err != nil {
		return nil, err
	}
	window, err := parseDuration(d, "order_rate_limit window", args[1])
	if err != nil {
		return nil, err
	}
	return &OrderRateLimitConfig{Orders: orders, Window: window}, nil
}

// parseRetention parses the arguments of
//
//	retention <max_count> [<max_age>]
func parseRetention(d *caddyfile.Dispenser) (*RetentionConfig, error) {
	args := d.RemainingArgs()
	if len(args) < 1 || len(args) > 2 {
		return nil, d.ArgErr()
	}
	count, err := parseCount(d, "retention max_count", args[0])
	if err != nil {
		return nil, err
	}
	retention := &RetentionConfig{MaxCount: count}
	if len(args) == 2 {
		if retention.MaxAge, err = parseDuration(d, "retention max_age", args[1]); err != nil {
			return nil, err
		}
	}
	return retention, nil
}

// unmarshalSelfCheck parses either
//
//	self_check off
//
// or
//
//	self_check {
//	    resolvers <host:port...>
//	    port <http-01 port>
//	    tlsalpn_port <port>
//	    interval <duration>
//	    attempt_timeout <duration>
//	    timeout <duration>
//	}
//
// with the dispenser on the self_check token.
func (iss *Issuer) unmarshalSelfCheck(d *caddyfile.Dispenser) error {
	var sc SelfCheckConfig
	if iss.SelfCheck != nil {
		sc = *iss.SelfCheck
	}

	if d.NextArg() {
		if d.Val() != "off" {
			return d.Errf("self_check takes either 'off' or a block, not '%s'", d.Val())
		}
		if d.NextArg() {
			return d.ArgErr()
		}
		if d.NextBlock(d.Nesting()) {
			d.Prev() // report the line of the opening brace
			return d.Err("self_check off takes no block")
		}
		sc.Disabled = true
	} else {
		nesting := d.Nesting()
		if !d.NextBlock(nesting) {
			if d.Val() == "}" {
				return nil // an empty block changes nothing
			}
			return d.Err("self_check takes either 'off' or a block")
		}
		for ok := true; ok; ok = d.NextBlock(nesting) {
			if err := sc.unmarshalOption(d); err != nil {
				return err
			}
		}
	}

	if sc.Disabled && (len(sc.Resolvers) > 0 || sc.HTTPPort != 0 || sc.TLSALPNPort != 0 ||
		sc.Interval != 0 || sc.AttemptTimeout != 0 || sc.Timeout != 0) {
		return d.Err("self_check is off, so the self_check options would be ignored: remove one or the other")
	}
	iss.SelfCheck = &sc
	return nil
}

// unmarshalOption parses one subdirective of the self_check block, with the
// dispenser on its name.
func (sc *SelfCheckConfig) unmarshalOption(d *caddyfile.Dispenser) error {
	opt := d.Val()
	var err error
	switch opt {
	case "resolvers":
		resolvers := d.RemainingArgs()
		if len(resolvers) == 0 {
			return d.ArgErr()
		}
		for _, r := range resolvers {
			if _, _, splitErr := net.SplitHostPort(r); splitErr != nil {
				return d.Errf("self_check resolver '%s' must be host:port: %v", r, splitErr)
			}
		}
		sc.Resolvers = append(sc.Resolvers, resolvers...)
	case "port":
		sc.HTTPPort, err = portArg(d, "self_check port")
	case "tlsalpn_port":
		sc.TLSALPNPort, err = portArg(d, "self_check tlsalpn_port")
	case "interval":
		sc.Interval, err = durationArg(d, "self_check interval")
	case "attempt_timeout":
		sc.AttemptTimeout, err = durationArg(d, "self_check attempt_timeout")
	case "timeout":
		sc.Timeout, err = durationArg(d, "self_check timeout")
	default:
		return d.Errf("unrecognized certflow self_check option '%s'", d.Val())
	}
	return err
}

// durationArg reads the single argument of option as a positive duration.
func durationArg(d *caddyfile.Dispenser, option string) (caddy.Duration, error) {
	var s string
	if !d.AllArgs(&s) {
		return 0, d.ArgErr()
	}
	return parseDuration(d, option, s)
}

// countArg reads the single argument of option as a positive integer.
func countArg(d *caddyfile.Dispenser, option string) (int, error) {
	var s string
	if !d.AllArgs(&s) {
		return 0, d.ArgErr()
	}
	return parseCount(d, option, s)
}

// portArg reads the single argument of option as a port number.
func portArg(d *caddyfile.Dispenser, option string) (int, error) {
	var s string
	if !d.AllArgs(&s) {
		return 0, d.ArgErr()
	}
	port, err := strconv.Atoi(s)
	if err != nil {
		return 0, d.Errf("invalid %s '%s': not an integer", option, s)
	}
	if port < 1 || port > 65535 {
		return 0, d.Errf("invalid %s %d: must be between 1 and 65535", option, port)
	}
	return port, nil
}

func parseDuration(d *caddyfile.Dispenser, option, s string) (caddy.Duration, error) {
	dur, err := caddy.ParseDuration(s)
	if err != nil {
		return 0, d.Errf("invalid %s duration '%s': %v", option, s, err)
	}
	if dur <= 0 {
		return 0, d.Errf("invalid %s duration '%s': must be positive", option, s)
	}
	return caddy.Duration(dur), nil
}

func parseCount(d *caddyfile.Dispenser, option, s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, d.Errf("invalid %s '%s': not an integer", option, s)
	}
	if n <= 0 {
		return 0, d.Errf("invalid %s %d: must be positive", option, n)
	}
	return n, nil
}
