package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/certflow/certflow/integration/rig"
)

// Nothing left behind: a DNS-01 record (or a token) published by a challenge
// whose write failed, or whose process died, is removed by maintenance
// within minutes, with the solver of the policy that presented it; and a
// challenge queued in a live process is never taken for abandoned.

// Bounds the leftover tests wait for. They mirror the documented bound
// (README, "Failures"): a leftover is removed about a minute after its
// deadline passed by 30 s or its process's heartbeat lapsed (2 min); a
// leftover this process reported is looked at within 5 s.
const (
	abandonAfterDeadline = 30 * time.Second
	reportedLeftoverWait = 30 * time.Second
	firstPassWait        = 30 * time.Second
)

// leftoverIssuer is the DNS-01 issuer of the leftover tests: updates
// through proxy (nil: to BIND directly), a short challenge_timeout so a
// dead process's challenge passes its deadline soon.
func (b *bindEnv) leftoverIssuer(proxy *updateProxy) map[string]any {
	iss := b.dnsIssuer(nil)
	if proxy != nil {
		provider := b.bind.Provider()
		provider["server"] = proxy.addr
		iss["challenges"].(map[string]any)["dns"].(map[string]any)["provider"] = provider
	}
	iss["challenge_timeout"] = "10s"
	return iss
}

// TestDNS01LeftoverAfterFailedWrite: the storage fails a write around
// Present, in a live process.
//   - The write before Present (the challenge as presented, with its
//     plan) fails: nothing is published at all.
//   - The write right after Present (the record the provider returned)
//     fails, and so does the run's final write: the run removes the
//     record, and maintenance records the end from the stored plan.
//   - The same, and the run's own deletion of the record fails too:
//     maintenance deletes it, from the stored plan, within seconds of the
//     run's report.
//
// In every case no TXT record is left at BIND (zone transfer).
func TestDNS01LeftoverAfterFailedWrite(t *testing.T) {
	for _, tc := range []struct {
		name          string
		fault         string
		refuseDeletes bool
	}{
		{"plan write fails", faultPlan, false},
		{"memo write fails", faultMemo, false},
		{"memo write and the run's deletion fail", faultMemo, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBindEnv(t)
			proxy := startUpdateProxy(t, b.bind.Addr)
			proxy.refuseDeletes.Store(tc.refuseDeletes)
			name := "fault-" + tc.fault + ".dns.test"
			if tc.refuseDeletes {
				name = "refused.dns.test"
			}
			b.runJSON(faultyConfig(t, b.config(b.leftoverIssuer(proxy)), tc.fault))

			if _, err := b.handshake(name); err == nil {
				t.Fatal("the handshake succeeded, although the storage failed the challenge's write")
			}
			switch tc.fault {
			case faultPlan:
				// nothing was published: the provider was never asked
				if n := proxy.adds.Load(); n != 0 {
					t.Fatalf("the DNS provider added records %d times although the challenge could not be stored", n)
				}
				chals := b.resources("challenges", name)
				if len(chals) != 1 || chals[0].str("state") != "errored" || !strings.Contains(chals[0].str("reason"), "injected") {
					t.Fatalf("want one errored challenge with the storage's error: %s", dump(chals))
				}
				noChallengeTXT(t, b.bind)
				return
			}
			if proxy.adds.Load() == 0 {
				t.Fatal("the record was never added")
			}
			if tc.refuseDeletes {
				waitFor(t, "the run's deletion of the record to be refused", pollMax, func() bool { return proxy.refused.Load() > 0 })
				if !challengeTXT(t, b.bind) {
					t.Fatal("the record is not at BIND after the run's deletion was refused")
				}
				proxy.refuseDeletes.Store(false)
			}
			// the stored challenge: presented, with the plan (the write of
			// the memo failed), until maintenance ends it
			var ch resource
			took := waitForDiag(t, "maintenance to end the challenge and remove its record", reportedLeftoverWait, func() bool {
				chals := b.resources("challenges", name)
				if len(chals) != 1 {
					return false
				}
				ch = chals[0]
				return ch.str("state") == "errored" && ch["cleaned_up"] == true && !challengeTXT(t, b.bind)
			}, func() string { return dump(b.resources("challenges", name)) })
			t.Logf("maintenance ended the challenge %s after the handshake failed (reason: %s)", took.Round(time.Millisecond), ch.str("reason"))
			if !strings.Contains(ch.str("reason"), "the run that had it ended") {
				t.Errorf("reason %q, want the run's end recorded by maintenance", ch.str("reason"))
			}
			if p, _ := json.Marshal(ch["presented"]); !strings.Contains(string(p), `"planned":true`) {
				t.Errorf("the stored challenge does not hold the plan: %s", p)
			}
			if tc.refuseDeletes && proxy.deletes.Load() == 0 {
				t.Error("maintenance removed the record without a deletion reaching BIND")
			}
			noChallengeTXT(t, b.bind)
		})
	}
}

