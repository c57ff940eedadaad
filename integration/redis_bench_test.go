package integration

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/certflow/certflow/integration/rig"
)

// TestRedisBench reports, for 300 names at concurrency 100, wall time,
// failed handshakes and Redis commands per issuance on three nodes, and the
// same on one node with file-system storage. It is not a timed assertion:
// it fails only if a name gets two orders. It takes about 30s with -race;
// -short or CERTFLOW_REDIS_BENCH=0 skips it.
func TestRedisBench(t *testing.T) {
	if testing.Short() || os.Getenv("CERTFLOW_REDIS_BENCH") == "0" {
		t.Skip("skipping the Redis benchmark (300 names, concurrency 100): -short or CERTFLOW_REDIS_BENCH=0")
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
		var firstErrs []string
		for _, n := range list {
			if r := res[n]; r.err != nil {
				failed++
				if len(firstErrs) < 5 {
					firstErrs = append(firstErrs, r.err.Error())
				}
			}
		}
		issued := names - failed
		line := fmt.Sprintf("BENCH %s: %d names, concurrency %d: wall %s, failed handshakes %d, new-orders %d",
			label, names, conc, wall.Round(time.Millisecond), failed, re.ca.Count(rig.KindNewOrder))
		if re.redis != nil && issued > 0 {
			total, by := rig.CommandsBetween(before, re.commandStats())
			line += fmt.Sprintf(", Redis commands per issuance %.1f (%s)", float64(total)/float64(issued), topCommands(by, float64(issued)))
		}
		if issued > 0 {
			calls, byOp, ops := storageCallsReport(callsBefore, re.storageCallsFlushed(), float64(issued))
			line += fmt.Sprintf(", certflow storage calls per issuance %.1f (%s)", calls/float64(issued), ops)
			if lists, limit := byOp["list"], float64(maxListsPerNodePass*len(re.nodes)); lists > limit {
				t.Errorf("certflow listed storage %v times while issuing %d names, want at most %v (maintenance only)", lists, issued, limit)
			}
		}
		t.Log(line)
		for _, e := range firstErrs {
			t.Logf("  e.g. %s", e)
		}
		re.checkOneOrderEach(list, false)
	}
	t.Run("redis-3-nodes", func(t *testing.T) { run(t, redisEnvOptions{nodes: 3}, "redis, 3 nodes") })
	t.Run("file-1-node", func(t *testing.T) { run(t, redisEnvOptions{nodes: 1, fileStore: true}, "file_system, 1 node") })
}
