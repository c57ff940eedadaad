package integration

import (
	"testing"
	"time"

	"github.com/certflow/certflow/integration/rig"
)

// TestReloadChangesChallengeCap: a config reload with a changed
// max_concurrent_challenges takes effect without a restart. Under cap 1 two
// blocked names get one live challenge and one queued; after reloading with
// cap 3 (same env, same Caddy process), three blocked names are live at
// once, which the old cap forbade, and all are issued once unblocked. The
// handshake for a name issued before the reload keeps working after it.
func TestReloadChangesChallengeCap(t *testing.T) {
	schedulerIdle(t)
	e := newEnv(t, envOptions{})
	e.run(e.config(e.issuer(schedulerExtra(1))))
	sched := currentScheduler() // the same scheduler across the reload
	if got := sched.Limits().MaxLive; got != 1 {
		t.Fatalf("MaxLive = %d after running with max_concurrent_challenges 1", got)
	}
	before := []string{"before1.test", "before2.test"}
	e.block(before...)
	wait := e.handshakeAsync(before...)
	waitForDiag(t, "1 live and 1 queued challenge under cap 1", pollMax, func() bool {
		live, queued := sched.Stats()
		return live == 1 && queued == 1
	}, e.schedulerDiag(before...))
	e.unblock(before...)
	for n, r := range wait() {
		if r.err != nil {
			t.Fatalf("handshake for %s under cap 1: %v", n, r.err)
		}
	}

	e.reload(e.config(e.issuer(schedulerExtra(3))), before[0])
	if got := sched.Limits().MaxLive; got != 3 {
		t.Fatalf("MaxLive = %d after reloading with max_concurrent_challenges 3", got)
	}
	names := []string{"r1.test", "r2.test", "r3.test"}
	e.block(names...)
	mon := monitorLive(t)
	wait = e.handshakeAsync(names...)
	waitForDiag(t, "3 challenges live at once after the reload", pollMax, func() bool {
		live, _ := sched.Stats()
		return live == 3
	}, e.schedulerDiag(names...))
	e.unblock(names...)
	for _, n := range names {
		if r := wait()[n]; r.err != nil {
			t.Errorf("handshake for %s after the reload: %v", n, r.err)
		}
	}
	if got := mon.maxLive(); got > 3 {
		t.Errorf("%d challenges live at once, cap 3", got)
	}
	for _, n := range names {
		if ch := e.onlyChallenge(n); ch.str("state") != "valid" {
			t.Errorf("challenge for %s: %s", n, dump(ch))
		}
	}
}

// reload loads cfg into the running Caddy (a config reload, not a restart)
// and waits until the new servers answer: right after caddy.Load returns,
// the old servers are still shutting down and the first connection can be
// reset (seen on Linux, where Caddy binds with SO_REUSEPORT). A handshake
// for probe, a name whose certificate is cached, must succeed three times
// in a row, each within 2 s, all within 10 s.
func (e *env) reload(cfg rig.CaddyConfig, probe string) {
	e.t.Helper()
	e.run(cfg)
	ok, tries := 0, 0
	for deadline := time.Now().Add(10 * time.Second); ok < 3; tries++ {
		if time.Now().After(deadline) {
			e.t.Fatalf("after the reload, handshakes for %s kept failing (%d tries)", probe, tries)
		}
		if _, err := rig.Handshake(e.addr(), probe, e.ca.IssuerRoots(), 2*time.Second); err != nil {
			e.t.Logf("after the reload: %v", err)
			ok = 0
			time.Sleep(pollEvery)
			continue
		}
		ok++
	}
}
