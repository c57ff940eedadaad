package integration

import (
	"sort"
	"testing"
	"time"

	"github.com/certflow/certflow/integration/rig"
)

// schedulerExtra is the issuer configuration of the scheduler tests: a cap
// of max live challenges, and a self-check that retries quickly and keeps
// failing for long enough that a blocked name holds its slot until the test
// unblocks it.
func schedulerExtra(max int) map[string]any {
	return map[string]any{
		"max_concurrent_challenges": max,
		"self_check":                map[string]any{"interval": "50ms", "timeout": "30s"},
	}
}

// TestSchedulerCapOneSerializesChallenges: with max_concurrent_challenges 1,
// five names handshaking at once all get their certificates, one challenge
// at a time: the scheduler never has more than one live, the other four
// wait in its queue, and the stored [scheduled, finished] intervals of the
// five challenges never overlap.
func TestSchedulerCapOneSerializesChallenges(t *testing.T) {
	schedulerIdle(t)
	e := newEnv(t, envOptions{})
	e.run(e.config(e.issuer(schedulerExtra(1))))
	if got := currentScheduler().Limits().MaxLive; got != 1 {
		t.Fatalf("scheduler MaxLive = %d after provisioning max_concurrent_challenges 1", got)
	}

	names := []string{"s1.test", "s2.test", "s3.test", "s4.test", "s5.test"}
	// Blocked names keep the first challenge in its self-check, so all five
	// are provably in the scheduler at once before any finishes.
	e.block(names...)
	mon := monitorLive(t)
	wait := e.handshakeAsync(names...)
	waitForDiag(t, "1 live and 4 queued challenges", pollMax, func() bool {
		live, queued := currentScheduler().Stats()
		return live == 1 && queued == 4
	}, e.schedulerDiag(names...))
	e.unblock(names...)

	for _, n := range names {
		r := wait()[n]
		if r.err != nil {
			t.Errorf("handshake for %s: %v", n, r.err)
		} else {
			t.Logf("handshake for %s: issued in %s", n, r.took.Round(time.Millisecond))
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	if got := mon.maxLive(); got != 1 {
		t.Errorf("the scheduler had %d challenges live at once, cap 1", got)
	}

	type span struct {
		name     string
		from, to time.Time
	}
	var spans []span
	for _, n := range names {
		ch := e.onlyChallenge(n)
		if ch.str("state") != "valid" {
			t.Fatalf("challenge for %s is not valid: %s", n, dump(ch))
		}
		s := span{n, timeField(t, ch, "times.scheduled"), timeField(t, ch, "times.finished")}
		if s.from.IsZero() || s.to.IsZero() || s.to.Before(s.from) {
			t.Fatalf("challenge for %s has no proper [scheduled, finished] interval: %s", n, dump(ch))
		}
		spans = append(spans, s)
	}
	sort.Slice(spans, func(i, j int) bool { return spans[i].from.Before(spans[j].from) })
	for i := 1; i < len(spans); i++ {
		prev, cur := spans[i-1], spans[i]
		if cur.from.Before(prev.to) {
			t.Errorf("challenges overlap with cap 1: %s [%s, %s] and %s [%s, %s]",
				prev.name, prev.from.Format(time.RFC3339Nano), prev.to.Format(time.RFC3339Nano),
				cur.name, cur.from.Format(time.RFC3339Nano), cur.to.Format(time.RFC3339Nano))
		}
	}
}

// TestSchedulerOnDemandBeforeManaged: with cap 1, a challenge with a
// handshake waiting for it goes before managed (background) challenges that
// have waited longer. Three managed names start together; all three are
// blocked, so whichever takes the single slot holds it in its self-check
// while the other two queue. An on-demand handshake for a new name then
// queues behind them; once the names are unblocked, the on-demand challenge
// is scheduled before both managed ones that were waiting.
func TestSchedulerOnDemandBeforeManaged(t *testing.T) {
	schedulerIdle(t)
	e := newEnv(t, envOptions{})
	managed := []string{"m1.test", "m2.test", "m3.test"}
	const onDemand = "od.test"

	// every certflow issuer of the config sets the cap: the most recently
	// provisioned value wins
	cfg := e.config(e.issuer(schedulerExtra(1)))
	cfg.Policies = []rig.Policy{{Subjects: managed, Issuers: []map[string]any{e.issuer(schedulerExtra(1))}}}
	cfg.Automate = managed
	e.block(managed...)
	e.run(cfg)
	if got := currentScheduler().Limits().MaxLive; got != 1 {
		t.Fatalf("scheduler MaxLive = %d after provisioning max_concurrent_challenges 1", got)
	}

	// one managed challenge live and failing its self-check, two queued
	var live string
	var waiting []string
	waitForDiag(t, "1 managed challenge live in its self-check and 2 queued", pollMax, func() bool {
		if l, q := currentScheduler().Stats(); l != 1 || q != 2 {
			return false
		}
		live, waiting = "", nil
		for _, n := range managed {
			chals := e.resources("challenges", n)
			if len(chals) != 1 {
				return false
			}
			switch ch := chals[0]; {
			case ch.str("state") == "queued":
				waiting = append(waiting, n)
			case ch.str("state") == "presented" && number(ch["self_checks"]) >= 1:
				live = n
			}
		}
		return live != "" && len(waiting) == 2
	}, e.schedulerDiag(managed...))
	t.Logf("managed %s holds the slot; %v wait", live, waiting)

	// the on-demand challenge joins the queue, after the managed ones
	wait := e.handshakeAsync(onDemand)
	waitForDiag(t, "the on-demand challenge to queue", pollMax, func() bool {
		if l, q := currentScheduler().Stats(); l != 1 || q != 3 {
			return false
		}
		chals := e.resources("challenges", onDemand)
		return len(chals) == 1 && chals[0].str("state") == "queued"
	}, e.schedulerDiag(append(managed, onDemand)...))
	e.unblock(managed...)

	if r := wait()[onDemand]; r.err != nil {
		t.Fatalf("on-demand handshake for %s: %v", onDemand, r.err)
	}
	waitFor(t, "the managed certificates in storage", pollMax, func() bool {
		for _, n := range managed {
			if !fileExists(e.certPath(n)) {
				return false
			}
		}
		return true
	})

	od := e.onlyChallenge(onDemand)
	if od.str("state") != "valid" || od["on_demand"] != true {
		t.Fatalf("on-demand challenge: %s", dump(od))
	}
	odScheduled := timeField(t, od, "times.scheduled")
	first := e.onlyChallenge(live)
	if first.str("state") != "valid" || first["on_demand"] == true {
		t.Fatalf("managed challenge for %s: %s", live, dump(first))
	}
	if fin := timeField(t, first, "times.finished"); odScheduled.Before(fin) {
		t.Errorf("on-demand challenge scheduled at %s, before the live one (%s) finished at %s",
			odScheduled.Format(time.RFC3339Nano), live, fin.Format(time.RFC3339Nano))
	}
	for _, n := range waiting {
		ch := e.onlyChallenge(n)
		if ch.str("state") != "valid" || ch["on_demand"] == true {
			t.Fatalf("managed challenge for %s: %s", n, dump(ch))
		}
		if !timeField(t, ch, "created").Before(timeField(t, od, "created")) {
			t.Fatalf("managed challenge for %s was not created before the on-demand one; the test proves nothing", n)
		}
		if sched := timeField(t, ch, "times.scheduled"); !odScheduled.Before(sched) {
			t.Errorf("on-demand challenge scheduled at %s, not before managed %s (waiting longer) at %s",
				odScheduled.Format(time.RFC3339Nano), n, sched.Format(time.RFC3339Nano))
		}
	}
}

// number reads a JSON number of a loosely decoded resource; 0 if absent.
func number(v any) float64 {
	f, _ := v.(float64)
	return f
}
