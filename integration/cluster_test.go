package integration

import (
	"sync"
	"testing"
	"time"

	"github.com/certflow/certflow/integration/rig"
)

// TestCluster runs two Caddy processes, A and B, of the project's binary
// with the same certflow config (but their own ports) on one file storage.
// Pebble's validator only reaches B (its HTTP-01 and TLS-ALPN-01 ports are
// B's), and both nodes' self-checks go to B's ports too: A never answers a
// challenge, so whatever A obtains is validated through B, which serves the
// token A presented into the shared storage.
func TestCluster(t *testing.T) {
	pe := newProcEnv(t, procEnvOptions{nodes: []string{"a", "b"}})
	a, b := pe.start("a"), pe.start("b")

	t.Run("requested on A, validated through B", func(t *testing.T) {
		pe := pe.in(t)
		const name = "via-b.test"
		start := time.Now()
		if _, err := pe.handshake("a", name, 30*time.Second); err != nil {
			t.Fatalf("handshake with A for %s: %v\nA:\n%s\nB:\n%s", name, err, tail(a.Log(), 20), tail(b.Log(), 20))
		}
		t.Logf("A issued %s in %s", name, time.Since(start).Round(time.Millisecond))
		if n := pe.ca.NewOrders(name); n != 1 {
			t.Errorf("the CA saw %d new-orders for %s, want 1", n, name)
		}
		chals := pe.resources("challenges", name)
		if len(chals) != 1 || chals[0].str("state") != "valid" || chals[0].str("type") != "http-01" {
			t.Errorf("want one valid http-01 challenge: %s", dump(chals))
		}
		// B answered: the self-check from A and the CA's validation
		if n := countLines(b.Log(), servedKeyAuth); n < 1 {
			t.Errorf("B never served the key authorization")
		}
		if n := countLines(a.Log(), servedKeyAuth); n != 0 {
			t.Errorf("A served the key authorization %d times; nothing should reach A's HTTP port", n)
		}
		if left := pe.tokenFiles(); len(left) != 0 {
			t.Errorf("token files left: %v", left)
		}
	})

	t.Run("same name on A and B at once", func(t *testing.T) {
		pe := pe.in(t)
		const name = "both.test"
		var wg sync.WaitGroup
		gate := make(chan struct{})
		serials := map[string]string{}
		errs := map[string]error{}
		var mu sync.Mutex
		start := time.Now()
		for _, n := range []string{"a", "b"} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-gate
				leaf, err := pe.handshake(n, name, 45*time.Second)
				mu.Lock()
				defer mu.Unlock()
				errs[n] = err
				if err == nil {
					serials[n] = leaf.SerialNumber.String()
				}
			}()
		}
		close(gate)
		wg.Wait()
		for _, n := range []string{"a", "b"} {
			if errs[n] != nil {
				t.Errorf("handshake with %s for %s: %v", n, name, errs[n])
			}
		}
		t.Logf("both handshakes done in %s", time.Since(start).Round(time.Millisecond))
		if t.Failed() {
			t.FailNow()
		}
		if serials["a"] != serials["b"] {
			t.Errorf("A and B serve different certificates (serials %s and %s): the name was issued twice", serials["a"], serials["b"])
		}
		if n := pe.ca.NewOrders(name); n != 1 {
			t.Errorf("the CA saw %d new-orders for %s, want exactly 1", n, name)
		}
		if n := len(pe.resources("requests", name)); n != 1 {
			t.Errorf("%d certificate requests for %s, want 1: %s", n, name, dump(pe.resources("requests", name)))
		}
	})

	t.Run("A crashes mid-challenge, B finishes its order", func(t *testing.T) {
		pe := pe.in(t)
		const name = "takeover.test"
		pe.dns.SetAddrs(name, unreachable)
		defer pe.dns.ResetAddrs(name)
		done := make(chan error, 1)
		go func() { _, err := pe.handshake("a", name, 30*time.Second); done <- err }()
		waitFor(t, "A's challenge to be presented and failing its self-check", pollMax, func() bool {
			chals := pe.resources("challenges", name)
			return len(chals) == 1 && chals[0].str("state") == "presented" && number(chals[0]["self_checks"]) >= 1
		})
		pe.kill("a")
		if err := <-done; err == nil {
			t.Fatal("the handshake with the killed node succeeded")
		}
		pe.dns.ResetAddrs(name)

		start := time.Now()
		if _, err := pe.handshake("b", name, 60*time.Second); err != nil {
			t.Fatalf("handshake with B for %s: %v\n%s", name, err, tail(b.Log(), 30))
		}
		t.Logf("B issued %s in %s (including the wait for A's stale issue_cert lock)", name, time.Since(start).Round(time.Millisecond))
		if n := pe.ca.NewOrders(name); n != 1 {
			t.Errorf("the CA saw %d new-orders for %s, want 1 (B resumes A's order)", n, name)
		}
		if n := pe.ca.Count(rig.KindChall); n == 0 {
			t.Errorf("no challenge was ever accepted")
		}
		chals := pe.resources("challenges", name)
		if len(chals) != 1 || chals[0].str("state") != "valid" || chals[0]["cleaned_up"] != true {
			t.Errorf("want A's one challenge finished by B, valid and cleaned up: %s", dump(chals))
		}
		if left := pe.tokenFiles(); len(left) != 0 {
			t.Errorf("token files left: %v", left)
		}
	})
	t.Logf("CA requests in all: %s", caSummary(pe.ca))
}
