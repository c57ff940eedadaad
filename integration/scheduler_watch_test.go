package integration

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/certflow/certflow/integration/rig"
)

// schedulerIdle waits until the process-wide scheduler has nothing live or
// queued, so a test starts from a clean slate whatever ran before it.
func schedulerIdle(t *testing.T) {
	t.Helper()
	waited := waitFor(t, "the scheduler to be idle before the test", pollMax, func() bool {
		live, queued := currentScheduler().Stats()
		return live == 0 && queued == 0
	})
	if waited > 100*time.Millisecond {
		t.Logf("waited %s for challenges of earlier tests to leave the scheduler", waited.Round(time.Millisecond))
	}
}

// liveMonitor samples the process-wide scheduler's live count every few
// milliseconds and remembers the highest value seen.
type liveMonitor struct {
	max  atomic.Int64
	stop chan struct{}
	done chan struct{}
}

func monitorLive(t *testing.T) *liveMonitor {
	m := &liveMonitor{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(m.done)
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			live, _ := currentScheduler().Stats()
			if int64(live) > m.max.Load() {
				m.max.Store(int64(live))
			}
			select {
			case <-m.stop:
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(m.halt)
	return m
}

// halt stops sampling and returns the highest live count seen.
func (m *liveMonitor) halt() {
	select {
	case <-m.stop:
	default:
		close(m.stop)
	}
	<-m.done
}

// maxLive stops the monitor and returns the highest live count seen.
func (m *liveMonitor) maxLive() int {
	m.halt()
	return int(m.max.Load())
}

// schedulerDiag describes the scheduler and the stored challenges of names,
// for a failed wait.
func (e *env) schedulerDiag(names ...string) func() string {
	return func() string {
		live, queued := currentScheduler().Stats()
		var b strings.Builder
		fmt.Fprintf(&b, "scheduler: %d live, %d queued, limits %+v\n", live, queued, currentScheduler().Limits())
		for _, n := range names {
			all, _ := rig.LoadResources(e.storage, "challenges")
			for _, r := range all {
				if r["name"] == n {
					fmt.Fprintf(&b, "challenge %s: state %v, self_checks %v, reason %v\n", n, r["state"], r["self_checks"], r["reason"])
				}
			}
			reqs, _ := rig.LoadResources(e.storage, "requests")
			for _, r := range reqs {
				if r["name"] == n {
					fmt.Fprintf(&b, "request %s: state %v, reason %v\n", n, r["state"], r["reason"])
				}
			}
		}
		return b.String()
	}
}
