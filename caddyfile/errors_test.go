package caddyfile_test

import (
	"fmt"
	"regexp"
	"strings"
	"testing"

	// dns.providers.rfc2136, for the DNS golden files and cases
	_ "github.com/caddy-dns/rfc2136"
)

// siteWith wraps certflow options in a site's tls issuer block; the first
// option is on line 4 of the result.
func siteWith(options ...string) string {
	return "example.com {\n" +
		"\ttls {\n" +
		"\t\tissuer certflow {\n" +
		"\t\t\t" + strings.Join(options, "\n\t\t\t") + "\n" +
		"\t\t}\n" +
		"\t}\n" +
		"}\n"
}

// globalWith wraps certflow options in a global cert_issuer block; the first
// option is on line 3 of the result.
func globalWith(options ...string) string {
	return "{\n" +
		"\tcert_issuer certflow {\n" +
		"\t\t" + strings.Join(options, "\n\t\t") + "\n" +
		"\t}\n" +
		"}\n\n" +
		"example.com {\n" +
		"\trespond ok\n" +
		"}\n"
}

func TestAdaptErrors(t *testing.T) {
	for _, tc := range []struct {
		name      string
		caddyfile string
		wantMsg   string
		wantLine  int
	}{
		{
			name:      "unknown option",
			caddyfile: siteWith("email ops@example.com", "colour blue"),
			wantMsg:   "unrecognized certflow option 'colour'",
			wantLine:  5,
		},
		{
			name:      "unknown option in global cert_issuer",
			caddyfile: globalWith("dns_serialise"),
			wantMsg:   "unrecognized certflow option 'dns_serialise'",
			wantLine:  3,
		},
		{
			name:      "missing argument",
			caddyfile: siteWith("email"),
			wantMsg:   "wrong argument count",
			wantLine:  4,
		},
		{
			name:      "missing duration",
			caddyfile: globalWith("challenge_timeout"),
			wantMsg:   "wrong argument count",
			wantLine:  3,
		},
		{
			name:      "extra argument",
			caddyfile: siteWith("email a@example.com b@example.com"),
			wantMsg:   "wrong argument count",
			wantLine:  4,
		},
		{
			name:      "extra argument to a flag",
			caddyfile: siteWith("disable_http_challenge yes"),
			wantMsg:   "wrong argument count",
			wantLine:  4,
		},
		{
			name:      "extra positional argument",
			caddyfile: "example.com {\n\ttls {\n\t\tissuer certflow https://a.example/dir https://b.example/dir\n\t}\n}\n",
			wantMsg:   "wrong argument count",
			wantLine:  3,
		},
		{
			name:      "too many failure_backoff arguments",
			caddyfile: siteWith("failure_backoff 1m 1h 2h"),
			wantMsg:   "wrong argument count",
			wantLine:  4,
		},
		{
			name:      "order_rate_limit without window",
			caddyfile: siteWith("order_rate_limit 300"),
			wantMsg:   "wrong argument count",
			wantLine:  4,
		},
		{
			name:      "order_rate_limit bad window",
			caddyfile: siteWith("order_rate_limit 300 later"),
			wantMsg:   "invalid order_rate_limit window duration 'later'",
			wantLine:  4,
		},
		{
			name:      "bad duration",
			caddyfile: siteWith("timeout soon"),
			wantMsg:   "invalid timeout duration 'soon'",
			wantLine:  4,
		},
		{
			name:      "zero duration",
			caddyfile: siteWith("challenge_timeout 0s"),
			wantMsg:   "invalid challenge_timeout duration '0s': must be positive",
			wantLine:  4,
		},
		{
			name:      "negative duration",
			caddyfile: siteWith("timeout -5s"),
			wantMsg:   "invalid timeout duration '-5s': must be positive",
			wantLine:  4,
		},
		{
			name:      "bad failure_backoff max",
			caddyfile: siteWith("email ops@example.com", "failure_backoff 1m forever"),
			wantMsg:   "invalid failure_backoff max duration 'forever'",
			wantLine:  5,
		},
		{
			name:      "failure_backoff max below initial",
			caddyfile: siteWith("failure_backoff 1h 1m"),
			wantMsg:   "failure_backoff max 1m is shorter than its initial wait 1h",
			wantLine:  4,
		},
		{
			name:      "bad integer",
			caddyfile: siteWith("max_concurrent_challenges lots"),
			wantMsg:   "invalid max_concurrent_challenges 'lots': not an integer",
			wantLine:  4,
		},
		{
			name:      "negative count",
			caddyfile: globalWith("max_queued_challenges -1"),
			wantMsg:   "invalid max_queued_challenges -1: must be positive",
			wantLine:  3,
		},
		{
			name:      "zero count",
			caddyfile: siteWith("max_concurrent_challenges 0"),
			wantMsg:   "invalid max_concurrent_challenges 0: must be positive",
			wantLine:  4,
		},
		{
			name:      "zero retention count",
			caddyfile: siteWith("retention 0 24h"),
			wantMsg:   "invalid retention max_count 0: must be positive",
			wantLine:  4,
		},
		{
			name:      "bad retention age",
			caddyfile: siteWith("retention 10 a-week"),
			wantMsg:   "invalid retention max_age duration 'a-week'",
			wantLine:  4,
		},
		{
			name:      "dir twice",
			caddyfile: siteWith("dir https://a.example/dir", "dir https://b.example/dir"),
			wantMsg:   "directory is already specified: https://a.example/dir",
			wantLine:  5,
		},
		{
			name:      "dir as argument and subdirective",
			caddyfile: "example.com {\n\ttls {\n\t\tissuer certflow https://a.example/dir {\n\t\t\tdir https://b.example/dir\n\t\t}\n\t}\n}\n",
			wantMsg:   "directory is already specified: https://a.example/dir",
			wantLine:  4,
		},
		{
			name:      "eab with one argument",
			caddyfile: siteWith("eab kid-only"),
			wantMsg:   "wrong argument count",
			wantLine:  4,
		},
		{
			name:      "trusted_roots without files",
			caddyfile: siteWith("trusted_roots"),
			wantMsg:   "wrong argument count",
			wantLine:  4,
		},
		{
			name:      "self_check on",
			caddyfile: siteWith("self_check on"),
			wantMsg:   "self_check takes either 'off' or a block, not 'on'",
			wantLine:  4,
		},
		{
			name:      "self_check without off or block",
			caddyfile: siteWith("self_check", "email ops@example.com"),
			wantMsg:   "self_check takes either 'off' or a block",
			wantLine:  4,
		},
		{
			name:      "self_check off with extra argument",
			caddyfile: siteWith("self_check off now"),
			wantMsg:   "wrong argument count",
			wantLine:  4,
		},
		{
			name:      "self_check off with a block",
			caddyfile: siteWith("self_check off {", "\tport 8080", "}"),
			wantMsg:   "self_check off takes no block",
			wantLine:  4,
		},
		{
			name:      "self_check advisory takes no argument",
			caddyfile: siteWith("self_check {", "\tadvisory yes", "}"),
			wantMsg:   "wrong argument count",
			wantLine:  5,
		},
		{
			name:      "self_check off and advisory",
			caddyfile: siteWith("self_check {", "\tadvisory", "}", "self_check off"),
			wantMsg:   "self_check is off, so the self_check options would be ignored",
			wantLine:  7,
		},
		{
			name:      "self_check off and self_check options",
			caddyfile: siteWith("self_check {", "\tport 8080", "}", "self_check off"),
			wantMsg:   "self_check is off, so the self_check options would be ignored",
			wantLine:  7,
		},
		{
			name:      "unknown option inside self_check",
			caddyfile: siteWith("self_check {", "\tinterval 1s", "\tretries 3", "}"),
			wantMsg:   "unrecognized certflow self_check option 'retries'",
			wantLine:  6,
		},
		{
			name:      "port out of range",
			caddyfile: siteWith("self_check {", "\tport 65536", "}"),
			wantMsg:   "invalid self_check port 65536: must be between 1 and 65535",
			wantLine:  5,
		},
		{
			name:      "zero tlsalpn port",
			caddyfile: globalWith("self_check {", "\ttlsalpn_port 0", "}"),
			wantMsg:   "invalid self_check tlsalpn_port 0: must be between 1 and 65535",
			wantLine:  4,
		},
		{
			name:      "port not an integer",
			caddyfile: siteWith("self_check {", "\tport http", "}"),
			wantMsg:   "invalid self_check port 'http': not an integer",
			wantLine:  5,
		},
		{
			name:      "self_check port without argument",
			caddyfile: siteWith("self_check {", "\tport", "}"),
			wantMsg:   "wrong argument count",
			wantLine:  5,
		},
		{
			name:      "self_check resolver without port",
			caddyfile: siteWith("self_check {", "\tresolvers 1.1.1.1:53 8.8.8.8", "}"),
			wantMsg:   "self_check resolver '8.8.8.8' must be host:port",
			wantLine:  5,
		},
		{
			name:      "self_check resolvers without argument",
			caddyfile: siteWith("self_check {", "\tresolvers", "}"),
			wantMsg:   "wrong argument count",
			wantLine:  5,
		},
		{
			name:      "self_check bad duration",
			caddyfile: siteWith("self_check {", "\tattempt_timeout 5", "}"),
			wantMsg:   "invalid self_check attempt_timeout duration '5'",
			wantLine:  5,
		},
		{
			name:      "dns without provider",
			caddyfile: siteWith("dns"),
			wantMsg:   "dns needs a provider name",
			wantLine:  4,
		},
		{
			name:      "dns provider not registered",
			caddyfile: siteWith("dns nosuchprovider token"),
			wantMsg:   "dns.providers.nosuchprovider",
			wantLine:  4,
		},
		{
			name:      "dns provider option error",
			caddyfile: globalWith("dns rfc2136 {", "\tkey_name certflow", "\tcolour blue", "}"),
			wantMsg:   "unrecognized subdirective 'colour'",
			wantLine:  5,
		},
		{
			name:      "second dns provider",
			caddyfile: siteWith("dns rfc2136 {", "\tkey_name k", "\tkey_alg hmac-sha256", "\tkey c2VjcmV0", "\tserver 127.0.0.1:53", "}", "dns rfc2136 {", "}"),
			wantMsg:   "a DNS provider is already specified",
			wantLine:  10,
		},
		{
			name:      "dns options without provider",
			caddyfile: siteWith("propagation_timeout 2m", "dns_serialize"),
			wantMsg:   "the DNS challenge options need a DNS provider",
			wantLine:  6,
		},
		{
			name:      "propagation_timeout zero",
			caddyfile: siteWith("propagation_timeout 0"),
			wantMsg:   "invalid propagation_timeout '0': want a positive duration, or -1",
			wantLine:  4,
		},
		{
			name:      "propagation_timeout other negative",
			caddyfile: globalWith("propagation_timeout -2"),
			wantMsg:   "invalid propagation_timeout '-2'",
			wantLine:  3,
		},
		{
			name:      "propagation_delay negative",
			caddyfile: siteWith("propagation_delay -1s"),
			wantMsg:   "invalid propagation_delay duration '-1s': must not be negative",
			wantLine:  4,
		},
		{
			name:      "propagation_delay without argument",
			caddyfile: siteWith("propagation_delay"),
			wantMsg:   "wrong argument count",
			wantLine:  4,
		},
		{
			name:      "dns resolver bad port",
			caddyfile: siteWith("resolvers 1.1.1.1:53 8.8.8.8:dns"),
			wantMsg:   "invalid resolver '8.8.8.8:dns'",
			wantLine:  4,
		},
		{
			name:      "dns resolvers without argument",
			caddyfile: globalWith("resolvers"),
			wantMsg:   "wrong argument count",
			wantLine:  3,
		},
		{
			name:      "dns_ttl zero",
			caddyfile: siteWith("dns_ttl 0s"),
			wantMsg:   "invalid dns_ttl duration '0s': must be positive",
			wantLine:  4,
		},
		{
			name:      "override domain two arguments",
			caddyfile: siteWith("dns_challenge_override_domain a.example b.example"),
			wantMsg:   "wrong argument count",
			wantLine:  4,
		},
		{
			name:      "dns_serialize with argument",
			caddyfile: siteWith("dns_serialize on"),
			wantMsg:   "wrong argument count",
			wantLine:  4,
		},
		{
			// before certflow took the stock meaning, account_key named a file
			name:      "account_key given a file name",
			caddyfile: siteWith("email ops@example.com", "account_key /etc/certflow/account.pem"),
			wantMsg:   "to read it from a file, write account_key_file /etc/certflow/account.pem",
			wantLine:  5,
		},
		{
			name:      "test_dir refused",
			caddyfile: globalWith("test_dir https://acme-staging-v02.api.letsencrypt.org/directory"),
			wantMsg:   "test_dir is not supported: certflow does not retry against a test CA",
			wantLine:  3,
		},
		{
			name:      "profile without name",
			caddyfile: siteWith("profile"),
			wantMsg:   "wrong argument count",
			wantLine:  4,
		},
		{
			name:      "lifetime negative",
			caddyfile: siteWith("lifetime -1h"),
			wantMsg:   "invalid lifetime duration '-1h': must not be negative",
			wantLine:  4,
		},
		{
			name:      "lifetime not a duration",
			caddyfile: siteWith("lifetime weekly"),
			wantMsg:   "invalid lifetime duration 'weekly'",
			wantLine:  4,
		},
		{
			name:      "preferred_chains empty",
			caddyfile: siteWith("preferred_chains {", "}"),
			wantMsg:   "No options for preferred_chains received",
			wantLine:  5,
		},
		{
			name:      "preferred_chains smallest with a block",
			caddyfile: siteWith("preferred_chains smallest {", "	root_common_name A", "}"),
			wantMsg:   "No more options are accepted when using the 'smallest' option",
			wantLine:  5,
		},
		{
			name:      "preferred_chains root and any",
			caddyfile: siteWith("preferred_chains {", "	root_common_name A", "	any_common_name B", "}"),
			wantMsg:   "Can't set any_common_name when root_common_name is already set",
			wantLine:  6,
		},
		{
			name:      "preferred_chains other argument",
			caddyfile: siteWith("preferred_chains largest"),
			wantMsg:   "Invalid argument 'largest'",
			wantLine:  4,
		},
		{
			name:      "distributed true",
			caddyfile: siteWith("distributed true"),
			wantMsg:   "distributed takes only 'false'",
			wantLine:  4,
		},
		{
			name:      "alt_http_port out of range",
			caddyfile: siteWith("alt_http_port 70000"),
			wantMsg:   "invalid alt_http_port 70000: must be between 1 and 65535",
			wantLine:  4,
		},
		{
			name:      "alt_tlsalpn_port not a number",
			caddyfile: siteWith("alt_tlsalpn_port https"),
			wantMsg:   "invalid alt_tlsalpn_port 'https': not an integer",
			wantLine:  4,
		},
		{
			name:      "request_timeout zero",
			caddyfile: siteWith("request_timeout 0s"),
			wantMsg:   "invalid request_timeout duration '0s': must be positive",
			wantLine:  4,
		},
		{
			name:      "enabled and disabled",
			caddyfile: siteWith("disable_http_challenge", "enable_http_challenge"),
			wantMsg:   "both disabled and enabled",
			wantLine:  6,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkAdaptError(t, tc.caddyfile, tc.wantMsg, tc.wantLine)
		})
	}
}

// checkAdaptError adapts caddyfile and fails t unless adapting fails with
// an error that contains wantMsg and names line wantLine of the Caddyfile.
func checkAdaptError(t *testing.T, caddyfile, wantMsg string, wantLine int) {
	t.Helper()
	_, _, err := adapt(t, caddyfile)
	if err == nil {
		t.Fatalf("adapting succeeded, want an error containing %q; Caddyfile:\n%s", wantMsg, caddyfile)
	}
	msg := err.Error()
	if !strings.Contains(msg, wantMsg) {
		t.Errorf("error %q does not contain %q", msg, wantMsg)
	}
	where := regexp.MustCompile(fmt.Sprintf(`\bCaddyfile:%d\b`, wantLine))
	if !where.MatchString(msg) {
		t.Errorf("error %q does not name Caddyfile:%d", msg, wantLine)
	}
}
