package integration

import (
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/certflow/certflow/integration/rig"
)

// Crash points of TestCrashResume.
const (
	crashAfterOrder     = "order"     // the order exists at the CA and in storage
	crashAfterPresented = "presented" // the challenge's token is in storage
	crashAfterAccepted  = "accepted"  // the CA was asked to validate
	crashInFinalize     = "finalize"  // the finalize request is on its way
)

// servedKeyAuth is what certmagic logs (at INFO) when a Caddy answers an
// HTTP-01 challenge.
const servedKeyAuth = "served key authentication"

// TestCrashResume runs the project's Caddy binary as a separate process
// with an on-demand catch-all certflow policy and file storage, SIGKILLs it
// at one point of the workflow, restarts it on the same storage and
// handshakes again. The restarted process first waits for certmagic's
// issue_cert_<name> lock left by the killed one to go stale (about 10 s).
//
// Before finalize, the stored Order is resumed by its URL: the CA sees one
// new-order for the name, and the stored Challenge, if the killed process
// had written one (it did when its self-check failed), is finished; no
// second challenge is made or accepted. A challenge whose self-check
// passed at once is written only with its request's end: when the process
// died after the CA was asked to validate it, nothing of it is stored, and
// the resumed order finds its authorization valid. During finalize (the
// request is let through to Pebble after the process is dead, so the CA
// finalizes the order with a key that died), the order is replaced with
// its reason recorded, and the second order reuses the valid
// authorization (the CA reuses authorizations in that case): at most two
// new-orders, no second challenge. In every case the presented token is
// gone once done: the resumed request removes a token the killed process
// left for the name.
func TestCrashResume(t *testing.T) {
	for _, tc := range []struct {
		name       string
		point      string
		authzReuse int
	}{
		{"after order created", crashAfterOrder, 0},
		{"after challenge presented", crashAfterPresented, 0},
		{"after challenge accepted", crashAfterAccepted, 0},
		{"during finalize", crashInFinalize, 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			testCrashAt(t, tc.point, tc.authzReuse)
			t.Logf("scenario took %s", time.Since(start).Round(time.Millisecond))
		})
	}
}

