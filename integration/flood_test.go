package integration

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/certflow/certflow/integration/rig"
	"github.com/certflow/certflow/issuer"
)

// Bounds of the flood tests.
const (
	floodHandshakes  = 2000
	floodConcurrency = 50
	// goroutineMargin is how many more goroutines than before the flood
	// may remain after it settles (idle HTTP connections of Caddy's
	// permission client and of the ask server, timers).
	goroutineMargin = 25
)

// queueFullText is the text of issuer.ErrQueueFull.
var queueFullText = issuer.ErrQueueFull.Error()

// TestFloodDeniedNames: 2000 handshakes (50 at a time) for names the
// on-demand permission endpoint denies create no certflow resource, leave
// the storage exactly as it was (same files), reach the CA not at all, and
// leave no goroutine behind once they are over.
func TestFloodDeniedNames(t *testing.T) {
	schedulerIdle(t)
	e := newEnv(t, envOptions{})
	names := make([]string, floodHandshakes)
	for i := range names {
		names[i] = fmt.Sprintf("denied-%04d.test", i)
		e.deny(names[i])
	}
	cfg := e.config(e.issuer(nil))
	cfg.CountingStorage = true // file_system's files, its lists counted
	listsAtStart := maintenanceLists()
	e.run(cfg)
	// a first issuance writes what any issuance writes once (account,
	// sentinel, certmagic's own bookkeeping), so the flood is measured
	// against a storage in use
	e.mustHandshake("allowed.test")
	// and certflow's start-up maintenance pass (3 s after the start) is over
	waitMaintenancePass(t, e.storage, listsAtStart)

	before := storageFiles(t, e.storage)
	caBefore := len(e.ca.Requests())
	baseline := settledGoroutines(time.Second)
	t.Logf("before the flood: %d files in storage, %d goroutines", len(before), baseline)

	start := time.Now()
	var succeeded atomic.Int64
	var slowest atomic.Int64
	work := make(chan string)
	var wg sync.WaitGroup
	for range floodConcurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for name := range work {
				hsStart := time.Now()
				if _, err := rig.Handshake(e.addr(), name, e.ca.IssuerRoots(), 10*time.Second); err == nil {
					succeeded.Add(1)
				}
				if d := int64(time.Since(hsStart)); d > slowest.Load() {
					slowest.Store(d)
				}
			}
		}()
	}
	for _, n := range names {
		work <- n
	}
	close(work)
	wg.Wait()
	took := time.Since(start)
	t.Logf("%d denied handshakes (concurrency %d) in %s; slowest %s", floodHandshakes, floodConcurrency,
		took.Round(time.Millisecond), time.Duration(slowest.Load()).Round(time.Millisecond))
	if n := succeeded.Load(); n != 0 {
		t.Errorf("%d handshakes for denied names succeeded", n)
	}

	after := storageFiles(t, e.storage)
	if added, removed := diffFiles(before, after); len(added)+len(removed) > 0 {
		t.Errorf("the flood changed the storage: %d files before, %d after; added %v; removed %v",
			len(before), len(after), head(added, 10), head(removed, 10))
	}
	for _, kind := range []string{"requests", "orders", "challenges"} {
		for _, r := range e.resources(kind, "") {
			if r.str("name") != "allowed.test" {
				t.Errorf("a %s resource for %s was stored", kind, r.str("name"))
				break
			}
		}
	}
	if n := len(e.ca.Requests()) - caBefore; n != 0 {
		t.Errorf("the flood sent %d requests to the CA", n)
	}

	// goroutines: back to the baseline within a margin after a short settle
	var now int
	deadline := time.Now().Add(10 * time.Second)
	for {
		now = settledGoroutines(500 * time.Millisecond)
		if now <= baseline+goroutineMargin || time.Now().After(deadline) {
			break
		}
	}
	t.Logf("after the flood: %d files in storage, %d goroutines (baseline %d, margin %d)", len(after), now, baseline, goroutineMargin)
	if now > baseline+goroutineMargin {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines after the flood, baseline %d (margin %d); stacks:\n%s",
			now, baseline, goroutineMargin, buf[:runtime.Stack(buf, true)])
	}
}

