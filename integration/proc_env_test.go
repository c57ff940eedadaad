package integration

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/certflow/certflow/integration/rig"
)

// Process tests run the project's own Caddy binary (./cmd/caddy, certflow
// compiled in) as child processes, with an in-process Pebble, DNS and ask
// endpoint. The binary is built once per test binary, on first use, into a
// temporary directory that TestMain removes.

var (
	caddyBinOnce sync.Once
	caddyBinDir  string
	caddyBinPath string
	caddyBinErr  error
)

// caddyBinary returns the path of the project's Caddy binary, building it
// on the first call.
func caddyBinary(t *testing.T) string {
	t.Helper()
	caddyBinOnce.Do(func() {
		caddyBinDir, caddyBinErr = os.MkdirTemp("", "certflow-caddy-bin-")
		if caddyBinErr != nil {
			return
		}
		caddyBinPath = filepath.Join(caddyBinDir, "caddy")
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		start := time.Now()
		caddyBinErr = rig.BuildCaddy(ctx, caddyBinPath)
		t.Logf("built %s in %s", rig.CaddyPackage, time.Since(start).Round(time.Millisecond))
	})
	if caddyBinErr != nil {
		t.Fatalf("building Caddy: %v", caddyBinErr)
	}
	return caddyBinPath
}

// node is one Caddy process of a procEnv: its ports, its directory and the
// process currently running (nil when not running).
type node struct {
	name      string
	httpPort  int
	httpsPort int
	dir       string
	starts    int
	proc      *rig.Process
	// admin is the node's admin endpoint (host:port), "" when it has none.
	admin string
}

func (n *node) addr() string { return fmt.Sprintf("127.0.0.1:%d", n.httpsPort) }

// procEnv is the world of a process test: DNS, Pebble, an ask endpoint and
// one file storage shared by every node (and every restart of a node).
type procEnv struct {
	t       *testing.T
	binary  string
	dns     *rig.DNS
	ca      *rig.CA
	askURL  string
	storage string
	nodes   map[string]*node
	// validator is the node whose ports Pebble's validator connects to,
	// and the ports every node's self-check uses.
	validator *node
}

type procEnvOptions struct {
	nodes      []string // node names; the last one is the one the CA validates through
	authzReuse int
	// admin gives every node an admin endpoint on a free port.
	admin bool
}

func newProcEnv(t *testing.T, o procEnvOptions) *procEnv {
	t.Helper()
	pe := &procEnv{t: t, binary: caddyBinary(t), storage: t.TempDir(), nodes: map[string]*node{}}
	for _, name := range o.nodes {
		n := &node{name: name, dir: t.TempDir()}
		var err error
		if n.httpPort, err = rig.FreePort(); err != nil {
			t.Fatal(err)
		}
		if n.httpsPort, err = rig.FreePort(); err != nil {
			t.Fatal(err)
		}
		if o.admin {
			port, err := rig.FreePort()
			if err != nil {
				t.Fatal(err)
			}
			n.admin = fmt.Sprintf("127.0.0.1:%d", port)
		}
		pe.nodes[name] = n
		pe.validator = n
	}
	pe.dns = startDNS(t)
	pe.ca = startCA(t, rig.CAOptions{
		HTTPPort: pe.validator.httpPort, TLSPort: pe.validator.httpsPort,
		DNSAddr: pe.dns.Addr, AuthzReuse: o.authzReuse,
	})
	pe.askURL = startAsk(t, nil)
	// registered after the CA and DNS, so it runs before they close
	t.Cleanup(func() {
		for _, n := range pe.nodes {
			stopNode(t, n)
		}
	})
	return pe
}

// stopNode stops the node's Caddy process if it is running.
func stopNode(t *testing.T, n *node) {
	if n.proc != nil {
		if err := n.proc.Stop(5 * time.Second); err != nil {
			t.Logf("stopping node %s: %v", n.name, err)
		}
	}
}

// in returns a view of pe for subtest t (same nodes, CA and storage), so
// that its helpers fail t, never a parent test, from t's goroutine.
func (pe *procEnv) in(t *testing.T) *procEnv {
	c := *pe
	c.t = t
	return &c
}

// issuer is the certflow issuer object every node uses: the self-check goes
// through the test DNS to the validator node's ports, as Pebble does.
func (pe *procEnv) issuer() map[string]any {
	return nodeIssuer(pe.ca, pe.dns, pe.validator.httpPort, pe.validator.httpsPort)
}

// nodeIssuer is the certflow issuer of a Caddy process in a multi-process
// test: HTTP-01 only, the self-check resolving through the test DNS and
// connecting to the given ports (where the CA's validation goes too).
func nodeIssuer(ca *rig.CA, dns *rig.DNS, httpPort, httpsPort int) map[string]any {
	return map[string]any{
		"module":                  "certflow",
		"ca":                      ca.DirectoryURL,
		"email":                   "ops@example.com",
		"trusted_roots_pem_files": []string{ca.ServerRootsFile},
		"challenges":              map[string]any{"tls-alpn": map[string]any{"disabled": true}},
		"self_check": map[string]any{
			"resolvers":       []string{dns.Addr},
			"http_port":       httpPort,
			"tlsalpn_port":    httpsPort,
			"interval":        "100ms",
			"attempt_timeout": "1s",
			"timeout":         "30s",
		},
	}
}

