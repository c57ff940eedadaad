package certflow

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	_ "github.com/caddy-dns/rfc2136"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	"github.com/caddyserver/certmagic"
)

// stockFieldPaths lists the JSON paths of every leaf field of the stock acme
// issuer's config, found by reflection: a field Caddy adds shows up here
// without anyone having to remember it.
func stockFieldPaths() []string {
	paths := jsonLeafPaths(reflect.TypeFor[caddytls.ACMEIssuer]())
	sort.Strings(paths)
	return paths
}

// parityCase is what certflow does with one stock field: an issuer object
// setting it, and either nothing (accepted: it round-trips and provisions)
// or the words of the refusal, which must name the field.
type parityCase struct {
	issuer  string // JSON object (without "module")
	refusal string // "" when accepted
}

func parityCases(t *testing.T) map[string]parityCase {
	keyPEM, rootsFile := testAccountKeyPEM(t), testRootsFile(t)
	keyJSON, _ := json.Marshal(keyPEM)
	provider := `{"name": "rfc2136", "key_name": "k", "key_alg": "hmac-sha256", "key": "c2VjcmV0", "server": "127.0.0.1:53"}`
	return map[string]parityCase{
		"ca":                                 {issuer: `{"ca": "https://ca.example.net/acme/directory"}`},
		"test_ca":                            {issuer: `{"test_ca": "https://staging.example.net/directory"}`, refusal: "does not retry against a test CA"},
		"email":                              {issuer: `{"email": "ops@example.com"}`},
		"profile":                            {issuer: `{"profile": "shortlived"}`},
		"account_key":                        {issuer: `{"account_key": ` + string(keyJSON) + `}`},
		"external_account.key_id":            {issuer: `{"external_account": {"key_id": "kid-1", "mac_key": "bWFjLWtleQ"}}`},
		"external_account.mac_key":           {issuer: `{"external_account": {"key_id": "kid-1", "mac_key": "bWFjLWtleQ"}}`},
		"acme_timeout":                       {issuer: `{"acme_timeout": "90s"}`},
		"challenges.http.disabled":           {issuer: `{"challenges": {"http": {"disabled": true}}}`},
		"challenges.http.alternate_port":     {issuer: `{"challenges": {"http": {"alternate_port": 8080}}}`},
		"challenges.tls-alpn.disabled":       {issuer: `{"challenges": {"tls-alpn": {"disabled": true}}}`},
		"challenges.tls-alpn.alternate_port": {issuer: `{"challenges": {"tls-alpn": {"alternate_port": 8443}}}`},
		"challenges.dns.provider":            {issuer: `{"challenges": {"dns": {"provider": ` + provider + `}}}`},
		"challenges.dns.ttl":                 {issuer: `{"challenges": {"dns": {"provider": ` + provider + `, "ttl": "60s"}}}`},
		"challenges.dns.propagation_delay":   {issuer: `{"challenges": {"dns": {"provider": ` + provider + `, "propagation_delay": "5s"}}}`},
		"challenges.dns.propagation_timeout": {issuer: `{"challenges": {"dns": {"provider": ` + provider + `, "propagation_timeout": -1}}}`},
		"challenges.dns.resolvers":           {issuer: `{"challenges": {"dns": {"provider": ` + provider + `, "resolvers": ["192.0.2.53:53"]}}}`},
		"challenges.dns.override_domain":     {issuer: `{"challenges": {"dns": {"provider": ` + provider + `, "override_domain": "acme.example.org"}}}`},
		"challenges.bind_host":               {issuer: `{"challenges": {"bind_host": "192.0.2.10"}}`},
		"challenges.distributed":             {issuer: `{"challenges": {"distributed": false}}`},
		"trusted_roots_pem_files":            {issuer: `{"trusted_roots_pem_files": [` + quote(rootsFile) + `]}`},
		"preferred_chains.smallest":          {issuer: `{"preferred_chains": {"smallest": true}}`},
		"preferred_chains.root_common_name":  {issuer: `{"preferred_chains": {"root_common_name": ["Root A"]}}`},
		"preferred_chains.any_common_name":   {issuer: `{"preferred_chains": {"any_common_name": ["Intermediate B"]}}`},
		"certificate_lifetime":               {issuer: `{"certificate_lifetime": "160h"}`},
		"network_proxy":                      {issuer: `{"network_proxy": {"from": "url", "url": "http://127.0.0.1:3128"}}`},
	}
}