// TestFloodPastQueueBound: with max_concurrent_challenges 1 and
// max_queued_challenges 5, one name holds the only slot (its self-check is
// blocked) and five more wait in the queue; 30 more new names then fail
// fast, before anything is created for them — no certificate request in
// storage, no new-order at the CA. Once the first name is unblocked, the
// six are issued.
func TestFloodPastQueueBound(t *testing.T) {
	schedulerIdle(t)
	e := newEnv(t, envOptions{})
	cfg := e.config(e.issuer(map[string]any{
		"max_concurrent_challenges": 1,
		"max_queued_challenges":     5,
		"self_check":                map[string]any{"interval": "50ms", "timeout": "30s"},
	}))
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	cfg.LogFile = logFile
	e.run(cfg)
	if l := currentScheduler().Limits(); l.MaxLive != 1 || l.MaxQueued != 5 {
		t.Fatalf("scheduler limits %+v after provisioning 1 live, 5 queued", l)
	}

	const holder = "holder.test"
	e.block(holder)
	waitHolder := e.handshakeAsync(holder)
	waitFor(t, "the holder's challenge to take the only slot", pollMax, func() bool {
		live, _ := currentScheduler().Stats()
		return live == 1
	})
	queued := []string{"queued-1.test", "queued-2.test", "queued-3.test", "queued-4.test", "queued-5.test"}
	waitQueued := e.handshakeAsync(queued...)
	waitFor(t, "5 challenges queued", pollMax, func() bool {
		live, q := currentScheduler().Stats()
		return live == 1 && q == 5
	})

	rejected := make([]string, 30)
	for i := range rejected {
		rejected[i] = fmt.Sprintf("rejected-%02d.test", i)
	}
	start := time.Now()
	results := e.handshakeAsync(rejected...)()
	t.Logf("%d handshakes past the queue bound done in %s", len(rejected), time.Since(start).Round(time.Millisecond))
	var slowest time.Duration
	for _, n := range rejected {
		r := results[n]
		if r.err == nil {
			t.Errorf("handshake for %s past the queue bound succeeded", n)
		}
		slowest = max(slowest, r.took)
		if got := e.ca.NewOrders(n); got != 0 {
			t.Errorf("the CA saw %d new-orders for %s, rejected past the queue bound", got, n)
		}
		if reqs := e.resources("requests", n); len(reqs) != 0 {
			t.Errorf("a certificate request was stored for %s, rejected past the queue bound: %s", n, dump(reqs))
		}
		if rec := nameRecordOf(t, e.storage, n); rec != nil {
			t.Errorf("a name record was stored for %s, rejected past the queue bound: %s", n, dump(rec))
		}
	}
	t.Logf("slowest rejection: %s", slowest.Round(time.Millisecond))
	// they were refused for the queue bound, not for anything else
	logged, _ := os.ReadFile(logFile)
	for _, n := range rejected {
		found := false
		for _, line := range strings.Split(string(logged), "\n") {
			if strings.Contains(line, n) && strings.Contains(line, queueFullText) {
				found = true
				break
			}
		}
		if !found {
			t.Errorf("Caddy's log has no %q error for %s", queueFullText, n)
		}
	}
	if slowest > 3*time.Second {
		t.Errorf("the slowest rejection past the queue bound took %s; they should fail fast", slowest)
	}
	if live, q := currentScheduler().Stats(); live != 1 || q != 5 {
		t.Errorf("after the rejections the scheduler has %d live and %d queued, want 1 and 5", live, q)
	}

	e.unblock(holder)
	all := map[string]handshakeResult{}
	for n, r := range waitHolder() {
		all[n] = r
	}
	for n, r := range waitQueued() {
		all[n] = r
	}
	for _, n := range append([]string{holder}, queued...) {
		if r := all[n]; r.err != nil {
			t.Errorf("handshake for %s: %v", n, r.err)
		} else {
			t.Logf("%s issued in %s", n, r.took.Round(time.Millisecond))
		}
	}
}

// storageFiles lists the regular files under root (relative paths).
func storageFiles(t *testing.T, root string) map[string]bool {
	t.Helper()
	files := map[string]bool{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		if d.Type().IsRegular() {
			rel, _ := filepath.Rel(root, path)
			files[rel] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func diffFiles(before, after map[string]bool) (added, removed []string) {
	for f := range after {
		if !before[f] {
			added = append(added, f)
		}
	}
	for f := range before {
		if !after[f] {
			removed = append(removed, f)
		}
	}
	sort.Strings(added)
	sort.Strings(removed)
	return added, removed
}

func head(list []string, n int) []string {
	if len(list) > n {
		return list[:n]
	}
	return list
}

// settledGoroutines waits d and returns the number of goroutines. The wait
// is the point: goroutines that are ending (a connection's, a timer's) have
// no condition to wait on.
func settledGoroutines(d time.Duration) int {
	time.Sleep(d)
	runtime.GC()
	return runtime.NumGoroutine()
}
