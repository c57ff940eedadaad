package bench

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// outcome is the result of one handshake of a burst.
type outcome struct {
	name string
	took time.Duration
	err  error
}

// burst handshakes every name once with do, with at most concurrency calls
// in flight, and returns the outcomes in the order of names. It returns when
// every call has returned; do bounds each call in time.
func burst(ctx context.Context, names []string, concurrency int, do func(ctx context.Context, name string) (time.Duration, error)) []outcome {
	out := make([]outcome, len(names))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(concurrency, len(names)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(names) {
					return
				}
				took, err := do(ctx, names[i])
				out[i] = outcome{name: names[i], took: took, err: err}
			}
		}()
	}
	wg.Wait()
	return out
}