// TestStockFieldParity: every field of the stock acme issuer's JSON is
// accepted by certflow under the same name (it decodes strictly, comes back
// out unchanged and provisions) or refused when the config is loaded with
// an error naming it. A stock field with no case here fails the test.
func TestStockFieldParity(t *testing.T) {
	isolateCaddy(t)
	cases := parityCases(t)
	paths := stockFieldPaths()
	if len(paths) < 20 {
		t.Fatalf("found only %d stock fields by reflection: %v", len(paths), paths)
	}
	for _, path := range paths {
		t.Run(path, func(t *testing.T) {
			tc, ok := cases[path]
			if !ok {
				t.Fatalf("the stock acme issuer has a field %q that certflow neither accepts nor refuses: "+
					"support it with the stock meaning, or refuse it in validateStockOptions, and add it here", path)
			}
			// the stock issuer takes the object too, so the case sets what
			// the stock field really is; values are compared as the stock
			// issuer encodes them (durations as nanoseconds)
			want := asStock(t, []byte(tc.issuer), path)
			if len(want) == 0 {
				t.Fatalf("the case does not set %s", path)
			}

			var iss Issuer
			if err := caddy.StrictUnmarshalJSON([]byte(tc.issuer), &iss); err != nil {
				t.Fatalf("certflow does not take the stock field: %v", err)
			}
			out, err := json.Marshal(&iss)
			if err != nil {
				t.Fatal(err)
			}
			if got := asStock(t, out, path); !bytes.Equal(got, want) {
				t.Errorf("%s does not round-trip: put %s, got %s (whole: %s)", path, want, got, out)
			}

			err = validateIssuerConfig(t, tc.issuer)
			switch {
			case tc.refusal == "" && err != nil:
				t.Errorf("loading a config with %s failed: %v", path, err)
			case tc.refusal != "" && err == nil:
				t.Errorf("loading a config with %s succeeded; want it refused", path)
			case tc.refusal != "":
				field := path[strings.LastIndex(path, ".")+1:]
				if !strings.Contains(err.Error(), field) || !strings.Contains(err.Error(), tc.refusal) {
					t.Errorf("refusal %q should name %s and say %q", err, field, tc.refusal)
				}
			}
		})
	}
	for path := range cases {
		if !contains(paths, path) {
			t.Errorf("case %q is for a field the stock issuer no longer has", path)
		}
	}
}

// TestStockMeaningCollisions: where certflow used a stock name for another
// meaning, the stock meaning wins, certflow's has its own name, and a value
// that only made sense in the old meaning is refused, saying what to write.
func TestStockMeaningCollisions(t *testing.T) {
	isolateCaddy(t)
	for _, tc := range []struct {
		name, issuer, want string
	}{
		{"account_key given a file name", `{"account_key": "/etc/caddy/account.pem"}`,
			"to read the key from a file, write account_key_file"},
		{"account_key not a key", `{"account_key": "-----BEGIN EC PRIVATE KEY-----\nnot base64\n-----END EC PRIVATE KEY-----\n"}`,
			"account_key: the PEM block is not a usable private key"},
		{"both account key forms", `{"account_key": ` + quote(testAccountKeyPEM(t)) + `, "account_key_file": "/etc/caddy/account.pem"}`,
			"account_key and account_key_file are both set"},
		{"negative acme_timeout", `{"acme_timeout": "-1s"}`, "acme_timeout must not be negative"},
		{"negative request_timeout", `{"request_timeout": "-1s"}`, "request_timeout must not be negative"},
		{"enabled and disabled", `{"challenges": {"http": {"disabled": true, "enabled": true}}}`, "challenges.http is both disabled and enabled"},
		{"empty preferred_chains", `{"preferred_chains": {}}`, "preferred_chains is empty"},
		{"global dns provider", `{"challenges": {"dns": {}}}`, "provider of Caddy's global dns option"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := validateIssuerConfig(t, tc.issuer)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "PRIVATE KEY") {
				t.Errorf("the error echoes the key: %v", err)
			}
		})
	}
	// the per-request timeout has its own name and reaches the engine
	var iss Issuer
	if err := caddy.StrictUnmarshalJSON([]byte(`{"request_timeout": "20s", "acme_timeout": "2m"}`), &iss); err != nil {
		t.Fatal(err)
	}
	if iss.RequestTimeout != caddy.Duration(20*time.Second) || iss.ACMETimeout != caddy.Duration(2*time.Minute) {
		t.Errorf("request_timeout %v, acme_timeout %v", iss.RequestTimeout, iss.ACMETimeout)
	}
}

