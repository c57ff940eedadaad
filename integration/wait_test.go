package integration

import (
	"testing"
	"time"
)

// pollEvery and pollMax bound every wait in these tests.
const (
	pollEvery = 20 * time.Millisecond
	pollMax   = 30 * time.Second
)

// waitFor polls cond every pollEvery until it holds, for at most timeout,
// and fails the test (naming what) if it never does. It returns how long it
// waited.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) time.Duration {
	t.Helper()
	return waitForDiag(t, what, timeout, cond, nil)
}

// waitForDiag is waitFor that, on timeout, adds diag's description of the
// situation to the failure.
func waitForDiag(t *testing.T, what string, timeout time.Duration, cond func() bool, diag func() string) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(timeout)
	for {
		if cond() {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			msg := ""
			if diag != nil {
				msg = "\n" + diag()
			}
			t.Fatalf("timed out after %s waiting for %s%s", timeout, what, msg)
		}
		time.Sleep(pollEvery)
	}
}