// TestDNS01LeftoverAfterKill: a Caddy process is SIGKILLed between Present
// (the TXT record is at BIND) and the write of the record the provider
// returned: the stored challenge has only the plan. The next Caddy on the
// same storage, with no request for the name, removes the record within
// the documented bound of the challenge's deadline, ends the challenge,
// and leaves the order resumable: a handshake for the name is then issued
// on the same order.
func TestDNS01LeftoverAfterKill(t *testing.T) {
	b := newBindEnv(t)
	const name = "killed.dns.test"
	first := b.config(b.leftoverIssuer(nil))
	first.LogFile = filepath.Join(t.TempDir(), "first-caddy.log")
	key, pid := killHelperCaddyAt(t, caddyJob{Config: faultyConfig(t, first, faultMemoHold), Storage: b.storage, Addr: b.addr(), Name: name},
		first.LogFile, faultHoldLine, "the write after Present")
	t.Logf("the first Caddy presented and was writing %s", key)
	killed := time.Now()
	t.Logf("first Caddy (pid %d) killed between Present and the write of its memo", pid)

	left, err := b.bind.TXT("_acme-challenge.killed")
	if err != nil || len(left) != 1 {
		t.Fatalf("after the kill BIND serves %q (%v), want the dead process's value", left, err)
	}
	chals := b.resources("challenges", name)
	if len(chals) != 1 || chals[0].str("state") != "presented" {
		t.Fatalf("after the kill: %s", dump(chals))
	}
	plan, _ := json.Marshal(chals[0]["presented"])
	if !strings.Contains(string(plan), `"planned":true`) || strings.Contains(string(plan), `"zone"`) {
		t.Fatalf("after the kill the stored challenge should hold the plan only: %s", plan)
	}
	deadline := timeField(t, chals[0], "deadline")

	// the next process: same storage and policy, no request for the name
	b.run(b.config(b.leftoverIssuer(nil)))
	bound := time.Until(deadline.Add(abandonAfterDeadline)) + firstPassWait
	var ch resource
	waitForDiag(t, "the next process's maintenance to remove the record", bound, func() bool {
		got, err := b.bind.TXT("_acme-challenge.killed")
		if err != nil || len(got) != 0 {
			return false
		}
		chals := b.resources("challenges", name)
		if len(chals) != 1 {
			return false
		}
		ch = chals[0]
		return ch.str("state") == "errored" && ch["cleaned_up"] == true
	}, func() string { return dump(b.resources("challenges", name)) })
	t.Logf("record removed %s after the kill, %s after the challenge's deadline (reason: %s)",
		time.Since(killed).Round(time.Millisecond), time.Since(deadline).Round(time.Millisecond), ch.str("reason"))
	if !strings.Contains(ch.str("reason"), "abandoned: ") {
		t.Errorf("reason %q", ch.str("reason"))
	}
	noChallengeTXT(t, b.bind)

	// the order was left resumable: the name is issued on it
	orders := b.resources("orders", name)
	if len(orders) != 1 || orders[0].str("state") != "pending" {
		t.Fatalf("the abandoned challenge's order should stay resumable: %s", dump(orders))
	}
	b.mustHandshake(name)
	if n := b.ca.NewOrders(name); n != 1 {
		t.Errorf("the CA saw %d new orders for %s, want 1 (the order resumed)", n, name)
	}
	noChallengeTXT(t, b.bind)
}

