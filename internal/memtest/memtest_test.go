package memtest

import (
	"testing"
	"time"
)

func TestLabelCountsItsGoroutinesAndTheirs(t *testing.T) {
	l, other := NewLabel(), NewLabel()
	stop := make(chan struct{})
	started := make(chan struct{}, 8)
	l.Do(func() {
		for range 3 {
			go func() {
				// a goroutine started by a labelled one carries the label too
				go func() { started <- struct{}{}; <-stop }()
				started <- struct{}{}
				<-stop
			}()
		}
	})
	other.Do(func() { go func() { started <- struct{}{}; <-stop }() })
	go func() { started <- struct{}{}; <-stop }() // unlabelled
	for range 8 {
		<-started
	}
	if n, err := l.Goroutines(); err != nil || n != 6 {
		t.Errorf("Goroutines() = %d, %v; want 6", n, err)
	}
	if n, err := other.Goroutines(); err != nil || n != 1 {
		t.Errorf("other label: Goroutines() = %d, %v; want 1", n, err)
	}
	close(stop)
	if n, err := l.WaitGoroutines(0, 10*time.Second); err != nil || n != 0 {
		t.Errorf("after they ended: %d goroutines, %v; want 0", n, err)
	}
}

func TestHeapPerSizesWhatIsHeld(t *testing.T) {
	const n = 1000
	if got := HeapPer(n, func(int) any { return new([128]byte) }); got < 120 || got > 136 {
		t.Errorf("HeapPer of a 128-byte array = %.0f, want about 128", got)
	}
	if got := HeapPer(n, func(int) any { return new([100]byte) }); got < 104 || got > 120 {
		t.Errorf("HeapPer of a 100-byte array = %.0f, want its size class, 112", got)
	}
}
