package integration

import (
	"testing"
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
