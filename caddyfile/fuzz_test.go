package caddyfile_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/certflow/certflow"
)

// fuzzOptionSeeds are bodies of a certflow block: every option, valid and
// not, and some shapes of braces and tokens.
var fuzzOptionSeeds = []string{
	"",
	"dir https://ca.example/dir",
	"email ops@example.com",
	"eab kid mac",
	"eab kid",
	"account_key /etc/certflow/account.pem",
	"account_key {env.ACME_ACCOUNT_KEY}",
	"account_key_file /etc/certflow/account.pem",
	"profile shortlived",
	"profile",
	"lifetime 160h",
	"lifetime -1h",
	"preferred_chains smallest",
	"preferred_chains smallest {\nroot_common_name A\n}",
	"preferred_chains {\nroot_common_name A B\nany_common_name C\n}",
	"preferred_chains {\n}",
	"request_timeout 20s",
	"test_dir https://staging.example/dir",
	"enable_http_challenge",
	"enable_tlsalpn_challenge\ndisable_tlsalpn_challenge",
	"alt_http_port 8080",
	"alt_tlsalpn_port 0",
	"distributed false",
	"distributed",
	"trusted_roots /a.pem /b.pem",
	"timeout 30s",
	"timeout -1s",
	"disable_http_challenge",
	"disable_tlsalpn_challenge yes",
	"max_concurrent_challenges 20",
	"max_queued_challenges 0",
	"challenge_timeout 3m",
	"failure_backoff 30s 2h",
	"failure_backoff 2h 30s",
	"retention 500 3d",
	"retention 1",
	"self_check off",
	"self_check off {\n}",
	"self_check {\n}",
	"self_check {\nresolvers 1.1.1.1:53 [::1]:53\nport 8080\ntlsalpn_port 8443\ninterval 1s\nattempt_timeout 5s\ntimeout 1m\n}",
	"self_check {\nport 0\n}",
	"self_check {\nresolvers 1.1.1.1\n}",
	"self_check {\nself_check {\n}\n}",
	"self_check",
	"dns",
	"dns nosuchprovider token",
	"resolvers 1.1.1.1",
	"propagation_timeout -1",
	"propagation_delay 10s",
	"dns_ttl 60s",
	"dns_challenge_override_domain _acme.example.net",
	"dns_serialize",
	"}",
	"{",
	"}}\n{{",
	"\"quoted value\" `backtick` {$ENV_VAR} {env.X}",
	"email <<EOF\nops@example.com\nEOF",
	"unknown_option with args",
}

// fuzzSite and fuzzGlobal put a certflow block body in a site's tls issuer
// and in the global cert_issuer option.
func fuzzSite(body string) string {
	return "example.com {\n\ttls {\n\t\tissuer certflow {\n" + body + "\n\t\t}\n\t}\n}\n"
}

func fuzzGlobal(body string) string {
	return "{\n\tcert_issuer certflow {\n" + body + "\n\t}\n}\n\nexample.com {\n\trespond ok\n}\n"
}

// FuzzCaddyfile: adapting a Caddyfile with an arbitrary certflow block, in a
// site and in the global options, never panics, and what adapts is JSON;
// the block's tokens given straight to UnmarshalCaddyfile never panic
// either, and an issuer that unmarshals can be validated and encoded.
func FuzzCaddyfile(f *testing.F) {
	for _, s := range fuzzOptionSeeds {
		f.Add(s)
	}
	// the golden files' Caddyfiles, as block bodies (mostly invalid there,
	// but a rich vocabulary for the fuzzer)
	files, _ := filepath.Glob(filepath.Join("testdata", "*.caddyfiletest"))
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		body, _, _ := strings.Cut(string(b), "\n"+separator+"\n")
		f.Add(body)
	}
	adapter := caddyconfig.GetAdapter("caddyfile")
	if adapter == nil {
		f.Fatal("the caddyfile config adapter is not registered")
	}
	f.Fuzz(func(t *testing.T, body string) {
		// the block's tokens, straight to the module
		if tokens, err := caddyfile.Tokenize([]byte("certflow "+body), "Fuzzfile"); err == nil {
			iss := new(certflow.Issuer)
			if err := iss.UnmarshalCaddyfile(caddyfile.NewDispenser(tokens)); err == nil {
				_ = iss.Validate()
				if _, err := json.Marshal(iss); err != nil {
					t.Fatalf("an issuer that unmarshals does not encode: %v", err)
				}
			}
		}
		// Caddy's import reads files (and globs) from disk: not certflow's
		// grammar, and not something to let a fuzzer loose on
		if strings.Contains(body, "import") {
			return
		}
		for _, cf := range []string{fuzzSite(body), fuzzGlobal(body)} {
			out, _, err := adapter.Adapt([]byte(cf), nil)
			if err == nil && !json.Valid(out) {
				t.Fatalf("adapted to invalid JSON: %s", out)
			}
		}
	})
}