// plantLeftover writes what a process that died with a DNS-01 challenge
// presented leaves behind: the TXT value at BIND and the stored challenge
// (presented, with its plan, its owner gone without a heartbeat, its
// deadline passed), made by policy.
func (b *bindEnv) plantLeftover(t *testing.T, label, policy string) string {
	t.Helper()
	now := time.Now().UTC()
	value := "leftover-" + label
	fqdn := "_acme-challenge." + label + ".dns.test."
	if err := b.bind.AddTXT(fqdn, value); err != nil {
		t.Fatal(err)
	}
	id := now.Format("20060102-150405.000000000") + "-0badf00d-a0-1"
	past := now.Add(-10 * time.Minute)
	ch := map[string]any{
		"version": 1, "id": id, "order": id[:len(id)-len("-a0-1")], "name": label + ".dns.test", "type": "dns-01",
		"token": "token-" + label, "authorization_url": "https://ca.invalid/authz/" + label, "state": "presented",
		"presented": map[string]any{"planned": true, "record": map[string]any{"name": fqdn, "type": "TXT", "data": value}},
		"owner":     "00000000dead", "policy": policy, "deadline": past.Add(5 * time.Minute),
		"created": past, "updated": past, "times": map[string]any{"scheduled": past, "presented": past},
	}
	raw, err := json.Marshal(ch)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(b.storage, "certflow", b.stateKeySafe(), "challenges")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, id+".json"), raw, 0o600); err != nil {
		t.Fatal(err)
	}
	return id
}

// TestLeftoverTwoPolicies: a global HTTP-01 policy and a site's DNS-01
// policy share the storage and issuer key. Leftovers of the DNS policy (a
// process died with their records at BIND) are removed with the DNS
// policy's solver whichever policy's options Caddy handed over last, and
// one whose policy is not loaded (an older config) with the only policy
// that has a DNS-01 solver.
func TestLeftoverTwoPolicies(t *testing.T) {
	for _, last := range []string{"http", "dns"} {
		t.Run(last+" options last", func(t *testing.T) {
			b := newBindEnv(t)
			httpIssuer := map[string]any{
				"module": "certflow", "ca": b.ca.DirectoryURL, "email": "ops@example.com",
				"trusted_roots_pem_files": []string{b.ca.ServerRootsFile},
				"challenges":              map[string]any{"tls-alpn": map[string]any{"disabled": true}},
				"self_check":              map[string]any{"resolvers": []string{b.bind.Addr}, "http_port": b.httpPort, "interval": "100ms"},
			}
			dnsIssuer := b.dnsIssuer(nil)
			const real = "real.dns.test"
			cfg := b.config(nil)
			// Caddy hands each policy's issuer its options in policy
			// order: the catch-all (cfg.Issuer) last
			switch last {
			case "http":
				cfg.Policies = []rig.Policy{{Subjects: []string{real}, Issuers: []map[string]any{dnsIssuer}, OnDemand: true}}
				cfg.Issuer = httpIssuer
			case "dns":
				cfg.Policies = []rig.Policy{{Subjects: []string{"web.dns.test"}, Issuers: []map[string]any{httpIssuer}, OnDemand: true}}
				cfg.Issuer = dnsIssuer
			}
			b.run(cfg)
			b.mustHandshake(real) // a DNS-01 challenge of the DNS policy: its policy ID
			chals := b.resources("challenges", real)
			if len(chals) != 1 || chals[0].str("type") != "dns-01" || chals[0].str("policy") == "" {
				t.Fatalf("want one dns-01 challenge with its policy: %s", dump(chals))
			}
			policy := chals[0].str("policy")
			if err := rig.StopCaddy(); err != nil {
				t.Fatal(err)
			}

			own := b.plantLeftover(t, "own", policy)
			unknown := b.plantLeftover(t, "unknown", "0123456789abcdef")
			start := time.Now()
			b.run(cfg) // a new process's maintenance: its first pass lists everything
			for label, id := range map[string]string{"own": own, "unknown": unknown} {
				// the record is removed first, then the challenge's end written
				waitForDiag(t, "the "+label+" leftover's record to be removed and its end recorded", firstPassWait, func() bool {
					got, err := b.bind.TXT("_acme-challenge." + label)
					ch := b.resources("challenges", label+".dns.test")
					return err == nil && len(got) == 0 && len(ch) == 1 && ch[0].str("state") != "presented"
				}, func() string { return dump(b.resources("challenges", label+".dns.test")) })
				ch := b.resources("challenges", label+".dns.test")
				if len(ch) != 1 || ch[0].str("id") != id || ch[0].str("state") != "errored" || ch[0]["cleaned_up"] != true ||
					!strings.Contains(ch[0].str("reason"), "(owner 00000000dead) left no heartbeat") {
					t.Fatalf("%s leftover: %s", label, dump(ch))
				}
			}
			t.Logf("both leftovers removed %s after the start", time.Since(start).Round(time.Millisecond))
			noChallengeTXT(t, b.bind)
		})
	}
}

