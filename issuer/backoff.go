package issuer

import (
	"fmt"
	"time"
)

// backoffFor is the wait after the n-th consecutive failure (n ≥ 1) of a
// name: initial, doubling up to max.
func backoffFor(n int, initial, max time.Duration) time.Duration {
	d := initial
	for i := 1; i < n && d < max; i++ {
		d *= 2
	}
	return min(d, max)
}

// backoffReason is the stable message of a name backing off.
func backoffReason(rec *NameRecord) string {
	return fmt.Sprintf("backing off after %d failed attempt(s), last: %s; next attempt at %s",
		rec.Failures, rec.LastError, rec.NextAttempt.UTC().Format(time.RFC3339))
}

// nextTypeOffset rotates the type preference past the type that failed.
func nextTypeOffset(types []string, failed string) int {
	for i, t := range types {
		if t == failed {
			return (i + 1) % len(types)
		}
	}
	return 0
}
