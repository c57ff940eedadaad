package integration

import (
	"net"
	"testing"
	"time"

	"github.com/certflow/certflow/integration/rig"
)

// IP address certificates (RFC 8738), on demand: a client that connects to
// an IP address sends no SNI, Caddy takes the address it was reached on as
// the name, and certflow orders a certificate for that IP identifier.

// TestIPCertificateOnDemand: a handshake to 127.0.0.1 without SNI waits
// while certflow obtains a certificate for the IP address, over HTTP-01
// only and over TLS-ALPN-01 only (the CA's validator then sends the
// reverse-DNS name as SNI, RFC 8738 §6); the certificate names the address
// and verifies for it, and the stored resources show an IP identifier.
func TestIPCertificateOnDemand(t *testing.T) {
	const ip = "127.0.0.1"
	for _, tc := range []struct {
		name       string
		challenges map[string]any
		wantType   string
	}{
		{"http-01", map[string]any{"tls-alpn": map[string]any{"disabled": true}}, "http-01"},
		{"tls-alpn-01", map[string]any{"http": map[string]any{"disabled": true}}, "tls-alpn-01"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			schedulerIdle(t)
			e := newEnv(t, envOptions{})
			e.run(e.config(e.issuer(map[string]any{"challenges": tc.challenges})))

			start := time.Now()
			// Go's client sends no SNI for an IP address, and verifies the
			// certificate against the address
			state, err := rig.Handshake(e.addr(), ip, e.ca.IssuerRoots(), 30*time.Second)
			if err != nil {
				t.Fatalf("handshake to %s without SNI: %v", ip, err)
			}
			leaf := state.PeerCertificates[0]
			if len(leaf.IPAddresses) != 1 || !leaf.IPAddresses[0].Equal(net.ParseIP(ip)) || len(leaf.DNSNames) != 0 {
				t.Fatalf("certificate for IPs %v and names %v, want exactly %s", leaf.IPAddresses, leaf.DNSNames, ip)
			}
			t.Logf("certificate for %s issued over %s in %s", ip, tc.wantType, time.Since(start).Round(time.Millisecond))

			reqs := e.resources("requests", ip)
			if len(reqs) != 1 || reqs[0].str("state") != "ready" {
				t.Fatalf("certificate requests: %s", dump(reqs))
			}
			ch := e.onlyChallenge(ip)
			if ch.str("state") != "valid" || ch.str("type") != tc.wantType || ch["cleaned_up"] != true {
				t.Fatalf("challenge: %s", dump(ch))
			}
			if n := e.ca.NewOrders(ip); n != 1 {
				t.Errorf("the CA saw %d new orders for %s, want 1", n, ip)
			}
			if left := e.tokenFiles(); len(left) != 0 {
				t.Errorf("challenge tokens left in storage: %v", left)
			}
			// the next handshake is served from the cache
			if _, err := rig.Handshake(e.addr(), ip, e.ca.IssuerRoots(), 5*time.Second); err != nil {
				t.Fatalf("second handshake: %v", err)
			}
			if n := e.ca.NewOrders(ip); n != 1 {
				t.Errorf("after a second handshake the CA saw %d new orders, want 1", n)
			}
		})
	}
}

// TestIPCertificateManaged: an IP address managed by Caddy (an ip site: a
// policy with the address as its subject, obtained at start) is issued by
// certflow over HTTP-01 without any handshake waiting, and then served.
func TestIPCertificateManaged(t *testing.T) {
	const ip = "127.0.0.1"
	schedulerIdle(t)
	e := newEnv(t, envOptions{})
	iss := e.issuer(map[string]any{"challenges": map[string]any{"tls-alpn": map[string]any{"disabled": true}}})
	cfg := e.config(iss)
	cfg.Policies = []rig.Policy{{Subjects: []string{ip}, Issuers: []map[string]any{iss}}}
	cfg.Automate = []string{ip}
	// Caddy readies its local CA for an internal name it manages; it must
	// not install that CA's root into this machine's trust store
	cfg.KeepLocalCAOutOfSystemTrust = true
	start := time.Now()
	e.run(cfg)

	waitFor(t, "certmagic to store the certificate of "+ip, pollMax, func() bool {
		return fileExists(e.certPath(ip))
	})
	reqs := e.resources("requests", ip)
	if len(reqs) != 1 || reqs[0].str("state") != "ready" || reqs[0]["on_demand"] == true {
		t.Fatalf("want one managed, ready certificate request: %s", dump(reqs))
	}
	t.Logf("certificate for %s stored %s after start", ip, time.Since(start).Round(time.Millisecond))
	if ch := e.onlyChallenge(ip); ch.str("type") != "http-01" || ch.str("state") != "valid" {
		t.Fatalf("challenge: %s", dump(ch))
	}
	state, err := rig.Handshake(e.addr(), ip, e.ca.IssuerRoots(), 10*time.Second)
	if err != nil {
		t.Fatalf("handshake to %s: %v", ip, err)
	}
	if leaf := state.PeerCertificates[0]; len(leaf.IPAddresses) != 1 || !leaf.IPAddresses[0].Equal(net.ParseIP(ip)) {
		t.Fatalf("served a certificate for %v", leaf.IPAddresses)
	}
	if n := e.ca.NewOrders(ip); n != 1 {
		t.Errorf("the CA saw %d new orders for %s, want 1", n, ip)
	}
}

// TestIPCertificateRefusedForPublicCA: as the stock acme issuer, certflow
// refuses up front, without a request to the CA and without a resource, a
// loopback address when the CA is a well-known public one (here Let's
// Encrypt's directory, never contacted).
func TestIPCertificateRefusedForPublicCA(t *testing.T) {
	schedulerIdle(t)
	e := newEnv(t, envOptions{})
	e.run(e.config(e.issuer(map[string]any{"ca": "https://acme-v02.api.letsencrypt.org/directory"})))

	start := time.Now()
	if _, err := rig.Handshake(e.addr(), "127.0.0.1", e.ca.IssuerRoots(), 30*time.Second); err == nil {
		t.Fatal("handshake to 127.0.0.1 succeeded; want it refused")
	}
	// certmagic makes one attempt and gives up: the refusal is final
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("the refusal took %s: certmagic retried it", took)
	}
	if reqs := e.resources("requests", "127.0.0.1"); len(reqs) != 0 {
		t.Errorf("a refused name got certificate requests: %s", dump(reqs))
	}
	if n := len(e.ca.Requests()); n != 0 {
		t.Errorf("the test CA saw %d requests", n)
	}
}
