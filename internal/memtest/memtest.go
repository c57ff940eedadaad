// Package memtest holds what the memory tests of several packages share:
// the live heap after a full collection, the heap an object takes as
// allocated, and the goroutines started under a pprof label.
package memtest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"
)

// Live returns the live heap and the stack memory in use after a full
// collection. Two collections, so objects freed by finalizers of the first
// are gone too.
func Live() (heap, stack uint64) {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc, ms.StackInuse
}

// HeapPer returns the live heap each of n values made by mk takes, its
// allocation size class and whatever it points to included: n held at
// once, measured after a collection. mk gets the value's index.
func HeapPer(n int, mk func(i int) any) float64 {
	held := make([]any, n)
	heap0, _ := Live()
	for i := range held {
		held[i] = mk(i)
	}
	heap1, _ := Live()
	runtime.KeepAlive(held)
	return (float64(heap1) - float64(heap0)) / float64(n)
}

// Sudog has the fields of the runtime's sudog (runtime/runtime2.go): the
// record of a goroutine parked on a channel, one per case of a select. It
// is here to be sized (HeapPer), not used.
type Sudog struct {
	G, Next, Prev, Elem      unsafe.Pointer
	AcquireTime, ReleaseTime int64
	Ticket                   uint32
	IsSelect, Success        bool
	Waiters                  uint16
	Parent, WaitLink         unsafe.Pointer
	WaitTail, C              unsafe.Pointer
}

// labelKey is the pprof label every Label carries.
const labelKey = "certflow-memtest"

var labels atomic.Int64

// Label marks the goroutines of one measurement: those started inside Do,
// and every goroutine they start in turn (pprof labels are inherited), so
// that they can be counted apart from the rest of the process.
type Label struct{ value string }

// NewLabel returns a label no other measurement of the process uses.
func NewLabel() Label { return Label{value: strconv.FormatInt(labels.Add(1), 10)} }

// Do runs f on the calling goroutine with the label set; goroutines f
// starts carry it.
func (l Label) Do(f func()) {
	pprof.Do(context.Background(), pprof.Labels(labelKey, l.value), func(context.Context) { f() })
}

// Goroutines counts the live goroutines carrying the label.
func (l Label) Goroutines() (int, error) {
	var buf bytes.Buffer
	if err := pprof.Lookup("goroutine").WriteTo(&buf, 1); err != nil {
		return 0, fmt.Errorf("goroutine profile: %w", err)
	}
	// records are "<count> @ <pcs>", then "# labels: {...}" when labelled
	want := strconv.Quote(labelKey) + ":" + strconv.Quote(l.value)
	n, count := 0, 0
	sc := bufio.NewScanner(&buf)
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		if c, rest, ok := strings.Cut(line, " @ "); ok && rest != "" {
			count, _ = strconv.Atoi(c)
			continue
		}
		if set, ok := strings.CutPrefix(line, "# labels: "); ok && strings.Contains(set, want) {
			n += count
		}
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("reading the goroutine profile: %w", err)
	}
	return n, nil
}

// WaitGoroutines waits (bounded by timeout, polling every millisecond)
// until at most want goroutines carry the label, and returns the last
// count.
func (l Label) WaitGoroutines(want int, timeout time.Duration) (int, error) {
	deadline := time.Now().Add(timeout)
	for {
		n, err := l.Goroutines()
		if err != nil || n <= want || time.Now().After(deadline) {
			return n, err
		}
		time.Sleep(time.Millisecond)
	}
}