func testCrashAt(t *testing.T, point string, authzReuse int) {
	pe := newProcEnv(t, procEnvOptions{nodes: []string{"a"}, authzReuse: authzReuse})
	name := "crash-" + point + ".test"
	p := pe.start("a")

	// killNow SIGKILLs the first process from inside a CA fault hook and
	// waits until it is gone, so the request it is answering is its last.
	var killed atomic.Bool
	killNow := func() bool {
		if !killed.CompareAndSwap(false, true) {
			return false
		}
		_ = p.SignalKill()
		select {
		case <-p.Exited():
		case <-time.After(5 * time.Second):
		}
		return true
	}
	pass := func() (int, http.Header, string, bool) { return 0, nil, "", false }
	fail500 := func() (int, http.Header, string, bool) {
		return http.StatusInternalServerError, nil, "the process died", true
	}

	switch point {
	case crashAfterOrder:
		// the first authorization read comes right after the order and the
		// name record were stored
		pe.ca.SetFault(func(r *http.Request) (int, http.Header, string, bool) {
			if rig.KindOf(r) == rig.KindAuthz && killNow() {
				return fail500()
			}
			return pass()
		})
	case crashAfterPresented:
		// the self-check cannot reach the token: the challenge stays presented
		pe.dns.SetAddrs(name, unreachable)
	case crashAfterAccepted:
		// the challenge POST goes through; on the next authorization poll
		// Pebble's validator is given time to fetch the token from the live
		// process and record its result, then the process dies and the poll
		// gets a 500
		var accepted atomic.Bool
		var servedBefore atomic.Int64
		pe.ca.SetFault(func(r *http.Request) (int, http.Header, string, bool) {
			switch rig.KindOf(r) {
			case rig.KindChall:
				if !accepted.Load() {
					servedBefore.Store(int64(countLines(p.Log(), servedKeyAuth)))
					accepted.Store(true)
				}
			case rig.KindAuthz:
				if accepted.Load() && !killed.Load() {
					deadline := time.Now().Add(5 * time.Second)
					for int64(countLines(p.Log(), servedKeyAuth)) <= servedBefore.Load() && time.Now().Before(deadline) {
						time.Sleep(20 * time.Millisecond)
					}
					// and the validator recorded its result
					for pe.ca.AuthzStatus(rig.AuthzID(r)) == "pending" && time.Now().Before(deadline) {
						time.Sleep(20 * time.Millisecond)
					}
					if killNow() {
						return fail500()
					}
				}
			}
			return pass()
		})
	case crashInFinalize:
		// the process dies as the finalize request arrives; the request is
		// then let through, so the CA finalizes the order for a dead key
		pe.ca.SetFault(func(r *http.Request) (int, http.Header, string, bool) {
			if rig.KindOf(r) == rig.KindFinalize {
				killNow()
			}
			return pass()
		})
	}

	firstDone := make(chan error, 1)
	go func() {
		_, err := pe.handshake("a", name, 30*time.Second)
		firstDone <- err
	}()

	if point == crashAfterPresented {
		waitFor(t, "the stored challenge to be presented and failing its self-check", pollMax, func() bool {
			chals := pe.resources("challenges", name)
			return len(chals) == 1 && chals[0].str("state") == "presented" && number(chals[0]["self_checks"]) >= 1
		})
		if n := len(pe.tokenFiles()); n != 1 {
			t.Fatalf("a presented challenge should have its token in storage, found %d token files", n)
		}
		killed.Store(true)
		pe.kill("a")
	} else {
		select {
		case <-p.Exited():
		case <-time.After(pollMax):
			t.Fatalf("the process was never killed at %q; CA requests: %s\n%s", point, caSummary(pe.ca), tail(p.Log(), 30))
		}
	}
	select {
	case err := <-firstDone:
		if err == nil {
			t.Fatalf("the handshake with the killed process succeeded")
		}
	case <-time.After(pollMax):
		t.Fatal("the handshake with the killed process did not end")
	}
	// a request the hook let through after the kill is logged by the rig
	// once Pebble has answered it
	if point == crashInFinalize {
		waitFor(t, "Pebble to answer the finalize request of the dead process", 5*time.Second, func() bool {
			return pe.ca.Count(rig.KindFinalize) == 1
		})
	}
	t.Logf("killed at %q; CA requests so far: %s", point, caSummary(pe.ca))

	// what the killed process left in storage
	orders := pe.resources("orders", name)
	chals := pe.resources("challenges", name)
	switch point {
	case crashAfterOrder:
		if len(orders) != 1 || orders[0].str("state") != "pending" || len(chals) != 0 {
			t.Fatalf("at the kill: want one pending order and no challenge, got orders %s challenges %s", dump(orders), dump(chals))
		}
		if rec := nameRecordOf(t, pe.storage, name); rec == nil || rec["current_order"] != orders[0].str("id") {
			t.Fatalf("at the kill: the name record does not point at the order: %s", dump(rec))
		}
	case crashAfterPresented:
		if len(chals) != 1 || chals[0].str("state") != "presented" {
			t.Fatalf("at the kill: want one presented challenge, got %s", dump(chals))
		}
	case crashAfterAccepted:
		// nothing of the challenge is written before its request ends
		// when its self-check passes at once (by design: after a crash
		// the authorization tells, and the token is in storage); the CA
		// got the challenge POST
		if len(chals) != 0 {
			t.Fatalf("at the kill: want no stored challenge, got %s", dump(chals))
		}
		if n := len(pe.tokenFiles()); n != 1 {
			t.Fatalf("at the kill: want the challenge's token in storage, found %d token files", n)
		}
		if n := pe.ca.Count(rig.KindChall); n != 1 {
			t.Fatalf("at the kill: the CA got %d challenge POSTs, want 1", n)
		}
	case crashInFinalize:
		// "processing" is not persisted (by design: after a crash the
		// order's state at the CA tells)
		if len(orders) != 1 || isFinalState(orders[0].str("state")) {
			t.Fatalf("at the kill: want one unfinished order, got %s", dump(orders))
		}
		if n := pe.ca.Count(rig.KindFinalize); n != 1 {
			t.Fatalf("at the kill: the CA got %d finalize requests, want 1", n)
		}
	}

	// restart on the same storage, with the CA and the name healthy again
	pe.ca.SetFault(nil)
	pe.dns.ResetAddrs(name)
	restarted := time.Now()
	p2 := pe.start("a")
	hsStart := time.Now()
	if _, err := pe.handshake("a", name, 60*time.Second); err != nil {
		t.Fatalf("handshake after the restart: %v\n%s", err, tail(p2.Log(), 40))
	}
	t.Logf("after the restart: issued and verified in %s (including the wait for the stale issue_cert lock)",
		time.Since(hsStart).Round(time.Millisecond))

	newOrders := pe.ca.NewOrders(name)
	t.Logf("CA requests in all: %s; new-orders for %s: %d", caSummary(pe.ca), name, newOrders)

	orders = pe.resources("orders", name)
	chals = pe.resources("challenges", name)
	reqs := pe.resources("requests", name)
	if len(reqs) == 0 || reqs[len(reqs)-1].str("state") != "ready" {
		t.Errorf("the last certificate request is not ready: %s", dump(reqs))
	}
	if n := pe.ca.Count(rig.KindChall); n != 1 {
		t.Errorf("the CA was asked to validate %d challenges, want 1 (no second challenge)", n)
	}
	// the challenge is stored when the killed process wrote it (its
	// self-check failed, or the order was resumed before it was made);
	// one validated by the CA inside the killed run is not: its record
	// would have been written with the request's end
	wantStored := 0
	if point == crashAfterOrder || point == crashAfterPresented {
		wantStored = 1
	}
	if len(chals) != wantStored {
		t.Errorf("want %d stored challenge(s) for %s, got %d: %s", wantStored, name, len(chals), dump(chals))
	} else if wantStored == 1 {
		if ch := chals[0]; ch.str("state") != "valid" || ch["cleaned_up"] != true {
			t.Errorf("the stored challenge should be valid and cleaned up once the name is issued: %s", dump(ch))
		}
	}

	if point == crashInFinalize {
		if newOrders > 2 {
			t.Errorf("the CA saw %d new-orders for %s, want at most 2", newOrders, name)
		}
		if len(orders) != 2 {
			t.Fatalf("want the replaced order and a new one, got %s", dump(orders))
		}
		old, cur := orders[0], orders[1]
		if old.str("state") != "errored" || !strings.Contains(old.str("reason"), "replaced by a new order") {
			t.Errorf("the replaced order should be errored with its reason recorded: %s", dump(old))
		}
		t.Logf("replaced order: %s: %q", old.str("state"), old.str("reason"))
		if cur.str("state") != "valid" || number(cur["reused_authorizations"]) != 1 || cur["challenges"] != nil {
			t.Errorf("the new order should be valid, reusing the authorization without a challenge: %s", dump(cur))
		}
	} else {
		if newOrders != 1 {
			t.Errorf("the CA saw %d new-orders for %s, want exactly 1 (the stored order resumed)", newOrders, name)
		}
		if len(orders) != 1 || orders[0].str("state") != "valid" {
			t.Errorf("want the one order resumed and valid: %s", dump(orders))
		}
	}

	// start-up clean-up runs 3 s after the start; the resumed workflow cleans
	// up what it presents itself
	wait := time.Until(restarted.Add(8 * time.Second))
	if wait < 2*time.Second {
		wait = 2 * time.Second
	}
	deadline := time.Now().Add(wait)
	for len(pe.tokenFiles()) > 0 && time.Now().Before(deadline) {
		time.Sleep(pollEvery)
	}
	if left := pe.tokenFiles(); len(left) != 0 {
		t.Errorf("challenge token files left in storage %s after the restart: %v; challenges: %s",
			time.Since(restarted).Round(time.Millisecond), left, dump(pe.resources("challenges", name)))
	}
}

// isFinalState reports whether a stored order or challenge state is final.
func isFinalState(state string) bool {
	return state == "valid" || state == "invalid" || state == "errored"
}