// TestChallengeTypesWithDNSProvider: as in the stock issuer, a DNS provider
// makes dns-01 the only type, unless http or tls-alpn is enabled explicitly;
// an IP address then cannot be issued and is refused up front.
func TestChallengeTypesWithDNSProvider(t *testing.T) {
	provider := json.RawMessage(`{"name": "rfc2136"}`)
	for _, tc := range []struct {
		name       string
		challenges *ChallengesConfig
		want       []string
	}{
		{"no provider", nil, []string{"http-01", "tls-alpn-01"}},
		{"provider only", &ChallengesConfig{DNS: &DNSChallengeConfig{ProviderRaw: provider}}, []string{"dns-01"}},
		{"provider and http enabled", &ChallengesConfig{
			HTTP: &ChallengeTypeConfig{Enabled: true}, DNS: &DNSChallengeConfig{ProviderRaw: provider},
		}, []string{"http-01", "dns-01"}},
		{"provider, both enabled", &ChallengesConfig{
			HTTP: &ChallengeTypeConfig{Enabled: true}, TLSALPN: &ChallengeTypeConfig{Enabled: true},
			DNS: &DNSChallengeConfig{ProviderRaw: provider},
		}, []string{"http-01", "tls-alpn-01", "dns-01"}},
		{"provider, alternate port is not enabling", &ChallengesConfig{
			HTTP: &ChallengeTypeConfig{AlternatePort: 8080}, DNS: &DNSChallengeConfig{ProviderRaw: provider},
		}, []string{"dns-01"}},
		{"http disabled", &ChallengesConfig{HTTP: &ChallengeTypeConfig{Disabled: true}}, []string{"tls-alpn-01"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			iss := &Issuer{Challenges: tc.challenges}
			if got := iss.challengeTypes(); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("challenge types %v, want %v", got, tc.want)
			}
		})
	}
	dnsOnly := &Issuer{Challenges: &ChallengesConfig{DNS: &DNSChallengeConfig{ProviderRaw: provider}}}
	if err := dnsOnly.canIssue("192.0.2.7"); err == nil || !strings.Contains(err.Error(), "http-01 or tls-alpn-01") {
		t.Errorf("an IP address with dns-01 only: %v", err)
	}
}

// validateIssuerConfig loads a Caddy config whose one automation policy
// has the certflow issuer given (without "module") through caddy.Validate:
// every module is provisioned and validated, nothing is started.
func validateIssuerConfig(t *testing.T, issuerJSON string) error {
	t.Helper()
	var iss map[string]any
	if err := json.Unmarshal([]byte(issuerJSON), &iss); err != nil {
		t.Fatal(err)
	}
	iss["module"] = "certflow"
	cfgJSON, err := json.Marshal(map[string]any{
		"admin":   map[string]any{"disabled": true, "config": map[string]any{"persist": false}},
		"storage": map[string]any{"module": "file_system", "root": t.TempDir()},
		"apps": map[string]any{"tls": map[string]any{"automation": map[string]any{
			"policies": []any{map[string]any{"subjects": []string{"example.com"}, "issuers": []any{iss}}},
		}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	var cfg caddy.Config
	if err := caddy.StrictUnmarshalJSON(cfgJSON, &cfg); err != nil {
		t.Fatal(err)
	}
	return caddy.Validate(&cfg)
}

// isolateCaddy points Caddy's config and data directories at the test's.
func isolateCaddy(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(dir, "config"))
	t.Setenv("XDG_DATA_HOME", filepath.Join(dir, "data"))
}

// asStock decodes an issuer object as the stock acme issuer (strictly: the
// object must hold stock fields only) and returns the JSON of its field at
// path as the stock issuer encodes it.
func asStock(t *testing.T, data []byte, path string) []byte {
	t.Helper()
	var stock caddytls.ACMEIssuer
	if err := caddy.StrictUnmarshalJSON(data, &stock); err != nil {
		t.Fatalf("not a valid stock acme issuer: %v: %s", err, data)
	}
	out, err := json.Marshal(&stock)
	if err != nil {
		t.Fatal(err)
	}
	return jsonAt(t, out, path)
}

// jsonAt returns the compact JSON at a dotted path of a JSON object.
func jsonAt(t *testing.T, data []byte, path string) []byte {
	t.Helper()
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatal(err)
	}
	for _, part := range strings.Split(path, ".") {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[part]
	}
	if v == nil {
		return nil
	}
	out, _ := json.Marshal(v)
	return out
}

func testAccountKeyPEM(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pemBytes, err := certmagic.PEMEncodePrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pemBytes)
}

// testRootsFile writes a self-signed CA certificate to a PEM file.
func testRootsFile(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "root.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func quote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

var _ = caddyconfig.GetAdapter
