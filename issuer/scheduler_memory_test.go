package issuer

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
	"unsafe"

	"github.com/certflow/certflow/internal/memtest"
)

// queueFigures is what a full scheduler queue costs.
type queueFigures struct {
	queued int
	// heapPerQueued is the live heap the scheduler holds per waiting
	// ticket: the ticket, its ready channel, its place in the queue slice
	// and the runtime's record of the caller blocked in Acquire. The
	// callers' goroutines are started (and counted in the baseline) before
	// they call Acquire, so neither their descriptors nor their stacks are
	// in this figure.
	heapPerQueued float64
	// stackPerQueued is how much the callers' own stacks grew when they
	// called Acquire (the caller's memory, not the scheduler's; for
	// information).
	stackPerQueued float64
	// goroutinesPerQueued counts every goroutine the queue needs, the
	// callers' included: exactly 1, the caller's own.
	goroutinesPerQueued float64
	// schedulerGoroutines is what the scheduler started itself, counted
	// among the goroutines descending from the measurement's
	// (memtest.Label): 0.
	schedulerGoroutines int
	// fullTook is how long an Acquire past MaxQueued took to fail.
	fullTook time.Duration
}

// measureQueue fills a scheduler whose single slot is held with n tickets,
// each Acquire called from its own goroutine (standing for the handshake
// that waits for the challenge), measures what they cost, checks that one
// more fails at once with ErrQueueFull, then empties the queue (half the
// callers give up, the other half get the slot in turn) and checks that
// every goroutine is gone. Everything that could start a goroutine — the
// scheduler's construction, every Acquire — runs under a label of its own
// (memtest.Label), so the goroutines counted are the measurement's and
// their descendants, whatever else runs in the process. Anything unexpected fails
// tb, and the figures are returned for the caller to bound and report.
func measureQueue(tb testing.TB, n int) queueFigures {
	tb.Helper()
	label := memtest.NewLabel()
	labelled := label.Do
	goroutines := func() int {
		tb.Helper()
		n, err := label.Goroutines()
		if err != nil {
			tb.Fatal(err)
		}
		return n
	}

	var s *Scheduler
	var holder func()
	var err error
	labelled(func() {
		s = NewScheduler(SchedulerLimits{MaxLive: 1, MaxQueued: n})
		holder, err = s.Acquire(context.Background(), Ticket{})
	})
	if err != nil {
		tb.Fatal(err)
	}
	defer holder()

	// two contexts: the callers of one give up, the others are served
	giveUp, cancelGiveUp := context.WithCancel(context.Background())
	defer cancelGiveUp()
	served, cancelServed := context.WithCancel(context.Background())
	defer cancelServed()
	_, _ = giveUp.Done(), served.Done() // their channels exist before the baseline

	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	gate := make(chan struct{})
	results := make(chan error, n)
	FlushIndex(time.Minute) // index writes an earlier test left
	labelled(func() {
		for i := range n {
			ctx := served
			if i%2 == 0 {
				ctx = giveUp
			}
			// a mix of what the workflow asks for: on-demand and managed,
			// some with an exclusion key (a DNS-01 record name)
			tk := Ticket{Created: base.Add(time.Duration(i)), Urgent: i%3 == 0}
			if i%4 == 0 {
				tk.Key = "_acme-challenge.example.com"
			}
			go func() {
				<-gate
				release, err := s.Acquire(ctx, tk)
				if err == nil {
					release()
				}
				results <- err
			}()
		}
	})
	// don't leave the callers behind if a check below fails
	defer func() {
		select {
		case <-gate:
		default:
			close(gate)
		}
		cancelGiveUp()
		cancelServed()
		holder()
	}()

	callers := goroutines()
	heap0, stack0 := memtest.Live()
	close(gate)
	waitQueued(tb, s, n)
	heap1, stack1 := memtest.Live()
	queuedGoroutines := goroutines()

	f := queueFigures{
		queued:              n,
		heapPerQueued:       (float64(heap1) - float64(heap0)) / float64(n),
		stackPerQueued:      (float64(stack1) - float64(stack0)) / float64(n),
		goroutinesPerQueued: float64(queuedGoroutines) / float64(n),
		schedulerGoroutines: queuedGoroutines - callers,
	}
	if callers != n || queuedGoroutines != n {
		tb.Errorf("goroutines: %d callers started, %d with %d tickets queued; want exactly %d (the callers')",
			callers, queuedGoroutines, n, n)
	}

	// past MaxQueued: refused at once, nothing queued, no goroutine left
	start := time.Now()
	labelled(func() { _, err = s.Acquire(context.Background(), Ticket{Created: base, Urgent: true}) })
	f.fullTook = time.Since(start)
	if !errors.Is(err, ErrQueueFull) {
		tb.Errorf("Acquire with %d queued (MaxQueued %d): err = %v, want ErrQueueFull", n, n, err)
	}
	var tried bool
	labelled(func() { _, tried = s.TryAcquire(Ticket{Created: base, Urgent: true}) })
	if tried {
		tb.Error("TryAcquire got a slot while the only one is held")
	}
	if live, q := s.Stats(); live != 1 || q != n {
		tb.Errorf("after the refused Acquire: live %d, queued %d; want 1, %d", live, q, n)
	}
	if got := goroutines(); got != queuedGoroutines {
		tb.Errorf("goroutines after the refused Acquire: %d, want %d", got, queuedGoroutines)
	}

	// empty the queue: half give up, then the rest are served one by one
	cancelGiveUp()
	holder()
	var gaveUp, got int
	timeout := time.After(30 * time.Second)
	for range n {
		select {
		case err := <-results:
			switch {
			case err == nil:
				got++
			case errors.Is(err, context.Canceled):
				gaveUp++
			default:
				tb.Errorf("Acquire: %v", err)
			}
		case <-timeout:
			tb.Fatalf("queue not emptied within 30s: %d served, %d gave up of %d", got, gaveUp, n)
		}
	}
	if want := (n + 1) / 2; gaveUp != want || got != n-want {
		tb.Errorf("%d callers gave up and %d were served; want %d and %d", gaveUp, got, want, n-want)
	}
	if live, q := s.Stats(); live != 0 || q != 0 {
		tb.Errorf("after emptying the queue: live %d, queued %d; want 0, 0", live, q)
	}
	if left, err := label.WaitGoroutines(0, 10*time.Second); err != nil || left != 0 {
		tb.Errorf("goroutines after emptying the queue: %d of the measurement's left (%v), want 0", left, err)
	}
	return f
}

