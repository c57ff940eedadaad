package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/certflow/certflow/integration/rig"
)

// replacedAfterKill reports whether a stored order's reason says it was
// replaced for a cause a SIGKILL explains: the killed node finalized it
// with a key that died with it (processing or valid at the CA), or the CA's
// validation went to the dying node (invalid at the CA).
func replacedAfterKill(reason string) bool {
	for _, r := range []string{"finalized with the key of an earlier attempt", "it is valid at the CA",
		"it is processing at the CA", "it is invalid at the CA"} {
		if strings.Contains(reason, r) {
			return true
		}
	}
	return false
}

// finishedJustBeforeKill reports whether an order was finalized (valid)
// within a second before the SIGKILL: the killed node then had the chain
// but not yet the certificate stored by certmagic.
func (re *redisEnv) finishedJustBeforeKill(o resource) bool {
	if o.str("state") != "valid" || re.killedAt.IsZero() {
		return false
	}
	finalized, err := time.Parse(time.RFC3339Nano, o.str("finalized"))
	if err != nil {
		return false
	}
	return !finalized.After(re.killedAt) && re.killedAt.Sub(finalized) < time.Second
}

// checkOrdersAfterKill checks one new-order per name, where a node was
// SIGKILLed while names were in flight. A second order is explained (and
// logged, not failed) only in the two windows where the engine cannot
// resume: the killed node had finalized the order with a key that died with
// it (the order is stored as replaced for that reason: DESIGN accepts a
// second order there), or the node died between the CA's answer to
// new-order and certflow's write of the Order (the CA saw an order that was
// never stored). Any other second order fails the test.
func (re *redisEnv) checkOrdersAfterKill(names []string) map[string]bool {
	re.t.Helper()
	explained := map[string]bool{}
	var finalized, unstored []string
	for _, name := range names {
		n := re.ca.NewOrders(name)
		if n == 1 {
			continue
		}
		if n == 0 {
			re.t.Errorf("the CA saw no new-order for %s", name)
			continue
		}
		stored := re.storedOrders(name)
		switch {
		case n == 2 && len(stored) == 2 && replacedAfterKill(stored[0].str("reason")):
			finalized = append(finalized, name+" ("+stored[0].str("reason")+")")
			explained[name] = true
		case n == 2 && len(stored) == 1:
			unstored = append(unstored, name)
			explained[name] = true
		case n == 2 && len(stored) == 2 && re.finishedJustBeforeKill(stored[0]):
			// the killed node had the chain but died before certmagic
			// stored the certificate: the next attempt needs a new order
			finalized = append(finalized, name+" (valid, finalized just before the kill)")
			explained[name] = true
		default:
			re.t.Errorf("the CA saw %d new-orders for %s, want 1; stored orders: %s", n, name, dump(stored))
		}
	}
	re.t.Logf("second orders caused by the kill: %d replaced (killed node finalized it with a key that died, or the CA validated through the dying node) %v; %d created at the CA by the killed node but never stored %v",
		len(finalized), finalized, len(unstored), unstored)
	return explained
}

