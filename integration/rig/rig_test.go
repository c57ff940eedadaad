package rig

import (
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

// issueTimeout bounds a handshake that waits for an on-demand certificate.
const issueTimeout = 90 * time.Second

func TestDNSAnswersOverTCPAndUDP(t *testing.T) {
	d, err := StartDNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Error(err)
		}
	})
	long := strings.Repeat("x", 300)
	d.SetTXT("_acme-challenge.A.test", "token", long)
	d.SetAddrs("v6.test", netip.MustParseAddr("::1"))

	for _, network := range []string{"udp", "tcp"} {
		t.Run(network, func(t *testing.T) {
			client := &dns.Client{Net: network, Timeout: 5 * time.Second}
			query := func(name string, qtype uint16) *dns.Msg {
				t.Helper()
				m := new(dns.Msg)
				m.SetQuestion(dns.Fqdn(name), qtype)
				in, _, err := client.Exchange(m, d.Addr)
				if err != nil {
					t.Fatalf("query %s %s: %v", name, dns.TypeToString[qtype], err)
				}
				if in.Rcode != dns.RcodeSuccess {
					t.Fatalf("query %s %s: rcode %s", name, dns.TypeToString[qtype], dns.RcodeToString[in.Rcode])
				}
				return in
			}

			in := query("anything.test", dns.TypeA)
			if len(in.Answer) != 1 || in.Answer[0].(*dns.A).A.String() != "127.0.0.1" {
				t.Errorf("A anything.test = %v, want 127.0.0.1", in.Answer)
			}
			if in := query("anything.test", dns.TypeAAAA); len(in.Answer) != 0 {
				t.Errorf("AAAA anything.test = %v, want no answer", in.Answer)
			}
			in = query("_acme-challenge.a.test", dns.TypeTXT)
			var txts []string
			for _, rr := range in.Answer {
				txts = append(txts, strings.Join(rr.(*dns.TXT).Txt, ""))
			}
			if len(txts) != 2 || txts[0] != "token" || txts[1] != long {
				t.Errorf("TXT _acme-challenge.a.test = %q, want [token, 300×x]", txts)
			}
			if in := query("v6.test", dns.TypeA); len(in.Answer) != 0 {
				t.Errorf("A v6.test = %v, want no answer", in.Answer)
			}
			in = query("v6.test", dns.TypeAAAA)
			if len(in.Answer) != 1 || in.Answer[0].(*dns.AAAA).AAAA.String() != "::1" {
				t.Errorf("AAAA v6.test = %v, want ::1", in.Answer)
			}
		})
	}

	d.ResetAddrs("v6.test")
	d.SetTXT("_acme-challenge.a.test")
	client := &dns.Client{Net: "udp", Timeout: 5 * time.Second}
	m := new(dns.Msg)
	m.SetQuestion("v6.test.", dns.TypeA)
	in, _, err := client.Exchange(m, d.Addr)
	if err != nil {
		t.Fatal(err)
	}
	if len(in.Answer) != 1 {
		t.Errorf("A v6.test after ResetAddrs = %v, want 127.0.0.1", in.Answer)
	}
}

