package bench

import (
	"context"
	"time"
)

// Bounds of waiting for Caddy to go idle before the cached handshakes.
const (
	settleWindow  = 200 * time.Millisecond
	settleMaxCPU  = 10 * time.Millisecond // one clock tick: at most 5% of a CPU
	settleMaxWait = 5 * time.Second
)

// settle waits until process pid used at most settleMaxCPU of CPU time in a
// settleWindow, or settleMaxWait passed, so the cached handshakes time the
// cached path rather than whatever the burst left running (writes an issuer
// finishes after returning, certificates still being obtained after their
// handshake failed). It returns how long it waited.
func settle(ctx context.Context, pid int) (time.Duration, error) {
	start := time.Now()
	prev, err := readCPU(pid)
	if err != nil {
		return 0, err
	}
	for time.Since(start) < settleMaxWait {
		select {
		case <-ctx.Done():
			return time.Since(start), ctx.Err()
		case <-time.After(settleWindow):
		}
		cur, err := readCPU(pid)
		if err != nil {
			return time.Since(start), err
		}
		if cur-prev <= settleMaxCPU {
			return time.Since(start), nil
		}
		prev = cur
	}
	return time.Since(start), nil
}