// start starts (or restarts) node name on the shared storage and waits until
// it serves.
func (pe *procEnv) start(name string) *rig.Process {
	t := pe.t
	t.Helper()
	n := pe.nodes[name]
	if n.proc != nil {
		select {
		case <-n.proc.Exited():
		default:
			t.Fatalf("node %s is still running (pid %d)", name, n.proc.PID)
		}
	}
	cfg := rig.CaddyConfig{
		HTTPPort:    n.httpPort,
		HTTPSPort:   n.httpsPort,
		StorageRoot: pe.storage,
		AskURL:      pe.askURL,
		Issuer:      pe.issuer(),
		AdminListen: n.admin,
	}
	b, err := cfg.JSON()
	if err != nil {
		t.Fatal(err)
	}
	n.starts++
	cfgPath := filepath.Join(n.dir, fmt.Sprintf("caddy-%d.json", n.starts))
	if err := os.WriteFile(cfgPath, b, 0o644); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(n.dir, fmt.Sprintf("caddy-%d.log", n.starts))
	p, err := rig.StartProcess(pe.binary, cfgPath, n.dir, logPath)
	if err != nil {
		t.Fatal(err)
	}
	n.proc = p
	if err := p.WaitReady(n.addr(), 30*time.Second); err != nil {
		t.Fatalf("node %s: %v\n%s", name, err, tail(p.Log(), 40))
	}
	t.Logf("node %s started (pid %d, start %d)", name, p.PID, n.starts)
	return p
}

// kill SIGKILLs node name's process and waits until it is gone.
func (pe *procEnv) kill(name string) {
	pe.t.Helper()
	n := pe.nodes[name]
	if err := n.proc.Kill(); err != nil {
		pe.t.Fatal(err)
	}
	pe.t.Logf("node %s killed (pid %d)", name, n.proc.PID)
}

// handshake does a TLS handshake with node name for sni and verifies the
// chain against Pebble's root and the leaf for sni.
func (pe *procEnv) handshake(name, sni string, timeout time.Duration) (*x509.Certificate, error) {
	state, err := rig.Handshake(pe.nodes[name].addr(), sni, pe.ca.IssuerRoots(), timeout)
	if err != nil {
		return nil, err
	}
	leaf := state.PeerCertificates[0]
	if !contains(leaf.DNSNames, sni) {
		return nil, fmt.Errorf("handshake for %s got a certificate for %v", sni, leaf.DNSNames)
	}
	return leaf, nil
}

// resources returns the stored resources of a kind for a name, oldest first.
func (pe *procEnv) resources(kind, name string) []resource {
	pe.t.Helper()
	return loadResources(pe.t, pe.storage, kind, name)
}

// tokenFiles lists the challenge token files left in the shared storage.
func (pe *procEnv) tokenFiles() []string {
	matches, _ := filepath.Glob(filepath.Join(pe.storage, "acme", "*", "challenge_tokens", "*.json"))
	return matches
}

// caSummary renders the CA's request counts by kind, for the test log.
func caSummary(ca *rig.CA) string {
	counts := map[string]int{}
	var order []string
	for _, r := range ca.Requests() {
		if counts[r.Kind] == 0 {
			order = append(order, r.Kind)
		}
		counts[r.Kind]++
	}
	parts := make([]string, 0, len(order))
	for _, k := range order {
		parts = append(parts, fmt.Sprintf("%s=%d", k, counts[k]))
	}
	return strings.Join(parts, " ")
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// countLines counts the lines of s containing sub.
func countLines(s, sub string) int {
	n := 0
	for _, line := range strings.Split(s, "\n") {
		if strings.Contains(line, sub) {
			n++
		}
	}
	return n
}

// startOtherCaddy runs the project's Caddy binary as a second process on
// e's storage and CA (its own ports), stopped at the end of the test.
func startOtherCaddy(t *testing.T, e *env, binary string) *rig.Process {
	t.Helper()
	dir := t.TempDir()
	httpPort, err := rig.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	httpsPort, err := rig.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	cfg := rig.CaddyConfig{HTTPPort: httpPort, HTTPSPort: httpsPort, StorageRoot: e.storage, AskURL: e.askURL,
		Issuer: e.issuer(leftoverQueueSettings), LogLevel: "DEBUG"}
	b, err := cfg.JSON()
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "caddy.json")
	if err := os.WriteFile(cfgPath, b, 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := rig.StartProcess(binary, cfgPath, dir, filepath.Join(dir, "caddy.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Stop(5 * time.Second); err != nil {
			t.Logf("stopping the other Caddy: %v", err)
		}
	})
	if err := p.WaitReady(fmt.Sprintf("127.0.0.1:%d", httpsPort), 30*time.Second); err != nil {
		t.Fatalf("the other Caddy: %v\n%s", err, tail(p.Log(), 40))
	}
	return p
}
