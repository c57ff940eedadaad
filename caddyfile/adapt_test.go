// Package caddyfile_test holds the golden tests of certflow's Caddyfile
// grammar: each testdata/*.caddyfiletest file is a Caddyfile, a line of ten
// dashes, and the JSON Caddy adapts it to. Run with -update to rewrite the
// expected JSON after checking the change by hand.
package caddyfile_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	"github.com/mholt/acmez/v3/acme"

	"github.com/certflow/certflow"
)

var update = flag.Bool("update", false, "rewrite the expected JSON of testdata/*.caddyfiletest")

// separator splits a golden file into its Caddyfile and its expected JSON.
const separator = "----------"

// expectWarning, at the start of a Caddyfile comment line, declares an adapt
// warning the file expects; the rest of the line must be contained in the
// warning's message. Any warning not declared fails the test.
const expectWarning = "# expect warning:"

type goldenFile struct {
	path      string
	caddyfile string
	json      string
	warnings  []string // expected warning substrings
}

func readGolden(t *testing.T, path string) goldenFile {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text := strings.ReplaceAll(string(raw), "\r\n", "\n")
	before, after, found := strings.Cut(text, "\n"+separator+"\n")
	if !found {
		t.Fatalf("%s: no %q line between the Caddyfile and the JSON", path, separator)
	}
	g := goldenFile{path: path, caddyfile: before + "\n", json: after}
	for _, line := range strings.Split(before, "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), expectWarning); ok {
			g.warnings = append(g.warnings, strings.TrimSpace(rest))
		}
	}
	return g
}

// adapt runs the Caddyfile adapter the way `caddy adapt` does.
func adapt(t *testing.T, body string) ([]byte, []caddyconfig.Warning, error) {
	t.Helper()
	adapter := caddyconfig.GetAdapter("caddyfile")
	if adapter == nil {
		t.Fatal("the caddyfile config adapter is not registered")
	}
	return adapter.Adapt([]byte(body), nil)
}

// indent normalises JSON the way `caddy adapt --pretty` prints it.
func indent(t *testing.T, name string, data []byte) string {
	t.Helper()
	var compact, out bytes.Buffer
	if err := json.Compact(&compact, data); err != nil {
		t.Fatalf("%s: invalid JSON: %v", name, err)
	}
	if err := json.Indent(&out, compact.Bytes(), "", "\t"); err != nil {
		t.Fatalf("%s: invalid JSON: %v", name, err)
	}
	return out.String()
}

func TestAdapt(t *testing.T) {
	paths, err := filepath.Glob(filepath.Join("testdata", "*.caddyfiletest"))
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) == 0 {
		t.Fatal("no testdata/*.caddyfiletest files")
	}
	for _, path := range paths {
		name := strings.TrimSuffix(filepath.Base(path), ".caddyfiletest")
		t.Run(name, func(t *testing.T) {
			g := readGolden(t, path)
			got, warnings, err := adapt(t, g.caddyfile)
			if err != nil {
				t.Fatalf("adapting: %v", err)
			}
			checkWarnings(t, warnings, g.warnings)
			gotJSON := indent(t, "adapted config", got)

			if *update {
				out := strings.TrimSuffix(g.caddyfile, "\n") + "\n" + separator + "\n" + gotJSON + "\n"
				if err := os.WriteFile(path, []byte(out), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			wantJSON := indent(t, path, []byte(g.json))
			if gotJSON != wantJSON {
				t.Errorf("adapted JSON differs from %s (run with -update to rewrite it):\n%s",
					path, lineDiff(wantJSON, gotJSON))
			}
		})
	}
}

func checkWarnings(t *testing.T, got []caddyconfig.Warning, want []string) {
	t.Helper()
	matched := make([]bool, len(want))
	for _, w := range got {
		ok := false
		for i, sub := range want {
			if strings.Contains(w.String(), sub) {
				matched[i], ok = true, true
			}
		}
		if !ok {
			t.Errorf("unexpected adapt warning: %s", w)
		}
	}
	for i, sub := range want {
		if !matched[i] {
			t.Errorf("expected an adapt warning containing %q, got none", sub)
		}
	}
}

// lineDiff reports the first differing line of two texts with some context.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	i := 0
	for i < len(w) && i < len(g) && w[i] == g[i] {
		i++
	}
	from := max(0, i-3)
	var b strings.Builder
	fmt.Fprintf(&b, "first difference at line %d of the JSON\n", i+1)
	for _, part := range []struct {
		label string
		lines []string
	}{{"want", w}, {"got", g}} {
		fmt.Fprintf(&b, "--- %s:\n", part.label)
		for j := from; j < min(len(part.lines), i+4); j++ {
			marker := "  "
			if j == i {
				marker = "> "
			}
			fmt.Fprintf(&b, "%s%s\n", marker, part.lines[j])
		}
	}
	return b.String()
}