// queueBound is the most heap the scheduler may hold per queued ticket,
// summed from what a queued ticket is made of, each measured as allocated
// (memtest.HeapPer) rather than assumed.
type queueBound struct {
	// ticket is the scheduler's *ticket.
	ticket float64
	// ready is the ticket's ready channel.
	ready float64
	// sudogs are the runtime's records of the caller parked in Acquire's
	// select: one per case (the ready channel and ctx.Done()). The
	// runtime reuses freed ones (the callers' own wait on the test's gate
	// freed one each), so fewer may be allocated; never more.
	sudogs float64
	// slots is the ticket's share of the queue slice: one pointer, two
	// at most while append has doubled its capacity.
	slots float64
}

func measureQueueBound(n int) queueBound {
	return queueBound{
		ticket: memtest.HeapPer(n, func(int) any { return new(ticket) }),
		ready:  memtest.HeapPer(n, func(int) any { return make(chan struct{}) }),
		sudogs: 2 * memtest.HeapPer(n, func(int) any { return new(memtest.Sudog) }),
		slots:  2 * float64(unsafe.Sizeof((*ticket)(nil))),
	}
}

func (b queueBound) total() float64 { return b.ticket + b.ready + b.sudogs + b.slots }

func (b queueBound) String() string {
	return fmt.Sprintf("%.0f = ticket %.0f + ready channel %.0f + 2 sudogs %.0f + queue slots %.0f",
		b.total(), b.ticket, b.ready, b.sudogs, b.slots)
}

// TestSchedulerQueueMemory: a full queue costs the scheduler no more heap
// per waiting challenge than what a queued ticket is made of (queueBound),
// the scheduler starts no goroutine for it (the only goroutine per ticket is
// its caller's), a ticket past MaxQueued is refused at once, and emptying
// the queue leaves nothing behind.
func TestSchedulerQueueMemory(t *testing.T) {
	const n = DefaultMaxQueued
	bound := measureQueueBound(n)
	f := measureQueue(t, n)
	t.Logf("%d queued tickets: %.0f heap bytes/queued held by the scheduler (bound %s), %.0f caller stack bytes/queued, %.2f goroutines/queued (the callers'), %d started by the scheduler; Acquire past MaxQueued failed in %s",
		f.queued, f.heapPerQueued, bound, f.stackPerQueued, f.goroutinesPerQueued, f.schedulerGoroutines, f.fullTook)
	if f.heapPerQueued > bound.total() {
		t.Errorf("the scheduler holds %.0f heap bytes per queued ticket, more than a queued ticket is made of: %s", f.heapPerQueued, bound)
	}
	if f.schedulerGoroutines != 0 || f.goroutinesPerQueued != 1 {
		t.Errorf("%d goroutines started by the scheduler for %d queued tickets (%.2f per ticket with the callers'); want 0 (1 per ticket)",
			f.schedulerGoroutines, n, f.goroutinesPerQueued)
	}
	if f.fullTook > time.Second {
		t.Errorf("Acquire past MaxQueued took %s to fail; it should fail at once", f.fullTook)
	}
}

// BenchmarkSchedulerQueueMemory fills a queue of 1000 tickets per
// iteration, measures it and empties it; it reports the heap the scheduler
// holds and the goroutines per queued ticket (ns/op is one fill, measure
// and drain, dominated by the forced collections).
func BenchmarkSchedulerQueueMemory(b *testing.B) {
	const n = DefaultMaxQueued
	var heap, stack, goroutines float64
	for range b.N {
		f := measureQueue(b, n)
		heap += f.heapPerQueued
		stack += f.stackPerQueued
		goroutines += f.goroutinesPerQueued
	}
	b.ReportMetric(heap/float64(b.N), "bytes/queued")
	b.ReportMetric(stack/float64(b.N), "caller-stack-bytes/queued")
	b.ReportMetric(goroutines/float64(b.N), "goroutines/queued")
}