// TestLeftoverLongQueuedSurvives: a challenge waits in the scheduler's
// queue of a live Caddy far longer than challenge_timeout (its stored
// record says it was queued two hours ago, when anything unfinished for
// longer than challenge_timeout would be taken for abandoned by its age).
// Another Caddy process (./cmd/caddy) on the same storage runs its
// maintenance meanwhile and leaves the queued challenge alone, its owner's
// heartbeat being fresh; the name is then issued on that challenge.
func TestLeftoverLongQueuedSurvives(t *testing.T) {
	e := newEnv(t, envOptions{})
	binary := caddyBinary(t) // built before the clock starts
	schedulerIdle(t)
	const blocker, queued = "blocker.test", "queued.test"
	// the blocker holds the only slot until it is unblocked (well within
	// its challenge_timeout)
	e.block(blocker)
	e.run(e.config(e.issuer(leftoverQueueSettings)))

	blockerDone := e.handshakeAsync(blocker)
	waitFor(t, "the blocker's challenge to hold the only slot", pollMax, func() bool {
		live, _ := currentScheduler().Stats()
		return live == 1
	})
	queuedDone := make(chan error, 1)
	go func() {
		_, err := rig.Handshake(e.addr(), queued, e.ca.IssuerRoots(), 90*time.Second)
		queuedDone <- err
	}()
	var ch resource
	waitFor(t, "the queued challenge to be stored as queued", pollMax, func() bool {
		chals := e.resources("challenges", queued)
		if len(chals) == 1 && chals[0].str("state") == "queued" {
			ch = chals[0]
			return true
		}
		return false
	})
	// it has waited for two hours, as far as its record tells
	key := filepath.Join(e.storage, "certflow", e.stateKeySafe(), "challenges", ch.str("id")+".json")
	long := time.Now().Add(-2 * time.Hour).UTC().Format(time.RFC3339Nano)
	ch["created"], ch["updated"] = long, long
	raw, _ := json.Marshal(ch)
	if err := os.WriteFile(key, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	// another process on the same storage: its first pass lists and
	// judges every stored challenge
	other := startOtherCaddy(t, e, binary)
	waitForDiag(t, "the other process's first look for leftovers", firstPassWait, func() bool {
		return strings.Contains(other.Log(), "looked for leftovers")
	}, func() string { return tail(other.Log(), 30) })
	after := e.resources("challenges", queued)
	if len(after) != 1 || after[0].str("state") != "queued" || after[0].str("updated") != ch.str("updated") {
		t.Fatalf("the other process's maintenance touched the queued challenge of a live process: %s", dump(after))
	}
	if strings.Contains(other.Log(), ch.str("id")) {
		t.Errorf("the other process logged the queued challenge:\n%s", tail(other.Log(), 30))
	}

	// the blocker is issued and frees the slot; the queued challenge runs
	e.unblock(blocker)
	select {
	case err := <-queuedDone:
		if err != nil {
			t.Fatalf("handshake for %s: %v", queued, err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("the queued name was never issued")
	}
	blockerDone()
	final := e.resources("challenges", queued)
	if len(final) != 1 || final[0].str("id") != ch.str("id") || final[0].str("state") != "valid" {
		t.Fatalf("want the long-queued challenge valid: %s", dump(final))
	}
}

// leftoverQueueSettings: one challenge at a time, each allowed a minute.
var leftoverQueueSettings = map[string]any{"max_concurrent_challenges": 1, "challenge_timeout": "60s"}
