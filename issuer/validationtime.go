package issuer

import (
	"sync/atomic"
	"time"
)

// validationTime is a moving average of how long the CA takes to validate
// a challenge once accepted, as the polls of this engine saw it. The first
// poll of an authorization waits for most of it: the CA validates
// asynchronously, so polling at once would only read "pending" again,
// and in a burst every wasted poll is a signed request both sides pay for.
//
// It also counts the validations this engine awaits at once: a CA
// validating a burst of our challenges takes longer for each of them, so
// the gaps between polls widen with the burst (see pollStep) before the
// average has learned anything from it.
type validationTime struct {
	avg      atomic.Int64 // nanoseconds, 0 until observed
	awaiting atomic.Int64 // challenges accepted and not yet decided
}

// perAwaitingStep widens the poll gap for each validation awaited at once.
const perAwaitingStep = time.Millisecond

// maxFirstPollWait bounds the first wait, whatever a slow validation taught.
const maxFirstPollWait = 2 * time.Second

// observe adds one validation's time, weighted 1/4 against the past.
func (v *validationTime) observe(d time.Duration) {
	for range 100 { // bounded: contention only from other observers
		old := v.avg.Load()
		next := int64(d)
		if old != 0 {
			next = old + (int64(d)-old)/4
		}
		if v.avg.CompareAndSwap(old, next) {
			return
		}
	}
}

// firstPollWait is how long to wait after accepting before the first
// poll: three quarters of the average (what the polls saw includes their
// own spacing, so it runs long), 0 before anything was observed.
func (v *validationTime) firstPollWait() time.Duration {
	return min(time.Duration(v.avg.Load())*3/4, maxFirstPollWait)
}

// pollStep is the first gap between the polls that follow the first: an
// eighth of the average, or a millisecond per validation awaited at once,
// whichever is longer, so a validation slowed by a burst is polled a few
// times, not the dozen a fixed 2 ms start would take.
func (v *validationTime) pollStep() time.Duration {
	step := max(time.Duration(v.avg.Load())/8, time.Duration(v.awaiting.Load())*perAwaitingStep, minPollStep)
	return min(step, maxFirstPollWait/8)
}
