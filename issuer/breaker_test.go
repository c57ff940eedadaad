package issuer

import (
	"errors"
	"testing"
	"time"
)

// TestBreaker walks the circuit through an outage: closed until
// BreakerThreshold failed responses in a row; open (refusing) for a
// doubling wait; then one probe at a time; closed by the first answer.
func TestBreaker(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	b := newBreaker()
	b.now = func() time.Time { return now }
	step := func(desc string, f func()) {
		f()
		t.Logf("%s: %+v", desc, b.snapshot())
	}
	admitted := func() (bool, error) { return b.admit() }

	for i := 1; i < BreakerThreshold; i++ {
		b.failed("503", 0)
	}
	if _, err := admitted(); err != nil || b.snapshot().State != breakerClosed {
		t.Fatalf("opened before %d failures: %v", BreakerThreshold, err)
	}
	b.succeeded()
	for range BreakerThreshold {
		b.failed("503", 0)
	}
	if st := b.snapshot(); st.State != breakerOpen || !st.Until.Equal(now.Add(BreakerMinOpen)) {
		t.Fatalf("after %d failures in a row: %+v", BreakerThreshold, st)
	}
	if _, err := admitted(); !errors.Is(err, ErrCircuitOpen) {
		t.Fatalf("an open circuit admitted a call: %v", err)
	}
	if err := b.refusesNow(now); err == nil {
		t.Fatal("refusesNow let a handshake through an open circuit")
	}

	// the wait doubles with each failed probe, up to the cap
	wait := BreakerMinOpen
	for range 8 {
		now = now.Add(wait)
		if err := b.refusesNow(now); err != nil {
			t.Fatalf("no probe may go when the wait is over: %v", err)
		}
		probe, err := admitted()
		if err != nil || !probe {
			t.Fatalf("the first call after the wait is not the probe: %v %v", probe, err)
		}
		if _, err := admitted(); err == nil {
			t.Fatal("a second call went while the probe was in flight")
		}
		if !b.allows(true) || b.allows(false) {
			t.Fatal("the transport must let the probe's requests through, and no other")
		}
		step("probe failed", func() { b.failed("503", 0) })
		wait = min(wait*2, BreakerMaxOpen)
		if st := b.snapshot(); !st.Until.Equal(now.Add(wait)) {
			t.Fatalf("after a failed probe the circuit opens for %s, want %s", st.Until.Sub(now), wait)
		}
	}
	// a 503's Retry-After is honoured (capped)
	now = now.Add(wait)
	_, _ = admitted()
	b.failed("503", time.Hour)
	if st := b.snapshot(); !st.Until.Equal(now.Add(breakerMaxRetryAfter)) {
		t.Fatalf("a Retry-After of an hour opened it until %s", st.Until.Sub(now))
	}
	// a probe cut off without an answer lets another go
	now = now.Add(breakerMaxRetryAfter)
	if probe, _ := admitted(); !probe {
		t.Fatal("no probe")
	}
	b.probeEnded()
	if probe, err := admitted(); err != nil || !probe {
		t.Fatalf("after a probe ended without an answer, another probe may go: %v %v", probe, err)
	}
	b.succeeded()
	if st := b.snapshot(); st.State != breakerClosed || st.Failures != 0 {
		t.Fatalf("the first answer closes it: %+v", st)
	}
}
