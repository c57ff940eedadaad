package issuer

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// accountWatch decides when a run of 429s is the account's, not the names':
// a 429 whose wording certflow does not recognise is held at the scope of
// the order's own names, but when at least watchUnrecognised of the last
// watchWindow new orders, across at least watchDomains registered domains,
// met such 429s, the limit is the account's. After an account-wide hold,
// new orders go one probing order at a time until one succeeds. A handful
// of stale customer domains each hitting their own limit never holds the
// fleet: that takes half of the recent orders.
type accountWatch struct {
	mu      sync.Mutex
	recent  []orderOutcome // the last watchWindow new orders, oldest first
	probing bool           // after an account hold: one order at a time
	busy    bool           // the probing order is in flight
	changed chan struct{}
}

const (
	watchWindow       = 20
	watchUnrecognised = 10
	watchDomains      = 3
)

type orderOutcome struct {
	unrecognised bool   // refused with a 429 of unrecognised scope
	domain       string // the order's registered domain, if any
}

// record adds a new order's outcome and reports whether the account should
// now be held.
func (w *accountWatch) record(unrecognised bool, domain string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.recent = append(w.recent, orderOutcome{unrecognised, domain})
	if len(w.recent) > watchWindow {
		w.recent = w.recent[len(w.recent)-watchWindow:]
	}
	if !unrecognised {
		return false
	}
	n, domains := 0, map[string]bool{}
	for _, o := range w.recent {
		if o.unrecognised {
			n++
			domains[o.domain] = true
		}
	}
	return n >= watchUnrecognised && len(domains) >= watchDomains
}

// unrecognised is how many recent new orders met 429s of unrecognised scope.
func (w *accountWatch) unrecognised() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, o := range w.recent {
		if o.unrecognised {
			n++
		}
	}
	return n
}

func (w *accountWatch) startProbing() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.probing = true
	w.signalLocked()
}

func (w *accountWatch) stopProbing() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.probing, w.recent = false, nil
	w.signalLocked()
}

func (w *accountWatch) signalLocked() {
	if w.changed != nil {
		close(w.changed)
	}
	w.changed = make(chan struct{})
}

// enter lets a new order go. While the account probes, only one order is
// in flight: another one fails at once when a handshake waits, or waits.
// leave MUST be called with whether the order was created: the first one
// created ends the probing.
func (w *accountWatch) enter(ctx context.Context, interactive bool) (leave func(created bool), err error) {
	for range maxHoldWaits * 64 {
		w.mu.Lock()
		if !w.probing {
			w.mu.Unlock()
			return func(bool) {}, nil
		}
		if !w.busy {
			w.busy = true
			w.mu.Unlock()
			return w.leaveProbe, nil
		}
		if w.changed == nil {
			w.changed = make(chan struct{})
		}
		ch := w.changed
		w.mu.Unlock()
		if interactive {
			return nil, heldUntil(time.Now().Add(probeRetryHint),
				"new orders for the account go one at a time after an account-wide rate limit, until one succeeds; one is in flight")
		}
		select {
		case <-ctx.Done():
			return nil, cutOff(ctx, PartyHold, fmt.Errorf("waiting for the account's probing order: %w", ctx.Err()))
		case <-ch:
		}
	}
	return nil, heldUntil(time.Now().Add(probeRetryHint), "waited too long for the account's probing order")
}

// probeRetryHint is the next attempt a handshake refused during probing is
// told: the probing order takes about that long.
const probeRetryHint = 5 * time.Second

func (w *accountWatch) leaveProbe(created bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.busy = false
	if created {
		w.probing, w.recent = false, nil
	}
	w.signalLocked()
}
