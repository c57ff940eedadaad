package integration

import (
	"fmt"
	"sync"
	"time"
)

// handshakeResult is the outcome of one asynchronous handshake.
type handshakeResult struct {
	name string
	err  error
	took time.Duration
}

// handshakeAsync starts a handshake for each name in its own goroutine. The
// returned wait collects every result (each handshake is bounded by the
// harness's 30 s timeout); at cleanup the names are unblocked and wait is
// called, so no goroutine outlives the test.
func (e *env) handshakeAsync(names ...string) (wait func() map[string]handshakeResult) {
	results := make(chan handshakeResult, len(names))
	var wg sync.WaitGroup
	for _, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			leaf, err := e.handshake(n)
			if err == nil && !contains(leaf.DNSNames, n) {
				err = fmt.Errorf("got a certificate for %v", leaf.DNSNames)
			}
			results <- handshakeResult{name: n, err: err, took: time.Since(start)}
		}()
	}
	var once sync.Once
	out := map[string]handshakeResult{}
	wait = func() map[string]handshakeResult {
		once.Do(func() {
			wg.Wait()
			close(results)
			for r := range results {
				out[r.name] = r
			}
		})
		return out
	}
	e.t.Cleanup(func() {
		// a test that stopped early must not leave the handshakes (and the
		// scheduler slots) waiting for blocked names
		e.unblock(names...)
		wait()
	})
	return wait
}
