package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/certflow/certflow/integration/rig"
)

// TestSitesPerPolicyChallengeTypes: two sites use certflow on the same CA
// with different options, policy A (a.test) HTTP-01 only and policy B
// (b.test) TLS-ALPN-01 only, next to a catch-all with the defaults; each
// name's challenge uses its own policy's type, so one site's settings never
// leak into another's.
func TestSitesPerPolicyChallengeTypes(t *testing.T) {
	schedulerIdle(t)
	e := newEnv(t, envOptions{})
	httpOnly := e.issuer(map[string]any{"challenges": map[string]any{"tls-alpn": map[string]any{"disabled": true}}})
	alpnOnly := e.issuer(map[string]any{"challenges": map[string]any{"http": map[string]any{"disabled": true}}})
	cfg := e.config(e.issuer(nil))
	cfg.Policies = []rig.Policy{
		{Subjects: []string{"a.test"}, Issuers: []map[string]any{httpOnly}, OnDemand: true},
		{Subjects: []string{"b.test"}, Issuers: []map[string]any{alpnOnly}, OnDemand: true},
	}
	e.run(cfg)

	for _, tt := range []struct{ name, want string }{
		{"b.test", "tls-alpn-01"},
		{"a.test", "http-01"},
		{"c.test", "http-01"}, // the catch-all's defaults prefer HTTP-01
	} {
		e.mustHandshake(tt.name)
		ch := e.onlyChallenge(tt.name)
		if ch.str("type") != tt.want || ch.str("state") != "valid" {
			t.Errorf("%s: want a valid %s challenge: %s", tt.name, tt.want, dump(ch))
		}
	}
}

// TestSitesTLSALPNSelfCheckRefused: when nothing answers the TLS-ALPN-01
// self-check (its port has no listener), the handshake fails within the
// self-check timeout, the stored challenge is errored with a reason naming
// the self-check and the refused connection, the token is cleaned up, and
// the CA is never asked to validate (no challenge POST).
func TestSitesTLSALPNSelfCheckRefused(t *testing.T) {
	schedulerIdle(t)
	e := newEnv(t, envOptions{})
	deadPort, err := rig.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	const name = "refused.test"
	e.run(e.config(e.issuer(map[string]any{
		"challenges": map[string]any{"http": map[string]any{"disabled": true}},
		// two attempts, 600ms apart, both refused at once; the 1s timeout
		// falls in the wait after the second, never inside an attempt
		// (TestSitesSelfCheckTimeoutKeepsReason covers that case)
		"self_check": map[string]any{"tlsalpn_port": deadPort, "timeout": "1s", "interval": "600ms"},
	})))

	start := time.Now()
	if _, err := e.handshake(name); err == nil {
		t.Fatalf("handshake for %s succeeded, but its self-check cannot pass", name)
	}
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("handshake took %s to fail with a 1s self-check timeout", took)
	}

	ch := e.onlyChallenge(name)
	reason := ch.str("reason")
	if ch.str("state") != "errored" || ch.str("type") != "tls-alpn-01" {
		t.Errorf("want an errored tls-alpn-01 challenge: %s", dump(ch))
	}
	for _, want := range []string{"self-check", "connection refused", fmt.Sprintf(":%d", deadPort)} {
		if !strings.Contains(reason, want) {
			t.Errorf("challenge reason %q does not mention %q", reason, want)
		}
	}
	if number(ch["self_checks"]) < 2 {
		t.Errorf("want the failed self-check retried on its interval (2 attempts): %s", dump(ch))
	}
	times, _ := ch["times"].(map[string]any)
	if _, ok := times["accepted"]; ok {
		t.Errorf("challenge was accepted although its self-check failed: %s", dump(ch))
	}
	if ch["cleaned_up"] != true {
		t.Errorf("challenge not cleaned up: %s", dump(ch))
	}
	if n := e.ca.Count(rig.KindChall); n != 0 {
		t.Errorf("CA received %d challenge POSTs, want 0", n)
	}
	reqs := e.resources("requests", name)
	if len(reqs) != 1 || reqs[0].str("state") != "failed" || !strings.Contains(reqs[0].str("reason"), "self-check") {
		t.Errorf("want one failed certificate request naming the self-check: %s", dump(reqs))
	}
	if left := e.tokenFiles(); len(left) != 0 {
		t.Errorf("challenge tokens left in storage: %v", left)
	}
}

// TestSitesSelfCheckTimeoutKeepsReason: when the self-check times out while
// an attempt is still running, the challenge's final reason is still the
// last real failure (the refused connection), not the error of the attempt
// the self-check's own deadline cut short. The name resolves through a slow
// (300ms) resolver, so with a 100ms interval the attempts start at about 0,
// 400 and 800ms and the third one is always in its lookup when the 1s
// timeout ends it.
func TestSitesSelfCheckTimeoutKeepsReason(t *testing.T) {
	schedulerIdle(t)
	e := newEnv(t, envOptions{})
	deadPort, err := rig.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	slow := startSlowDNS(t, 300*time.Millisecond)
	const name = "slowrefused.test"
	e.run(e.config(e.issuer(map[string]any{
		"challenges": map[string]any{"http": map[string]any{"disabled": true}},
		"self_check": map[string]any{
			"resolvers":       []string{slow},
			"tlsalpn_port":    deadPort,
			"timeout":         "1s",
			"interval":        "100ms",
			"attempt_timeout": "5s",
		},
	})))

	if _, err := e.handshake(name); err == nil {
		t.Fatalf("handshake for %s succeeded, but its self-check cannot pass", name)
	}
	ch := e.onlyChallenge(name)
	if ch.str("state") != "errored" || number(ch["self_checks"]) < 2 {
		t.Fatalf("want an errored challenge after at least 2 refused self-checks: %s", dump(ch))
	}
	if reason := ch.str("reason"); !strings.Contains(reason, "connection refused") {
		t.Errorf("final reason %q hides the real failure (connection refused) behind the attempt cut short by the self-check timeout", reason)
	}
}