func TestCACountsAndInjectsFaults(t *testing.T) {
	c := startTestCA(t, CAOptions{HTTPPort: 1, TLSPort: 2})
	client := c.HTTPClient()

	status, _ := get(t, client, c.DirectoryURL)
	if status != http.StatusOK {
		t.Fatalf("GET directory: status %d", status)
	}
	if n := c.Count(KindDirectory); n != 1 {
		t.Errorf("Count(directory) = %d, want 1", n)
	}

	c.SetFault(func(r *http.Request) (int, http.Header, string, bool) {
		if KindOf(r) != KindDirectory {
			return 0, nil, "", false
		}
		return http.StatusServiceUnavailable, http.Header{"Retry-After": {"1"}}, "down", true
	})
	status, body := get(t, client, c.DirectoryURL)
	if status != http.StatusServiceUnavailable || body != "down" {
		t.Errorf("faulted GET directory = %d %q, want 503 \"down\"", status, body)
	}
	c.SetFault(nil)

	// A new-order with a bogus signature: Pebble refuses it, the rig still
	// records the identifiers of its payload.
	payload, err := json.Marshal(map[string]any{"identifiers": []map[string]string{
		{"type": "dns", "value": "A.test"}, {"type": "dns", "value": "b.test"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	jws, err := json.Marshal(map[string]string{
		"protected": base64.RawURLEncoding.EncodeToString([]byte(`{}`)),
		"payload":   base64.RawURLEncoding.EncodeToString(payload),
		"signature": "",
	})
	if err != nil {
		t.Fatal(err)
	}
	orderURL := strings.TrimSuffix(c.DirectoryURL, "/dir") + "/order-plz"
	resp, err := client.Post(orderURL, "application/jose+json", strings.NewReader(string(jws)))
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if got := c.NewOrders("a.test"); got != 1 {
		t.Errorf("NewOrders(a.test) = %d, want 1", got)
	}
	if got := c.NewOrders("c.test"); got != 0 {
		t.Errorf("NewOrders(c.test) = %d, want 0", got)
	}

	reqs := c.Requests()
	if len(reqs) != 3 || !reqs[1].Faulted || reqs[1].Status != http.StatusServiceUnavailable ||
		reqs[2].Kind != KindNewOrder || reqs[2].Faulted || reqs[2].Status < 400 {
		t.Errorf("Requests() = %+v, want directory, faulted directory, refused new-order", reqs)
	}
	c.ResetCounts()
	if n := c.Count(KindDirectory); n != 0 {
		t.Errorf("Count(directory) after ResetCounts = %d, want 0", n)
	}
	if err := c.BlockDomain("blocked.test"); err != nil {
		t.Error(err)
	}
}

// TestLoadResources: resources are found wherever certflow keeps them: an
// order under its own key (an earlier version's), an order and a
// challenge in their request's record, a request and an order in flight
// in their name's record; each once, by ID.
func TestLoadResources(t *testing.T) {
	root := t.TempDir()
	base := filepath.Join(root, "certflow", "issuer-key")
	files := map[string]string{
		"orders/20260101-000000.000000001-aaaa.json": `{"version":1,"id":"20260101-000000.000000001-aaaa","name":"a.test","state":"valid"}`,
		"requests/20260101-000001.000000001-bbbb.json": `{"version":1,"id":"20260101-000001.000000001-bbbb","name":"b.test","state":"ready",
			"order_record":{"version":1,"id":"20260101-000001.000000002-cccc","name":"b.test","state":"valid"},
			"challenge_records":[{"version":1,"id":"20260101-000001.000000002-cccc-a0-1","name":"b.test","state":"valid"}]}`,
		"names/c.test.json": `{"version":1,"name":"c.test","last_request":"20260101-000002.000000001-dddd",
			"request":{"version":1,"id":"20260101-000002.000000001-dddd","name":"c.test","state":"pending"},
			"order":{"version":1,"id":"20260101-000002.000000002-eeee","name":"c.test","state":"pending"}}`,
	}
	for name, body := range files {
		p := filepath.Join(base, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for kind, want := range map[string][]string{
		ResourceOrders:     {"a.test valid", "b.test valid", "c.test pending"},
		ResourceRequests:   {"b.test ready", "c.test pending"},
		ResourceChallenges: {"b.test valid"},
	} {
		got, err := LoadResources(root, kind)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, r := range got {
			names = append(names, fmt.Sprintf("%s %s", r["name"], r["state"]))
			if _, ok := r["order_record"]; ok {
				t.Errorf("%s: a request is shown with its order stored in it: %v", kind, r)
			}
		}
		if fmt.Sprint(names) != fmt.Sprint(want) {
			t.Errorf("LoadResources(%s) = %v, want %v", kind, names, want)
		}
	}
}

func TestCaddyConfigRejectsIncompleteConfigs(t *testing.T) {
	for name, cfg := range map[string]CaddyConfig{
		"no ports":       {StorageRoot: "/tmp/x"},
		"same ports":     {HTTPPort: 1, HTTPSPort: 1, StorageRoot: "/tmp/x"},
		"no storage":     {HTTPPort: 1, HTTPSPort: 2},
		"no ask":         {HTTPPort: 1, HTTPSPort: 2, StorageRoot: "/tmp/x", Issuer: map[string]any{"module": "acme"}},
		"two catch-alls": {HTTPPort: 1, HTTPSPort: 2, StorageRoot: "/tmp/x", AskURL: "http://x", Issuer: map[string]any{"module": "acme"}, Policies: []Policy{{}}},
	} {
		if _, err := cfg.JSON(); err == nil {
			t.Errorf("%s: JSON() succeeded, want an error", name)
		}
	}
}

func TestCaddyConfigPolicies(t *testing.T) {
	certflow := map[string]any{"module": "certflow"}
	cfg, err := CaddyConfig{
		HTTPPort: 1, HTTPSPort: 2, StorageRoot: "/tmp/x", AskURL: "http://ask",
		Issuer:   certflow,
		Policies: []Policy{{Subjects: []string{"managed.test"}, Issuers: []map[string]any{{"module": "acme"}}}},
		Automate: []string{"managed.test"},
	}.Build()
	if err != nil {
		t.Fatal(err)
	}
	data, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Admin struct {
			Disabled bool `json:"disabled"`
		} `json:"admin"`
		Apps struct {
			TLS struct {
				Automation struct {
					Policies []struct {
						Subjects []string         `json:"subjects"`
						Issuers  []map[string]any `json:"issuers"`
						OnDemand bool             `json:"on_demand"`
					} `json:"policies"`
					OnDemand struct {
						Permission map[string]string `json:"permission"`
					} `json:"on_demand"`
				} `json:"automation"`
				Certificates struct {
					Automate []string `json:"automate"`
				} `json:"certificates"`
			} `json:"tls"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	tls := got.Apps.TLS
	ps := tls.Automation.Policies
	if !got.Admin.Disabled || len(ps) != 2 ||
		ps[0].Subjects[0] != "managed.test" || ps[0].OnDemand || ps[0].Issuers[0]["module"] != "acme" ||
		len(ps[1].Subjects) != 0 || !ps[1].OnDemand || ps[1].Issuers[0]["module"] != "certflow" ||
		tls.Automation.OnDemand.Permission["endpoint"] != "http://ask" ||
		len(tls.Certificates.Automate) != 1 {
		t.Errorf("config = %s", data)
	}
}

// TestStockACMEOnDemand proves the rig (ports, DNS, catch-all policy, trust)
// with Caddy's stock acme issuer, once per challenge type.
func TestStockACMEOnDemand(t *testing.T) {
	for _, tc := range []struct{ used, disabled string }{
		{"http-01", "tls-alpn"},
		{"tls-alpn-01", "http"},
	} {
		t.Run(tc.used, func(t *testing.T) {
			testStockACMEOnDemand(t, tc.disabled, tc.used)
		})
	}
}

func testStockACMEOnDemand(t *testing.T, disabledChallenge, usedChallenge string) {
	d, err := StartDNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Error(err)
		}
	})
	httpPort, httpsPort := freePorts(t)
	dir := t.TempDir()
	c := startTestCA(t, CAOptions{HTTPPort: httpPort, TLSPort: httpsPort, DNSAddr: d.Addr, Dir: dir})

	askURL, stopAsk, err := StartAsk(func(name string) bool { return name != "denied.test" })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stopAsk)

	storage := filepath.Join(dir, "storage")
	logFile := filepath.Join(dir, "caddy.log")
	cfg, err := CaddyConfig{
		HTTPPort:    httpPort,
		HTTPSPort:   httpsPort,
		StorageRoot: storage,
		AskURL:      askURL,
		LogLevel:    "DEBUG",
		LogFile:     logFile,
		Issuer: map[string]any{
			"module":                  "acme",
			"ca":                      c.DirectoryURL,
			"trusted_roots_pem_files": []string{c.ServerRootsFile},
			"challenges":              map[string]any{disabledChallenge: map[string]any{"disabled": true}},
		},
	}.JSON()
	if err != nil {
		t.Fatal(err)
	}
	if err := RunCaddy(cfg); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := StopCaddy(); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			if log, err := os.ReadFile(logFile); err == nil {
				t.Logf("Caddy log:\n%s", log)
			}
		}
	})

	addr := loopback(httpsPort)
	state, err := Handshake(addr, "a.test", c.IssuerRoots(), issueTimeout)
	if err != nil {
		t.Fatalf("first handshake: %v (CA requests: %+v)", err, c.Requests())
	}
	leaf := state.PeerCertificates[0]
	intermediates := x509.NewCertPool()
	for _, ic := range state.PeerCertificates[1:] {
		intermediates.AddCert(ic)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: "a.test", Roots: c.IssuerRoots(), Intermediates: intermediates}); err != nil {
		t.Errorf("chain does not verify against Pebble's root: %v", err)
	}
	if n := c.NewOrders("a.test"); n != 1 {
		t.Errorf("NewOrders(a.test) = %d, want 1", n)
	}
	if n := c.Count(KindFinalize); n != 1 {
		t.Errorf("Count(finalize) = %d, want 1", n)
	}
	if !servedChallenge(t, logFile, usedChallenge) {
		t.Errorf("Caddy's log shows no %s challenge answer", usedChallenge)
	}

	if _, err := Handshake(addr, "a.test", c.IssuerRoots(), 10*time.Second); err != nil {
		t.Errorf("second handshake: %v", err)
	}
	if n := c.NewOrders("a.test"); n != 1 {
		t.Errorf("NewOrders(a.test) after second handshake = %d, want 1", n)
	}
	status, body, err := HTTPSGet(addr, "a.test", "/", c.IssuerRoots(), 10*time.Second)
	if err != nil || status != http.StatusOK || body != "hello from a.test" {
		t.Errorf("GET https://a.test/ = %d %q, %v; want 200 \"hello from a.test\"", status, body, err)
	}

	// The HTTP server on HTTPPort redirects everything but challenges.
	noFollow := &http.Client{
		Timeout:       10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	req, err := http.NewRequest(http.MethodGet, "http://"+loopback(httpPort)+"/", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = "a.test"
	resp, err := noFollow.Do(req)
	if err != nil {
		t.Fatalf("GET http://a.test/: %v", err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusPermanentRedirect {
		t.Errorf("GET http://a.test/ = %d, want a 308 redirect to HTTPS", resp.StatusCode)
	}

	if _, err := Handshake(addr, "denied.test", c.IssuerRoots(), 10*time.Second); err == nil {
		t.Error("handshake for denied.test succeeded, want a failure")
	}
	if n := c.NewOrders("denied.test"); n != 0 {
		t.Errorf("NewOrders(denied.test) = %d, want 0", n)
	}
}

// servedChallenge reports whether Caddy's JSON log at logFile shows it
// answered a challenge of type challengeType.
func servedChallenge(t *testing.T, logFile, challengeType string) bool {
	t.Helper()
	data, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatalf("reading Caddy's log: %v", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.Contains(line, `"served key authentication`) &&
			strings.Contains(line, `"challenge":"`+challengeType+`"`) {
			return true
		}
	}
	return false
}

// startTestCA starts Pebble and closes it when the test ends.
func startTestCA(t *testing.T, opts CAOptions) *CA {
	t.Helper()
	c, err := StartCA(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	})
	return c
}

// freePorts returns two distinct free ports on 127.0.0.1.
func freePorts(t *testing.T) (int, int) {
	t.Helper()
	for range 10 {
		a, err := FreePort()
		if err != nil {
			t.Fatal(err)
		}
		b, err := FreePort()
		if err != nil {
			t.Fatal(err)
		}
		if a != b {
			return a, b
		}
	}
	t.Fatal("FreePort kept returning the same port")
	return 0, 0
}

// get sends GET url and returns the status and body.
func get(t *testing.T, client *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading GET %s: %v", url, err)
	}
	return resp.StatusCode, string(body)
}
