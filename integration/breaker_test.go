package integration

import (
	"fmt"
	"math"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/certflow/certflow/issuer"
)

// TestCAOutageOpensTheCircuit: while the CA answers 503 to everything,
// handshakes for many names keep arriving. The CA receives a bounded number
// of requests meanwhile — what was in flight when the circuit opened, then
// one probe at a time with a doubling wait — not a storm per name; the
// handshakes fail at once. Once the CA is back, every name is issued within
// the circuit's longest wait, and no name's failure count has grown.
func TestCAOutageOpensTheCircuit(t *testing.T) {
	o, rec := observedFaultEnv(t)
	const nNames = 20
	const outage = 8 * time.Second
	var down atomic.Bool
	var during atomic.Int64
	down.Store(true)
	rec.reset(func(_ string, _ int, _ *http.Request) (string, int, http.Header, string, bool) {
		if !down.Load() {
			return "", 0, nil, "", false
		}
		during.Add(1)
		s, h, b, ok := problemResponse(http.StatusServiceUnavailable, "serverInternal", "certflow test: down for maintenance", "")
		return "503", s, h, b, ok
	})

	names := make([]string, nNames)
	for i := range names {
		names[i] = fmt.Sprintf("outage-%d.test", i)
	}
	var recovered time.Time
	var recoveredMu sync.Mutex
	issuedAt := make([]time.Time, nNames)
	slowFailures := make([]int, nNames)
	start := time.Now()
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for attempt := 0; attempt < 1000 && time.Since(start) < outage+2*time.Minute; attempt++ {
				t0 := time.Now()
				_, err := o.handshake(name)
				if err == nil {
					issuedAt[i] = time.Now()
					return
				}
				if down.Load() && time.Since(t0) > 5*time.Second {
					slowFailures[i]++
				}
				time.Sleep(200 * time.Millisecond)
			}
		}()
	}
	time.Sleep(outage)
	requestsDuringOutage := during.Load()
	recoveredMu.Lock()
	recovered = time.Now()
	down.Store(false)
	recoveredMu.Unlock()
	wg.Wait()

	// in flight when it opened (a few requests per name at most, acmez
	// retrying inside one call) plus the probes: one at each doubling wait
	probes := int(math.Log2(float64(outage/issuer.BreakerMinOpen))) + 2
	bound := int64(2*nNames + issuer.BreakerThreshold + 2*probes)
	t.Logf("CA requests during an outage of %s with %d names handshaking every 200 ms: %d (bound %d)", outage, nNames, requestsDuringOutage, bound)
	if requestsDuringOutage > bound {
		t.Errorf("the CA received %d requests during the outage, bound %d: the circuit did not stop the storm", requestsDuringOutage, bound)
	}
	var slowest time.Duration
	for i, name := range names {
		if issuedAt[i].IsZero() {
			t.Errorf("%s was never issued after the CA came back", name)
			continue
		}
		if slowFailures[i] > 0 {
			t.Errorf("%s: %d handshakes took over 5 s to fail during the outage; the open circuit should refuse at once", name, slowFailures[i])
		}
		slowest = max(slowest, issuedAt[i].Sub(recovered))
		if rec := o.nameRecord(name); rec == nil || rec.Failures != 0 || rec.NextAttempt.After(time.Now()) {
			t.Errorf("%s: the outage counted as a failure of the name: %s", name, dump(rec))
		}
	}
	t.Logf("every name issued within %s of the CA's recovery", slowest.Round(time.Millisecond))
	if slowest > issuer.BreakerMaxOpen+10*time.Second {
		t.Errorf("the last name was issued %s after the CA recovered; the circuit's longest wait is %s", slowest, issuer.BreakerMaxOpen)
	}
	if st := o.holds(); len(st.Circuits) == 0 || st.Circuits[0].State != "closed" {
		t.Errorf("circuits after the recovery: %s", dump(st.Circuits))
	}
}
