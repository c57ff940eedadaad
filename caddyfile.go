package certflow

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
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
//	        advisory
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
		parse, ok := issuerOptions[d.Val()]
		if !ok {
			return d.Errf("unrecognized certflow option '%s'", d.Val())
		}
		if err := parse(iss, d); err != nil {
			return err
		}
	}
	return iss.checkCaddyfileOptions(d)
}

// issuerOptions parses each subdirective of the certflow block, with the
// dispenser on its name: the CA and account (caddyfile_account.go), the
// challenge types and the self-check (caddyfile_challenges.go), the
// limits (caddyfile_limits.go) and DNS-01 (caddyfile_dns.go).
var issuerOptions = map[string]func(iss *Issuer, d *caddyfile.Dispenser) error{
	"dir":              (*Issuer).parseDir,
	"email":            (*Issuer).parseEmail,
	"eab":              (*Issuer).parseEAB,
	"account_key":      (*Issuer).parseAccountKey,
	"account_key_file": (*Issuer).parseAccountKeyFile,
	"test_dir":         (*Issuer).parseTestDir,
	"profile":          (*Issuer).parseProfile,
	"lifetime":         (*Issuer).parseLifetime,
	"preferred_chains": (*Issuer).parsePreferredChains,
	"trusted_roots":    (*Issuer).parseTrustedRoots,
	"timeout":          (*Issuer).parseTimeout,
	"request_timeout":  (*Issuer).parseRequestTimeout,

	"enable_http_challenge":     (*Issuer).parseEnableHTTP,
	"enable_tlsalpn_challenge":  (*Issuer).parseEnableTLSALPN,
	"disable_http_challenge":    (*Issuer).parseDisableHTTP,
	"disable_tlsalpn_challenge": (*Issuer).parseDisableTLSALPN,
	"alt_http_port":             (*Issuer).parseAltHTTPPort,
	"alt_tlsalpn_port":          (*Issuer).parseAltTLSALPNPort,
	"distributed":               (*Issuer).parseDistributed,
	"self_check":                (*Issuer).unmarshalSelfCheck,

	"max_concurrent_challenges": (*Issuer).parseMaxConcurrent,
	"max_queued_challenges":     (*Issuer).parseMaxQueued,
	"challenge_timeout":         (*Issuer).parseChallengeTimeout,
	"failure_backoff":           (*Issuer).parseFailureBackoff,
	"order_rate_limit":          (*Issuer).parseOrderRateLimit,
	"retention":                 (*Issuer).parseRetention,

	"dns":                           (*Issuer).unmarshalDNSOption,
	"propagation_timeout":           (*Issuer).unmarshalDNSOption,
	"propagation_delay":             (*Issuer).unmarshalDNSOption,
	"resolvers":                     (*Issuer).unmarshalDNSOption,
	"dns_ttl":                       (*Issuer).unmarshalDNSOption,
	"dns_challenge_override_domain": (*Issuer).unmarshalDNSOption,
	"dns_serialize":                 (*Issuer).unmarshalDNSOption,
}

// checkCaddyfileOptions refuses combinations of subdirectives that
// contradict each other.
func (iss *Issuer) checkCaddyfileOptions(d *caddyfile.Dispenser) error {
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

// noArgs checks that a flag subdirective has no argument.
func noArgs(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	return nil
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
