package issuer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

// grant records the order in which tickets got their slots.
type grantLog struct {
	mu    sync.Mutex
	order []string
}

func (g *grantLog) add(s string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.order = append(g.order, s)
}

func (g *grantLog) get() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.order)
}

// waitQueued waits until the scheduler has n tickets queued.
func waitQueued(t testing.TB, s *Scheduler, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if _, q := s.Stats(); q == n {
			return
		}
		time.Sleep(time.Millisecond)
	}
	_, q := s.Stats()
	t.Fatalf("queued = %d, want %d", q, n)
}

func TestSchedulerOrder(t *testing.T) {
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name    string
		max     int
		tickets []Ticket // queued behind one blocker, in arrival order
		names   []string
		want    []string
	}{
		{
			name:    "oldest first",
			max:     1,
			tickets: []Ticket{{Created: base.Add(3)}, {Created: base.Add(1)}, {Created: base.Add(2)}},
			names:   []string{"c", "a", "b"},
			want:    []string{"a", "b", "c"},
		},
		{
			name:    "waiting handshake before background work",
			max:     1,
			tickets: []Ticket{{Created: base.Add(1)}, {Created: base.Add(2)}, {Created: base.Add(9), Urgent: true}},
			names:   []string{"managed1", "managed2", "ondemand"},
			want:    []string{"ondemand", "managed1", "managed2"},
		},
		{
			name:    "same time: arrival order",
			max:     1,
			tickets: []Ticket{{Created: base}, {Created: base}, {Created: base}},
			names:   []string{"x", "y", "z"},
			want:    []string{"x", "y", "z"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewScheduler(SchedulerLimits{MaxLive: tt.max})
			ctx := context.Background()
			blocker, err := s.Acquire(ctx, Ticket{Created: base, Key: "k"})
			if err != nil {
				t.Fatal(err)
			}
			var log grantLog
			var wg sync.WaitGroup
			for i, tk := range tt.tickets {
				wg.Add(1)
				go func() {
					defer wg.Done()
					release, err := s.Acquire(ctx, tk)
					if err != nil {
						t.Error(err)
						return
					}
					log.add(tt.names[i])
					release()
				}()
				waitQueued(t, s, i+1)
			}
			if got := log.get(); len(got) != 0 {
				t.Fatalf("granted %v while the only slot was held", got)
			}
			blocker()
			wg.Wait()
			if got := log.get(); !slices.Equal(got, tt.want) {
				t.Fatalf("grant order = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestSchedulerCap(t *testing.T) {
	for _, limit := range []int{1, 3, 7} {
		t.Run(fmt.Sprint(limit), func(t *testing.T) {
			s := NewScheduler(SchedulerLimits{MaxLive: limit})
			var mu sync.Mutex
			live, peak := 0, 0
			var wg sync.WaitGroup
			for i := range 40 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					release, err := s.Acquire(context.Background(), Ticket{Created: time.Unix(int64(i), 0)})
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					live++
					if live > peak {
						peak = live
					}
					mu.Unlock()
					// hold the slot a moment, so that the callers overlap:
					// the sleep is the point, there is nothing to wait for
					time.Sleep(time.Millisecond)
					mu.Lock()
					live--
					mu.Unlock()
					release()
				}()
			}
			wg.Wait()
			if peak > limit {
				t.Fatalf("peak live = %d, cap %d", peak, limit)
			}
			if l, q := s.Stats(); l != 0 || q != 0 {
				t.Fatalf("after all released: live %d queued %d", l, q)
			}
		})
	}
}

func TestSchedulerDeadlineAndQueueBound(t *testing.T) {
	tests := []struct {
		name     string
		limits   SchedulerLimits
		timeout  time.Duration
		wantErr  error
		wantLeft int // queued after the failed Acquire
	}{
		{name: "deadline while queued frees the place", limits: SchedulerLimits{MaxLive: 1}, timeout: 20 * time.Millisecond, wantErr: context.DeadlineExceeded},
		{name: "queue full fails at once", limits: SchedulerLimits{MaxLive: 1, MaxQueued: 1}, timeout: time.Minute, wantErr: ErrQueueFull, wantLeft: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewScheduler(tt.limits)
			release, err := s.Acquire(context.Background(), Ticket{})
			if err != nil {
				t.Fatal(err)
			}
			defer release()
			if tt.wantLeft > 0 { // fill the queue
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				go func() { _, _ = s.Acquire(ctx, Ticket{}) }()
				waitQueued(t, s, 1)
			}
			ctx, cancel := context.WithTimeout(context.Background(), tt.timeout)
			defer cancel()
			start := time.Now()
			_, err = s.Acquire(ctx, Ticket{})
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if errors.Is(tt.wantErr, ErrQueueFull) && time.Since(start) > time.Second {
				t.Fatalf("a full queue should fail at once, took %s", time.Since(start))
			}
			if _, q := s.Stats(); q != tt.wantLeft {
				t.Fatalf("queued = %d, want %d", q, tt.wantLeft)
			}
		})
	}
}

func TestSchedulerConfigureRaisesCap(t *testing.T) {
	s := NewScheduler(SchedulerLimits{MaxLive: 1})
	release, _ := s.Acquire(context.Background(), Ticket{})
	defer release()
	got := make(chan func(), 1)
	go func() {
		r, err := s.Acquire(context.Background(), Ticket{})
		if err == nil {
			got <- r
		}
	}()
	waitQueued(t, s, 1)
	s.Configure(SchedulerLimits{MaxLive: 2})
	select {
	case r := <-got:
		r()
	case <-time.After(30 * time.Second):
		t.Fatal("raising the cap did not let the waiting challenge go")
	}
}

func TestSchedulerExclusionKey(t *testing.T) {
	s := NewScheduler(SchedulerLimits{MaxLive: 3})
	ctx := context.Background()
	holder, err := s.Acquire(ctx, Ticket{Key: "_acme-challenge.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	keyed := make(chan func(), 1)
	go func() {
		r, err := s.Acquire(ctx, Ticket{Created: time.Unix(1, 0), Key: "_acme-challenge.example.com"})
		if err == nil {
			keyed <- r
		}
	}()
	waitQueued(t, s, 1)
	// a younger challenge without the key is not blocked by the keyed one
	free, err := s.Acquire(ctx, Ticket{Created: time.Unix(2, 0)})
	if err != nil {
		t.Fatal(err)
	}
	free()
	select {
	case <-keyed:
		t.Fatal("two live challenges share an exclusion key")
	case <-time.After(20 * time.Millisecond):
	}
	holder()
	select {
	case r := <-keyed:
		r()
	case <-time.After(30 * time.Second):
		t.Fatal("the keyed challenge did not go once the key was free")
	}
}
