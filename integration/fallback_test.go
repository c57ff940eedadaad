package integration

import (
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/certflow/certflow/integration/rig"
)

// TestFallbackIssuerServesWhatCertflowHoldsBack: a policy with the issuers
// certflow (CA 1) then acme (CA 2). While certflow's circuit to CA 1 is
// open, or a name's registered domain is held at CA 1, certflow refuses an
// on-demand request in PreCheck, before any request to CA 1, and the
// handshake is served by the fallback issuer at once.
func TestFallbackIssuerServesWhatCertflowHoldsBack(t *testing.T) {
	schedulerIdle(t)
	e := newEnv(t, envOptions{})
	ca2 := startCA(t, rig.CAOptions{HTTPPort: e.httpPort, TLSPort: e.httpsPort, DNSAddr: e.dns.Addr})
	rec := newCARecorder()
	e.ca.SetFault(rec.hook)
	cfg := e.config(e.issuer(nil))
	cfg.Fallbacks = []map[string]any{{
		"module":                  "acme",
		"ca":                      ca2.DirectoryURL,
		"email":                   "ops@example.com",
		"trusted_roots_pem_files": []string{ca2.ServerRootsFile},
	}}
	e.run(cfg)
	e.mustHandshake("warm-up.test") // certflow, CA 1

	fromCA2 := func(name string) time.Duration {
		t.Helper()
		start := time.Now()
		if _, err := rig.Handshake(e.addr(), name, ca2.IssuerRoots(), 30*time.Second); err != nil {
			t.Fatalf("handshake for %s, expecting the fallback's certificate from CA 2: %v", name, err)
		}
		return time.Since(start)
	}

	// CA 1 down: the first name trips the circuit (and falls back); the
	// next ones are refused by certflow's PreCheck without a CA 1 request
	var down atomic.Bool
	down.Store(true)
	rec.reset(func(string, int, *http.Request) (string, int, http.Header, string, bool) {
		if !down.Load() {
			return "", 0, nil, "", false
		}
		s, h, b, ok := problemResponse(http.StatusServiceUnavailable, "serverInternal", "certflow test: down", "")
		return "503", s, h, b, ok
	})
	fromCA2("trips-the-circuit.test")
	refused := 0
	for i := range 5 {
		name := fmt.Sprintf("during-outage-%d.test", i)
		before := len(rec.records())
		took := fromCA2(name)
		// at most the circuit's probe (a nonce and the request) when its
		// open period has ended; none while it is open
		sent := len(rec.records()) - before
		if sent == 0 {
			refused++
		}
		if sent > 2 {
			t.Errorf("%s: CA 1 received %d requests although its circuit was open", name, sent)
		}
		t.Logf("%s served by the fallback in %s (%d requests to CA 1)", name, took.Round(time.Millisecond), sent)
	}
	if refused == 0 {
		t.Error("no handshake was refused by certflow's PreCheck while the circuit was open")
	}

	// CA 1 back, but a registered domain held there: its names go to CA 2
	down.Store(false)
	rec.reset(limitNewOrders(map[string]bool{"a.held.test": true}, retryAfterOneDay, func(string) string {
		return fmt.Sprintf(detailPerDomain, "held.test")
	}))
	waitFor(t, "certflow to issue from CA 1 again (its circuit closed)", pollMax, func() bool {
		_, err := e.handshake(fmt.Sprintf("back-%d.test", time.Now().UnixNano()))
		return err == nil
	})
	fromCA2("a.held.test") // the 429 that holds held.test; certmagic falls back
	fromCA2("b.held.test")
	if n := newOrdersFor(rec.records(), "b.held.test"); n != 0 {
		t.Errorf("CA 1 received %d new-orders for a name of a held registered domain", n)
	}
}