// TestRedisCluster: three nodes on one Redis behind balancers; 100 names,
// a node SIGKILLed mid-way, Redis restarted once.
func TestRedisCluster(t *testing.T) {
	re := newRedisEnv(t, redisEnvOptions{nodes: 3})
	re.startAll()
	const conc = 20
	all := map[string]string{} // name -> serial

	record := func(phase string, res map[string]hsResult, mustSucceed bool) (ok, failed, retried int) {
		t.Helper()
		for name, r := range res {
			if r.err != nil {
				failed++
				if mustSucceed {
					t.Errorf("%s: %s failed after %d attempt(s): %v", phase, name, r.attempts, r.err)
				}
				continue
			}
			ok++
			if r.attempts > 1 {
				retried++
			}
			all[name] = r.serial
		}
		return
	}

	// phase 1: 40 names over three nodes, Redis commands and certflow's
	// own storage calls counted
	phase1 := namesN("p1", 0, 40)
	before, callsBefore := re.commandStats(), re.storageCalls()
	start := time.Now()
	res := re.handshakeAll(phase1, conc, 1, 60*time.Second)
	took := time.Since(start)
	ok, failed, _ := record("phase 1", res, true)
	after := re.commandStats()
	// the index markers are written in the background: count them too
	callsAfter := re.storageCallsFlushed()
	total, byCmd := rig.CommandsBetween(before, after)
	t.Logf("phase 1: %d names issued, %d failed in %s over 3 nodes (concurrency %d)", ok, failed, took.Round(time.Millisecond), conc)
	if ok > 0 {
		t.Logf("Redis commands per issuance (3 nodes, INFO commandstats): %.1f — %s", float64(total)/float64(ok), topCommands(byCmd, float64(ok)))
		calls, byOp, line := storageCallsReport(callsBefore, callsAfter, float64(ok))
		t.Logf("certflow storage calls per issuance (3 nodes, %s): %.1f — %s", storageCallsMetric, calls/float64(ok), line)
		// no list per name on the handshake path: the lists of the phase
		// are the nodes' maintenance and their look at the stored holds
		// every few seconds, not one or more per name
		if lists, limit := byOp["list"], maxListsWhileIssuing(len(re.nodes), took); lists > limit {
			t.Errorf("certflow listed storage %v times while issuing %d names in %s, want at most %v (maintenance and the holds' refresh only): a list per name on the handshake path?", lists, ok, took.Round(time.Millisecond), limit)
		}
	}
	checkNoStorageErrors(t, callsBefore, callsAfter)
	re.checkOneOrderEach(phase1, true)
	if t.Failed() {
		t.Fatalf("phase 1 failed\n%s", re.logTails(30))
	}

	// phase 2: 60 names, node n2 SIGKILLed while they are in flight
	phase2 := namesN("p2", 0, 60)
	var res2 map[string]hsResult
	done := make(chan struct{})
	ordersBefore := re.ca.Count(rig.KindNewOrder)
	start = time.Now()
	go func() {
		defer close(done)
		res2 = re.handshakeAll(phase2, conc, 2, 30*time.Second)
	}()
	stuck := time.AfterFunc(45*time.Second, func() { re.dumpGoroutines(); dumpSelf(t) })
	// mid-way: a first wave of orders is at the CA, the rest to come
	waitFor(t, fmt.Sprintf("the CA to see %d new-orders of phase 2", conc), pollMax, func() bool {
		return re.ca.Count(rig.KindNewOrder)-ordersBefore >= conc
	})
	killed := re.nodes[2]
	// the balancers stop sending new connections to the node first (as a
	// load balancer draining it would), and the CA's validations already
	// going to it finish, so that none is cut by the kill; its handshakes
	// and orders in flight are
	httpsAll, httpAll := re.backends()
	re.httpsLB.SetBackends(httpsAll[:2])
	re.httpLB.SetBackends(httpAll[:2])
	waitFor(t, "the CA's validations through node "+killed.name+" to end", pollMax, func() bool {
		return re.httpLB.OpenTo(httpAll[2]) == 0
	})
	re.killedAt = time.Now()
	if err := killed.proc.Kill(); err != nil {
		t.Fatal(err)
	}
	// the dead node is back in the lists: the balancers skip it on dial errors
	re.httpsLB.SetBackends(httpsAll)
	re.httpLB.SetBackends(httpAll)
	t.Logf("node %s SIGKILLed (pid %d) %s into phase 2", killed.name, killed.proc.PID, time.Since(start).Round(time.Millisecond))
	<-done
	stuck.Stop()
	ok, failed, retried := record("phase 2", res2, true)
	t.Logf("phase 2: %d issued, %d failed, %d needed a retry (their connection went to the killed node) in %s; balancer dial failures https=%d http=%d",
		ok, failed, retried, time.Since(start).Round(time.Millisecond), re.httpsLB.DialFailures(), re.httpLB.DialFailures())
	explained := re.checkOrdersAfterKill(phase2)
	if t.Failed() {
		t.Fatalf("phase 2 failed\n%s", re.logTails(30))
	}

	// phase 3: Redis restarted under handshakes for new names
	outage := namesN("outage", 0, 10)
	var resOut map[string]hsResult
	done = make(chan struct{})
	go func() {
		defer close(done)
		resOut = re.handshakeAll(outage, 10, 1, 20*time.Second)
	}()
	waitFor(t, "the handshakes for the outage names to reach the nodes", pollMax, func() bool {
		return re.httpsLB.OpenTo("") >= len(outage)
	})
	outStart := time.Now()
	if err := re.redis.Stop(); err != nil {
		t.Fatal(err)
	}
	// the outage itself: Redis stays down this long whatever the nodes do
	time.Sleep(1500 * time.Millisecond)
	if err := re.redis.Restart(); err != nil {
		t.Fatal(err)
	}
	t.Logf("Redis down for %s, restarted as pid %d on %s", time.Since(outStart).Round(time.Millisecond), re.redis.PID(), re.redis.Addr)
	<-done
	okOut, failedOut, _ := record("outage", resOut, false)
	t.Logf("names handshaken across the Redis restart: %d issued, %d failed (allowed)", okOut, failedOut)
	for name, r := range resOut {
		if r.err != nil {
			t.Logf("  %s: %v", name, r.err)
		}
	}
	re.checkOneOrderEach(outage, false)

	// after: new names succeed without restarting Caddy, once every node
	// reads storage again (go-redis stops dialing after a pool's worth of
	// failed dials and probes the server once a second: a node can answer
	// "connection refused" for up to a second after Redis is back, and a
	// CA validation it serves meanwhile fails)
	re.waitStorageAnswers(phase1[0], 15*time.Second)
	phase3 := namesN("p3", 0, 20)
	start = time.Now()
	res3 := re.handshakeAll(phase3, conc, 1, 60*time.Second)
	ok, failed, _ = record("after the Redis restart", res3, true)
	t.Logf("after the Redis restart: %d issued, %d failed in %s", ok, failed, time.Since(start).Round(time.Millisecond))
	re.checkOneOrderEach(phase3, true)
	if t.Failed() {
		t.Fatalf("issuing after the Redis restart failed\n%s", re.logTails(40))
	}

	// every node (the killed one restarted) serves every certificate it is asked for
	re.start(2)
	var sample []string
	for i := 0; i < 40; i += 8 {
		sample = append(sample, phase1[i], phase2[i])
	}
	sample = append(sample, phase3[0], phase3[10])
	for _, name := range sample {
		for _, n := range re.nodes {
			leaf, err := re.handshakeAt(n.addr(), name, 20*time.Second)
			if err != nil {
				t.Errorf("node %s for %s: %v", n.name, name, err)
				continue
			}
			if s := leaf.SerialNumber.String(); s != all[name] {
				t.Errorf("node %s serves %s with serial %s, the handshake through the balancer got %s", n.name, name, s, all[name])
			}
		}
	}
	// no name got a second order over the whole test (but for the ones the
	// kill explains, logged above)
	var every []string
	for _, l := range [][]string{phase1, phase2, outage, phase3} {
		for _, n := range l {
			if !explained[n] {
				every = append(every, n)
			}
		}
	}
	re.checkOneOrderEach(every, false)
	t.Logf("CA requests in all: %s", caSummary(re.ca))

	// locks: while the cluster is idle, every lock key left has a lease
	// (a TTL of at most redislock's 5s, refreshed by a live holder, e.g.
	// certmagic waiting to retry a name whose assets Redis did not take)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const lease = 5 * time.Second
	locks, err := re.redis.Keys(ctx, re.prefix+"/locks/*")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range locks {
		ttl, err := re.redis.Client().PTTL(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("lock held while idle: %s (ttl %s)", strings.TrimPrefix(k, re.prefix+"/"), ttl)
		if ttl < 0 || ttl > lease {
			t.Errorf("lock key %s has ttl %s, want a lease of at most %s", k, ttl, lease)
		}
	}
	// and once every node is dead, no lock outlives its lease
	for _, n := range re.nodes {
		if n.proc != nil {
			if err := n.proc.Kill(); err != nil {
				t.Fatal(err)
			}
		}
	}
	// polled until none is left, failing past the lease and a margin
	killedAll := time.Now()
	for {
		locks, err = re.redis.Keys(ctx, re.prefix+"/locks/*")
		if err != nil {
			t.Fatal(err)
		}
		if len(locks) == 0 {
			t.Logf("no lock key left %s after every node was killed", time.Since(killedAll).Round(time.Millisecond))
			break
		}
		if time.Since(killedAll) > lease+2*time.Second {
			for _, k := range locks {
				ttl, _ := re.redis.Client().PTTL(ctx, k).Result()
				t.Errorf("lock key %s outlived its lease: still there %s after every node was killed (ttl %s)", k, lease+2*time.Second, ttl)
			}
			break
		}
		time.Sleep(pollEvery)
	}
}

// TestRedisOutageKeepsBackoff: absence is not proof. A name in backoff is
// handshaken again while Redis is down: the engine must not take "not
// found" for an empty store, so no new order, and the backoff survives.
func TestRedisOutageKeepsBackoff(t *testing.T) {
	re := newRedisEnv(t, redisEnvOptions{nodes: 1})
	re.start(0)
	nd := re.nodes[0]
	const name = "backoff.test"
	re.ca.SetFault(pebbleSerializer(rejectFirstOrder(name, "rejected by the test")))
	if _, err := re.handshakeAt(nd.addr(), name, 30*time.Second); err == nil {
		t.Fatal("the handshake succeeded though the CA rejected the order")
	}
	re.ca.SetFault(pebbleSerializer(nil))
	if n := re.ca.NewOrders(name); n != 1 {
		t.Fatalf("the CA saw %d new-orders for %s, want 1", n, name)
	}
	rec := re.nameRecord(name)
	t.Logf("name record after the failure: failures=%v next_attempt=%v", rec["failures"], rec["next_attempt"])
	if number(rec["failures"]) < 1 || rec["next_attempt"] == nil {
		t.Fatalf("no backoff recorded: %s", dump(rec))
	}
	wantNext := rec["next_attempt"]

	logBefore := len(nd.proc.Log())
	if err := re.redis.Stop(); err != nil {
		t.Fatal(err)
	}
	t.Logf("Redis stopped")
	_, errOut := re.handshakeAt(nd.addr(), name, 15*time.Second)
	t.Logf("handshake for %s with Redis down: %v", name, errOut)
	_, errFresh := re.handshakeAt(nd.addr(), "fresh-during-outage.test", 15*time.Second)
	t.Logf("handshake for a new name with Redis down: %v", errFresh)
	ordersDuring := re.ca.NewOrders(name)
	freshDuring := re.ca.NewOrders("fresh-during-outage.test")
	if err := re.redis.Restart(); err != nil {
		t.Fatal(err)
	}
	outageLog := nd.proc.Log()[logBefore:]
	t.Logf("node log during the outage (%d lines), warnings, errors and the lines naming the two names:", strings.Count(outageLog, "\n"))
	for _, l := range strings.Split(outageLog, "\n") {
		if strings.Contains(l, `"level":"warn"`) || strings.Contains(l, `"level":"error"`) ||
			strings.Contains(l, name) || strings.Contains(l, "fresh-during-outage.test") {
			t.Logf("  %s", truncate(l, 500))
		}
	}
	if errOut == nil {
		t.Errorf("the handshake for %s succeeded with Redis down", name)
	}
	if ordersDuring != 1 {
		t.Errorf("the CA saw %d new-orders for %s by the end of the outage, want 1 (no new order while the store is down)", ordersDuring, name)
	}
	if freshDuring != 0 {
		t.Errorf("the CA saw %d new-orders for a new name while Redis was down, want 0", freshDuring)
	}
	rec = re.nameRecord(name)
	if number(rec["failures"]) < 1 || rec["next_attempt"] != wantNext {
		t.Errorf("the backoff changed across the outage: was next_attempt=%v, now %s", wantNext, dump(rec))
	}
	// with Redis back, the name is still held back (backoff of a minute)
	if _, err := re.handshakeAt(nd.addr(), name, 15*time.Second); err == nil {
		t.Errorf("the handshake for %s succeeded during its backoff", name)
	}
	if n := re.ca.NewOrders(name); n != 1 {
		t.Errorf("the CA saw %d new-orders for %s, want 1", n, name)
	}
	// and the node recovers without a restart
	if _, err := re.handshakeAt(nd.addr(), "after-outage.test", 30*time.Second); err != nil {
		t.Errorf("a new name after Redis came back: %v\n%s", err, tail(nd.proc.Log(), 30))
	}
}
