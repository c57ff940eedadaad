package integration

import (
	"crypto/x509"
	"encoding/json"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	certflow "github.com/certflow/certflow"
	"github.com/certflow/certflow/integration/rig"
	"github.com/certflow/certflow/issuer"
)

// env is one test's world: a DNS answering 127.0.0.1, an in-process Pebble,
// an ask endpoint and ports and storage for an in-process Caddy.
type env struct {
	t         *testing.T
	dns       *rig.DNS
	ca        *rig.CA
	askURL    string
	httpPort  int
	httpsPort int
	storage   string

	mu      sync.Mutex
	denied  map[string]bool
	running bool
}

type envOptions struct {
	authzReuse int
	// dnsAddr, when set, is the DNS server Pebble resolves through (e.g.
	// BIND); otherwise the env starts its own, answering 127.0.0.1.
	dnsAddr string
	// tuneCA, when set, adjusts Pebble's options (profiles, roots, chains)
	// before it starts.
	tuneCA func(*rig.CAOptions)
	// caHTTPPort, when set, is the port Pebble's validator connects to for
	// HTTP-01 instead of Caddy's HTTP port (a closed one: port 80 closed
	// at a load balancer).
	caHTTPPort int
	// certValidity is the lifetime of the certificates Pebble issues
	// (zero: Pebble's default).
	certValidity time.Duration
}

func newEnv(t *testing.T, o envOptions) *env {
	t.Helper()
	e := &env{t: t, denied: map[string]bool{}, storage: t.TempDir()}
	var err error
	if e.httpPort, err = rig.FreePort(); err != nil {
		t.Fatal(err)
	}
	if e.httpsPort, err = rig.FreePort(); err != nil {
		t.Fatal(err)
	}
	dnsAddr := o.dnsAddr
	if dnsAddr == "" {
		e.dns = startDNS(t)
		dnsAddr = e.dns.Addr
	}
	caHTTPPort := e.httpPort
	if o.caHTTPPort != 0 {
		caHTTPPort = o.caHTTPPort
	}
	caOpts := rig.CAOptions{HTTPPort: caHTTPPort, TLSPort: e.httpsPort, DNSAddr: dnsAddr, AuthzReuse: o.authzReuse,
		CertValidity: o.certValidity}
	if o.tuneCA != nil {
		o.tuneCA(&caOpts)
	}
	e.ca = startCA(t, caOpts)
	e.askURL = startAsk(t, func(name string) bool {
		e.mu.Lock()
		defer e.mu.Unlock()
		return !e.denied[name]
	})
	return e
}

// startDNS starts a DNS server answering 127.0.0.1, closed at tb's end.
func startDNS(tb testing.TB) *rig.DNS {
	tb.Helper()
	d, err := rig.StartDNS()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = d.Close() })
	return d
}

// startCA starts Pebble in process (its files in a temporary directory of
// tb), closed at tb's end.
func startCA(tb testing.TB, o rig.CAOptions) *rig.CA {
	tb.Helper()
	if o.Dir == "" {
		o.Dir = tb.TempDir()
	}
	ca, err := rig.StartCA(o)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = ca.Close() })
	return ca
}

// startAsk starts an on-demand ask endpoint (nil allow: every name) and
// returns its URL; it stops at tb's end.
func startAsk(tb testing.TB, allow func(name string) bool) string {
	tb.Helper()
	url, stop, err := rig.StartAsk(allow)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(stop)
	return url
}

// issuer returns a certflow issuer object for this env's CA, with the
// self-check pointed at the test DNS and Caddy's ports, plus extra fields.
func (e *env) issuer(extra map[string]any) map[string]any {
	iss := map[string]any{
		"module":                  "certflow",
		"ca":                      e.ca.DirectoryURL,
		"email":                   "ops@example.com",
		"trusted_roots_pem_files": []string{e.ca.ServerRootsFile},
		"self_check": map[string]any{
			"resolvers":    []string{e.dns.Addr},
			"http_port":    e.httpPort,
			"tlsalpn_port": e.httpsPort,
			"interval":     "100ms",
		},
	}
	for k, v := range extra {
		if m, ok := v.(map[string]any); ok {
			if base, ok := iss[k].(map[string]any); ok {
				for mk, mv := range m {
					base[mk] = mv
				}
				continue
			}
		}
		iss[k] = v
	}
	return iss
}

func (e *env) config(issuer map[string]any) rig.CaddyConfig {
	return rig.CaddyConfig{
		HTTPPort:    e.httpPort,
		HTTPSPort:   e.httpsPort,
		StorageRoot: e.storage,
		AskURL:      e.askURL,
		Issuer:      issuer,
		LogLevel:    "ERROR",
	}
}

func (e *env) run(cfg rig.CaddyConfig) {
	e.t.Helper()
	b, err := cfg.JSON()
	if err != nil {
		e.t.Fatal(err)
	}
	if err := rig.RunCaddy(b); err != nil {
		e.t.Fatalf("starting Caddy: %v", err)
	}
	if !e.running {
		e.running = true
		e.t.Cleanup(func() { _ = rig.StopCaddy() })
	}
}

func (e *env) deny(name string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.denied[name] = true
}

func (e *env) addr() string { return fmt.Sprintf("127.0.0.1:%d", e.httpsPort) }

// handshake connects with SNI name and verifies the chain against Pebble.
func (e *env) handshake(name string) (*x509.Certificate, error) {
	state, err := rig.Handshake(e.addr(), name, e.ca.IssuerRoots(), 30*time.Second)
	if err != nil {
		return nil, err
	}
	return state.PeerCertificates[0], nil
}

func (e *env) mustHandshake(name string) *x509.Certificate {
	e.t.Helper()
	start := time.Now()
	leaf, err := e.handshake(name)
	if err != nil {
		e.t.Fatalf("handshake for %s: %v", name, err)
	}
	if !contains(leaf.DNSNames, name) {
		e.t.Fatalf("handshake for %s got a certificate for %v", name, leaf.DNSNames)
	}
	e.t.Logf("handshake for %s: issued and verified in %s", name, time.Since(start).Round(time.Millisecond))
	return leaf
}

// resource is a stored certflow resource, decoded loosely.
type resource map[string]any

func (r resource) str(k string) string { s, _ := r[k].(string); return s }

// resources returns the stored resources of a kind for a name, oldest first.
func (e *env) resources(kind, name string) []resource {
	e.t.Helper()
	return loadResources(e.t, e.storage, kind, name)
}

// tokenFiles lists the challenge token files left in storage.
func (e *env) tokenFiles() []string {
	matches, _ := filepath.Glob(filepath.Join(e.storage, "acme", "*", "challenge_tokens", "*.json"))
	return matches
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func dump(v any) string {
	b, _ := json.MarshalIndent(v, "", "  ")
	return string(b)
}

// currentScheduler is the process's challenge scheduler while Caddy runs
// with a certflow issuer, else an idle one (nothing live or queued).
func currentScheduler() *issuer.Scheduler {
	if s := certflow.Scheduler(); s != nil {
		return s
	}
	return idleScheduler
}

var idleScheduler = issuer.NewScheduler(issuer.SchedulerLimits{})

// runJSON runs Caddy in this process with a config built by hand.
func (e *env) runJSON(cfg []byte) {
	e.t.Helper()
	if err := rig.RunCaddy(cfg); err != nil {
		e.t.Fatalf("starting Caddy: %v", err)
	}
	if !e.running {
		e.running = true
		e.t.Cleanup(func() { _ = rig.StopCaddy() })
	}
}
