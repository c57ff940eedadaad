package integration

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/certflow/certflow/integration/rig"
)

// TestAuthorizationReuse: with the CA reusing valid authorizations, a new
// order for a name already authorized gets no Challenge at all.
func TestAuthorizationReuse(t *testing.T) {
	e := newEnv(t, envOptions{authzReuse: 100})
	cfg := e.config(e.issuer(nil))
	e.run(cfg)
	const name = "reuse.test"
	e.mustHandshake(name)
	if n := len(e.resources("challenges", name)); n != 1 {
		t.Fatalf("first issuance: %d challenges, want 1", n)
	}

	// forget the certificate so the next handshake orders again
	if err := os.RemoveAll(filepath.Join(e.storage, "certificates")); err != nil {
		t.Fatal(err)
	}
	_ = rig.StopCaddy()
	e.run(cfg)
	e.mustHandshake(name)

	orders := e.resources("orders", name)
	if len(orders) != 2 {
		t.Fatalf("orders: %s", dump(orders))
	}
	second := orders[1]
	if second.str("state") != "valid" || second["reused_authorizations"] != float64(1) || second["challenges"] != nil {
		t.Fatalf("second order should reuse the authorization and need no challenge: %s", dump(second))
	}
	if n := len(e.resources("challenges", name)); n != 1 {
		t.Fatalf("after reuse: %d challenges, want still 1", n)
	}
	if n := e.ca.Count(rig.KindChall); n != 1 {
		t.Fatalf("the CA was asked to validate %d challenges, want 1", n)
	}
}

// TestSelfCheckHoldsUntilReachable: a token the self-check cannot reach
// keeps the challenge presented and unaccepted, with the reason recorded,
// until it becomes reachable; then the certificate is issued.
func TestSelfCheckHoldsUntilReachable(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.run(e.config(e.issuer(map[string]any{
		"challenges": map[string]any{"tls-alpn": map[string]any{"disabled": true}},
		"self_check": map[string]any{"interval": "50ms", "attempt_timeout": "1s"},
	})))
	const name = "unreachable.test"
	e.dns.SetAddrs(name, netip.MustParseAddr("127.0.0.2"))

	done := make(chan error, 1)
	go func() { _, err := e.handshake(name); done <- err }()

	// wait until the stored challenge has failed its self-check a few times
	var ch resource
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if chals := e.resources("challenges", name); len(chals) == 1 && chals[0]["self_checks"] != nil && chals[0]["self_checks"].(float64) >= 3 {
			ch = chals[0]
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if ch == nil {
		t.Fatalf("challenge never recorded failed self-checks: %s", dump(e.resources("challenges", name)))
	}
	if ch.str("state") != "presented" || !strings.Contains(ch.str("reason"), "self-check failed") || !strings.Contains(ch.str("reason"), "127.0.0.2") {
		t.Fatalf("challenge should be presented with the self-check's reason: %s", dump(ch))
	}
	if n := e.ca.Count(rig.KindChall); n != 0 {
		t.Fatalf("the challenge was accepted (%d POSTs) before the self-check passed", n)
	}

	e.dns.ResetAddrs(name)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("handshake after the token became reachable: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("handshake did not finish after the token became reachable")
	}
	chals := e.resources("challenges", name)
	if len(chals) != 1 || chals[0].str("state") != "valid" {
		t.Fatalf("challenge: %s", dump(chals))
	}
}

// TestCARefusalBacksOff: a name the CA refuses fails fast with the CA's own
// reason, and a handshake within the backoff creates no new order.
func TestCARefusalBacksOff(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.run(e.config(e.issuer(nil)))
	const name = "blocked.test"
	if err := e.ca.BlockDomain(name); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	if _, err := e.handshake(name); err == nil {
		t.Fatal("handshake for a name the CA refuses succeeded")
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("refusal took %s; it should fail fast", took)
	}
	reqs := e.resources("requests", name)
	if len(reqs) != 1 || reqs[0].str("state") != "failed" {
		t.Fatalf("requests: %s", dump(reqs))
	}
	reason := reqs[0].str("reason")
	if !strings.Contains(strings.ToLower(reason), "blocked") && !strings.Contains(reason, "policy") {
		t.Fatalf("the reason should carry the CA's detail, got %q", reason)
	}
	if reqs[0].str("next_attempt") == "" {
		t.Fatalf("failed request has no next attempt time: %s", dump(reqs[0]))
	}
	if n := e.ca.NewOrders(name); n != 1 {
		t.Fatalf("CA saw %d new orders, want 1", n)
	}

	for range 3 {
		if _, err := e.handshake(name); err == nil {
			t.Fatal("handshake within the backoff succeeded")
		}
	}
	if n := e.ca.NewOrders(name); n != 1 {
		t.Fatalf("handshakes within the backoff made %d new orders, want 1", n)
	}
	if n := len(e.resources("requests", name)); n != 1 {
		t.Fatalf("handshakes within the backoff made %d certificate requests, want 1", n)
	}
	// the rest of the CA keeps working
	e.mustHandshake("fine.test")
}

// TestStockAccountIsReused: an account the stock acme issuer registered for
// the same CA and email is used by certflow; no second account is made.
func TestStockAccountIsReused(t *testing.T) {
	e := newEnv(t, envOptions{})
	stock := map[string]any{
		"module":                  "acme",
		"ca":                      e.ca.DirectoryURL,
		"email":                   "ops@example.com",
		"trusted_roots_pem_files": []string{e.ca.ServerRootsFile},
	}
	e.run(e.config(stock))
	e.mustHandshake("stock.test")
	if n := e.ca.Count(rig.KindNewAccount); n != 1 {
		t.Fatalf("stock issuer made %d new-account requests, want 1", n)
	}

	// a reload: wait until the new config serves the name already issued
	e.reload(e.config(e.issuer(nil)), "stock.test")
	e.mustHandshake("certflow.test")
	if n := e.ca.Count(rig.KindNewAccount); n != 1 {
		t.Fatalf("certflow registered another account (%d new-account requests in all)", n)
	}
	// the certificate under the issuer key certflow shares with the stock
	// issuer; certflow's own resources under certflow/certflow-<that key>
	if _, err := os.Stat(filepath.Join(e.storage, "certificates", certmagicSafe(e.ca.DirectoryURL), "certflow.test", "certflow.test.crt")); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			t.Fatalf("certflow's certificate is not stored under the issuer key it shares with the stock issuer")
		}
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(e.storage, "certflow", "certflow-"+certmagicSafe(e.ca.DirectoryURL), "names", "certflow.test.json")); err != nil {
		t.Fatalf("certflow's record of the name: %v", err)
	}
}

// certmagicSafe is the issuer key part of a directory URL as stored on disk.
func certmagicSafe(dir string) string {
	s := strings.TrimPrefix(dir, "https://")
	s = strings.ReplaceAll(s, "/", "-")
	s = strings.ReplaceAll(s, ":", "-")
	return strings.ToLower(s)
}
