package integration

import (
	"testing"

	"github.com/certflow/certflow/integration/rig"
)

// TestClosedPort80IssuesOverTLSALPN: a site whose HTTP-01 port is closed,
// both for the CA and for the self-check (a load balancer forwarding only
// 443), gets its certificate on demand in one attempt: HTTP-01's
// self-check keeps failing, so TLS-ALPN-01 is presented and checked
// instead, and that is the type the CA is asked to validate. No failed
// validation reaches the CA.
func TestClosedPort80IssuesOverTLSALPN(t *testing.T) {
	schedulerIdle(t)
	closed, err := rig.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, envOptions{caHTTPPort: closed})
	e.run(e.config(e.issuer(map[string]any{"self_check": map[string]any{"http_port": closed}})))
	const name = "port80-closed.test"
	e.mustHandshake(name)

	reqs := e.resources("requests", name)
	if len(reqs) != 1 || reqs[0].str("state") != "ready" {
		t.Fatalf("requests: %s", dump(reqs))
	}
	ch := e.onlyChallenge(name)
	if ch.str("type") != "tls-alpn-01" || ch.str("state") != "valid" {
		t.Fatalf("challenge: %s", dump(ch))
	}
	failures, _ := ch["self_check_failures"].(map[string]any)
	if _, ok := failures["http-01"]; !ok {
		t.Errorf("the challenge does not record HTTP-01's failed self-check: %s", dump(ch))
	}
	if n := e.ca.Count(rig.KindChall); n != 1 {
		t.Errorf("the CA was asked to validate %d challenges, want 1 (TLS-ALPN-01 only)", n)
	}
	if n := e.ca.NewOrders(name); n != 1 {
		t.Errorf("the CA saw %d new-orders, want 1", n)
	}
}

// TestAdvisorySelfCheckAsksTheCAAnyway: with self_check advisory, a server
// that cannot reach itself (every type's self-check fails: both check
// ports are closed, though the CA reaches Caddy) still gets its
// certificate: after one round of turns the first type is presented again
// and the CA is asked; the failed self-checks stay recorded.
func TestAdvisorySelfCheckAsksTheCAAnyway(t *testing.T) {
	schedulerIdle(t)
	closedHTTP, err := rig.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	closedTLS, err := rig.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, envOptions{})
	e.run(e.config(e.issuer(map[string]any{"self_check": map[string]any{
		"http_port": closedHTTP, "tlsalpn_port": closedTLS, "advisory": true,
	}})))
	const name = "no-hairpin.test"
	e.mustHandshake(name)
	ch := e.onlyChallenge(name)
	if ch.str("type") != "http-01" || ch.str("state") != "valid" {
		t.Fatalf("challenge: %s", dump(ch))
	}
	failures, _ := ch["self_check_failures"].(map[string]any)
	if len(failures) != 2 {
		t.Errorf("the challenge should record both types' failed self-checks: %s", dump(ch))
	}
	if n := e.ca.Count(rig.KindChall); n != 1 {
		t.Errorf("the CA was asked to validate %d challenges, want 1", n)
	}
}
