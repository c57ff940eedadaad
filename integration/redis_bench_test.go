package integration

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/certflow/certflow/integration/rig"
)

// redisBenchEnv, set to 0, skips TestRedisBench (as -short does).
const redisBenchEnv = "CERTFLOW_REDIS_BENCH"

// TestRedisBench issues 300 names at concurrency 100 on three nodes sharing
// Redis, and the same on one node with file-system storage. Every handshake
// must succeed, the CA must see exactly one new-order per name (300 in
// all), none of certflow's storage calls may fail, and certflow may list
// storage only for its maintenance and its periodic look at the stored
// rate-limit holds, never per name. Wall time, Redis commands and
// certflow's storage calls per issuance are reported (the BENCH line), not
// asserted. It takes about 30s with -race; -short or CERTFLOW_REDIS_BENCH=0
// skips it.
func TestRedisBench(t *testing.T) {
	if testing.Short() || os.Getenv(redisBenchEnv) == "0" {
		t.Skipf("skipping the Redis benchmark (300 names, concurrency 100): -short or %s=0", redisBenchEnv)
	}
	const names, conc = 300, 100
	run := func(t *testing.T, o redisEnvOptions, label string) {
		re := newRedisEnv(t, o)
		re.startAll()
		var before map[string]int64
		if re.redis != nil {
			before = re.commandStats()
		}
		callsBefore := re.storageCalls()
		list := namesN("bench", 0, names)
		start := time.Now()
		res := re.handshakeAll(list, conc, 1, 120*time.Second)
		wall := time.Since(start)
		failed := 0
		for _, n := range list {
			if r := res[n]; r.err != nil {
				if failed++; failed <= 5 {
					t.Errorf("handshake for %s: %v", n, r.err)
				}
			}
		}
		if failed > 0 {
			t.Errorf("%d of %d handshakes failed", failed, names)
		}
		issued := names - failed
		newOrders := re.ca.Count(rig.KindNewOrder)
		line := fmt.Sprintf("BENCH %s: %d names, concurrency %d: wall %s, failed handshakes %d, new-orders %d",
			label, names, conc, wall.Round(time.Millisecond), failed, newOrders)
		if re.redis != nil && issued > 0 {
			total, by := rig.CommandsBetween(before, re.commandStats())
			line += fmt.Sprintf(", Redis commands per issuance %.1f (%s)", float64(total)/float64(issued), topCommands(by, float64(issued)))
		}
		callsAfter := re.storageCallsFlushed()
		if issued > 0 {
			calls, byOp, ops := storageCallsReport(callsBefore, callsAfter, float64(issued))
			line += fmt.Sprintf(", certflow storage calls per issuance %.1f (%s)", calls/float64(issued), ops)
			if lists, limit := byOp["list"], maxListsWhileIssuing(len(re.nodes), wall); lists > limit {
				t.Errorf("certflow listed storage %v times while issuing %d names in %s, want at most %v (maintenance and the holds' refresh only)", lists, issued, wall.Round(time.Millisecond), limit)
			}
		}
		t.Log(line)
		if newOrders != names {
			t.Errorf("the CA saw %d new-orders for %d names, want %d", newOrders, names, names)
		}
		re.checkOneOrderEach(list, true)
		checkNoStorageErrors(t, callsBefore, callsAfter)
	}
	t.Run("redis-3-nodes", func(t *testing.T) { run(t, redisEnvOptions{nodes: 3}, "redis, 3 nodes") })
	t.Run("file-1-node", func(t *testing.T) { run(t, redisEnvOptions{nodes: 1, fileStore: true}, "file_system, 1 node") })
}

// checkNoStorageErrors fails t if any of certflow's storage calls counted
// between two storageCalls snapshots failed: with the storage up the whole
// time, none may.
func checkNoStorageErrors(t *testing.T, before, after map[string]float64) {
	t.Helper()
	for k, v := range after {
		if op, outcome, _ := strings.Cut(k, "/"); outcome == "error" && v > before[k] {
			t.Errorf("%v of certflow's storage %s calls failed", v-before[k], op)
		}
	}
}