// tlsPolicies adapts a golden file's Caddyfile and returns its TLS
// automation policies, decoded loosely.
func tlsPolicies(t *testing.T, file string) []policy {
	t.Helper()
	g := readGolden(t, filepath.Join("testdata", file))
	got, _, err := adapt(t, g.caddyfile)
	if err != nil {
		t.Fatalf("adapting %s: %v", file, err)
	}
	var cfg struct {
		Apps struct {
			TLS struct {
				Automation struct {
					Policies []policy `json:"policies"`
				} `json:"automation"`
			} `json:"tls"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(got, &cfg); err != nil {
		t.Fatal(err)
	}
	return cfg.Apps.TLS.Automation.Policies
}

type policy struct {
	Subjects []string         `json:"subjects"`
	OnDemand bool             `json:"on_demand"`
	Issuers  []map[string]any `json:"issuers"`
}

func (p policy) modules() []string {
	var mods []string
	for _, iss := range p.Issuers {
		mods = append(mods, fmt.Sprint(iss["module"]))
	}
	return mods
}

// TestTwoSitesTwoPolicies checks that two sites using certflow with the same
// CA but different options get separate automation policies, each with its
// own issuer, instead of being merged into one.
func TestTwoSitesTwoPolicies(t *testing.T) {
	policies := tlsPolicies(t, "two_sites_same_ca.caddyfiletest")
	if len(policies) != 2 {
		t.Fatalf("got %d automation policies, want 2: %+v", len(policies), policies)
	}
	bySubject := map[string]policy{}
	for _, p := range policies {
		if len(p.Subjects) != 1 {
			t.Fatalf("policy with subjects %v, want exactly one site each", p.Subjects)
		}
		if !reflect.DeepEqual(p.modules(), []string{"certflow"}) {
			t.Fatalf("policy for %v has issuers %v, want just certflow", p.Subjects, p.modules())
		}
		bySubject[p.Subjects[0]] = p
	}
	a, b := bySubject["a.example.com"], bySubject["b.example.com"]
	if a.Issuers == nil || b.Issuers == nil {
		t.Fatalf("want policies for a.example.com and b.example.com, got %v", policies)
	}
	if a.Issuers[0]["ca"] != b.Issuers[0]["ca"] {
		t.Errorf("the two issuers should share the CA, got %v and %v", a.Issuers[0]["ca"], b.Issuers[0]["ca"])
	}
	if reflect.DeepEqual(a.Issuers[0], b.Issuers[0]) {
		t.Errorf("the two sites got the same issuer config %v", a.Issuers[0])
	}
	if a.Issuers[0]["email"] != "a@example.com" || b.Issuers[0]["email"] != "b@example.com" {
		t.Errorf("issuers crossed over: a=%v b=%v", a.Issuers[0], b.Issuers[0])
	}
}

// TestTLSShortcutGetsStockIssuers pins Caddy's behaviour for a site that uses
// the `tls <email>` shortcut next to a global `cert_issuer certflow`: the
// shortcut builds on global issuers only through their ACME issuer, which
// certflow exposes only once provisioned, so the site gets Caddy's stock
// issuers while the other sites keep certflow.
func TestTLSShortcutGetsStockIssuers(t *testing.T) {
	policies := tlsPolicies(t, "tls_shortcut_with_global_issuer.caddyfiletest")
	var shortcut, global *policy
	for i, p := range policies {
		switch {
		case reflect.DeepEqual(p.Subjects, []string{"shortcut.example.com"}):
			shortcut = &policies[i]
		case len(p.Subjects) == 0:
			global = &policies[i]
		}
	}
	if shortcut == nil {
		t.Fatalf("no policy for shortcut.example.com in %+v", policies)
	}
	for _, iss := range shortcut.Issuers {
		if iss["module"] == "certflow" {
			t.Errorf("shortcut site got a certflow issuer %v; Caddy gives it the stock issuers", iss)
		}
		if iss["email"] != "ops@example.com" {
			t.Errorf("shortcut site issuer %v lacks the shortcut's email", iss)
		}
	}
	if global == nil || !reflect.DeepEqual(global.modules(), []string{"certflow"}) {
		t.Errorf("want a catch-all policy with the global certflow issuer, got %+v", global)
	}
}

// TestUnmarshalEveryOption checks the parsed struct directly, so the JSON
// field names in the golden files are known to come from the right fields.
func TestUnmarshalEveryOption(t *testing.T) {
	d := caddyfile.NewTestDispenser(`certflow {
		dir https://ca.example.net/acme/directory
		email ops@example.com
		profile shortlived
		lifetime 90h
		preferred_chains smallest
		eab kid-1 bWFjLWtleQ
		account_key_file /etc/certflow/account.pem
		trusted_roots a.pem b.pem
		trusted_roots c.pem
		timeout 2m
		request_timeout 45s
		disable_http_challenge
		disable_tlsalpn_challenge
		alt_http_port 8080
		alt_tlsalpn_port 8443
		distributed false
		max_concurrent_challenges 20
		max_queued_challenges 200
		challenge_timeout 3m
		failure_backoff 30s 2h
		retention 500 3d
		self_check {
			resolvers 1.1.1.1:53 [2606:4700:4700::1111]:53
			port 8080
			tlsalpn_port 8443
			interval 1s
			attempt_timeout 5s
			timeout 1m
		}
	}`)
	var got certflow.Issuer
	if err := got.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	smallest, distributed := true, false
	want := certflow.Issuer{
		CA:                   "https://ca.example.net/acme/directory",
		Email:                "ops@example.com",
		Profile:              "shortlived",
		CertificateLifetime:  caddy.Duration(90 * time.Hour),
		PreferredChains:      &caddytls.ChainPreference{Smallest: &smallest},
		AccountKeyFile:       "/etc/certflow/account.pem",
		ExternalAccount:      &acme.EAB{KeyID: "kid-1", MACKey: "bWFjLWtleQ"},
		ACMETimeout:          caddy.Duration(2 * time.Minute),
		RequestTimeout:       caddy.Duration(45 * time.Second),
		TrustedRootsPEMFiles: []string{"a.pem", "b.pem", "c.pem"},
		Challenges: &certflow.ChallengesConfig{
			HTTP:        &certflow.ChallengeTypeConfig{Disabled: true, AlternatePort: 8080},
			TLSALPN:     &certflow.ChallengeTypeConfig{Disabled: true, AlternatePort: 8443},
			Distributed: &distributed,
		},
		SelfCheck: &certflow.SelfCheckConfig{
			Resolvers:      []string{"1.1.1.1:53", "[2606:4700:4700::1111]:53"},
			HTTPPort:       8080,
			TLSALPNPort:    8443,
			Interval:       caddy.Duration(time.Second),
			AttemptTimeout: caddy.Duration(5 * time.Second),
			Timeout:        caddy.Duration(time.Minute),
		},
		MaxConcurrentChallenges: 20,
		MaxQueuedChallenges:     200,
		ChallengeTimeout:        caddy.Duration(3 * time.Minute),
		FailureBackoff: &certflow.BackoffConfig{
			Initial: caddy.Duration(30 * time.Second),
			Max:     caddy.Duration(2 * time.Hour),
		},
		Retention: &certflow.RetentionConfig{MaxCount: 500, MaxAge: caddy.Duration(72 * time.Hour)},
	}
	gotJSON, _ := json.Marshal(&got)
	wantJSON, _ := json.Marshal(&want)
	if !bytes.Equal(gotJSON, wantJSON) {
		t.Errorf("parsed\n%s\nwant\n%s", gotJSON, wantJSON)
	}
}

// TestUnmarshalMinimal checks that options that are absent leave their
// fields, and so the JSON, empty.
func TestUnmarshalMinimal(t *testing.T) {
	for _, input := range []string{
		`certflow`,
		`certflow {
		}`,
		`certflow {
			self_check {
			}
		}`,
	} {
		var got certflow.Issuer
		if err := got.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input)); err != nil {
			t.Fatalf("%q: %v", input, err)
		}
		if b, _ := json.Marshal(&got); string(b) != "{}" {
			t.Errorf("%q: got %s, want {}", input, b)
		}
	}
}
