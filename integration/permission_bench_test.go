package integration

import (
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/certflow/certflow/integration/rig"
)

// TestAdmissionFloodComparison measures scanners' floods against Caddy's
// stock permission (`permission http`, what `ask` adapts to) and against
// tls.permission.certflow with its defaults, in the same run, against the
// same ask endpoint and CA: requests reaching the endpoint and the CA,
// handshake latency of legitimate new names issued during the flood, and
// the heap afterwards. It is a measurement, not part of the default suite:
//
//	CERTFLOW_ADMISSION_BENCH=1 go test -race=false -count=1 -v -run TestAdmissionFloodComparison ./integration/
//
// Floods (each with its own names, from loopback addresses):
//
//	repeated      100 bogus names, 20 rounds, from 50 addresses (2 names each)
//	random-one    1000 random names from one address
//	random-many   1000 random names, 20 from each of 50 addresses
//	slow-ask      the endpoint answers after 2 s; 300 random names from 10 addresses
//	failing-ask   the endpoint answers 500; 300 random names from 10 addresses
//
// 200 ms into each flood, 10 legitimate new names (allowed by the
// endpoint) are handshaken at once from an address of their own.
func TestAdmissionFloodComparison(t *testing.T) {
	if os.Getenv("CERTFLOW_ADMISSION_BENCH") == "" {
		t.Skip("a measurement: set CERTFLOW_ADMISSION_BENCH=1 to run it")
	}
	schedulerIdle(t)
	a := newAdmissionEnv(t, envOptions{}, func(name string) bool { return strings.HasPrefix(name, "legit-") })

	type flood struct {
		name    string
		names   func(prefix string) []string
		sources int
		mode    rig.AskMode
		delay   time.Duration
	}
	seq := func(n, rounds int) func(string) []string {
		return func(prefix string) []string {
			var out []string
			for range rounds {
				for i := range n {
					out = append(out, fmt.Sprintf("%s-%03d.test", prefix, i))
				}
			}
			return out
		}
	}
	floods := []flood{
		{name: "repeated", names: seq(100, 20), sources: 50},
		{name: "random-one", names: seq(1000, 1), sources: 1},
		{name: "random-many", names: seq(1000, 1), sources: 50},
		{name: "slow-ask", names: seq(300, 1), sources: 10, delay: 2 * time.Second},
		{name: "failing-ask", names: seq(300, 1), sources: 10, mode: rig.AskFail},
	}
	type result struct {
		asks, caOrders, legitFailed int
		legit                       []time.Duration
		floodTook                   time.Duration
		heapMB                      float64
	}
	results := map[string]map[string]result{}
	for fi, f := range floods {
		results[f.name] = map[string]result{}
		for _, impl := range []string{"stock", "certflow"} {
			run := admissionRun{}
			if impl == "stock" {
				run.adjust = func(m map[string]any) {
					m["apps"].(map[string]any)["tls"].(map[string]any)["automation"].(map[string]any)["on_demand"] =
						map[string]any{"permission": map[string]any{"module": "http", "endpoint": a.ask.URL}}
				}
			}
			a.run(run)
			a.ask.SetMode(f.mode)
			a.ask.SetDelay(f.delay)
			a.ask.Reset()
			ca0 := len(a.ca.Requests())
			prefix := fmt.Sprintf("%s-%s", impl, f.name)
			names := f.names("bogus-" + prefix)

			var wg sync.WaitGroup
			work := make(chan int)
			const concurrency = 50
			start := time.Now()
			for range concurrency {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range work {
						src := fmt.Sprintf("127.0.1.%d", 1+i%f.sources)
						_, _ = rig.HandshakeFrom(src, a.addr(), names[i], a.ca.IssuerRoots(), 15*time.Second)
					}
				}()
			}
			legit := make([]time.Duration, 10)
			var legitFailed atomic.Int64
			var legitWG sync.WaitGroup
			for i := range legit {
				legitWG.Add(1)
				go func() {
					defer legitWG.Done()
					time.Sleep(200 * time.Millisecond) // into the flood
					hs := time.Now()
					_, err := rig.HandshakeFrom(fmt.Sprintf("127.0.2.%d", 1+fi), a.addr(),
						fmt.Sprintf("legit-%s-%d.test", prefix, i), a.ca.IssuerRoots(), 30*time.Second)
					legit[i] = time.Since(hs)
					if err != nil {
						legitFailed.Add(1)
					}
				}()
			}
			for i := range names {
				work <- i
			}
			close(work)
			wg.Wait()
			took := time.Since(start)
			legitWG.Wait()
			a.ask.SetMode(rig.AskAnswer)
			a.ask.SetDelay(0)
			waitFor(t, "the endpoint's requests to end", pollMax, func() bool { return a.ask.InFlight() == 0 })
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			orders := 0
			for _, r := range a.ca.Requests()[ca0:] {
				if r.Kind == rig.KindNewOrder {
					orders++
				}
			}
			results[f.name][impl] = result{asks: a.ask.Requests(), caOrders: orders, legit: legit,
				legitFailed: int(legitFailed.Load()), floodTook: took, heapMB: float64(ms.HeapInuse) / (1 << 20)}
		}
	}

	var b strings.Builder
	fmt.Fprintf(&b, "%-12s %-9s %8s %9s %10s %10s %10s %7s %9s\n", "flood", "permission", "asks", "CA orders", "flood", "legit p50", "legit max", "failed", "heap MB")
	for _, f := range floods {
		for _, impl := range []string{"stock", "certflow"} {
			r := results[f.name][impl]
			sorted := slices.Clone(r.legit)
			slices.Sort(sorted)
			var p50, mx time.Duration
			if len(sorted) > 0 {
				p50, mx = sorted[len(sorted)/2], sorted[len(sorted)-1]
			}
			fmt.Fprintf(&b, "%-12s %-9s %8d %9d %10s %10s %10s %3d/%-3d %9.1f\n", f.name, impl, r.asks, r.caOrders,
				r.floodTook.Round(time.Millisecond), p50.Round(time.Millisecond), mx.Round(time.Millisecond),
				r.legitFailed, len(r.legit), r.heapMB)
		}
	}
	t.Logf("floods against stock `permission http` and tls.permission.certflow (defaults), same run:\n%s", b.String())

	// what the module is for: repeated names reach the endpoint once each,
	// and one address cannot spend more than its budget
	if r := results["repeated"]["certflow"]; r.asks > 100+10 {
		t.Errorf("repeated: %d asks with certflow, want at most 100 bogus names plus 10 legitimate", r.asks)
	}
	if r := results["random-one"]["certflow"]; r.asks > 20+10 {
		t.Errorf("random-one: %d asks with certflow, want at most the budget of 20 plus 10 legitimate", r.asks)
	}
	for _, f := range []string{"repeated", "random-one", "random-many"} {
		if r := results[f]["certflow"]; r.legitFailed != 0 {
			t.Errorf("%s: %d legitimate handshakes failed with certflow", f, r.legitFailed)
		}
	}
}
