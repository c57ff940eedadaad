package issuer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Scheduler decides when a challenge may go live. At most MaxLive challenges
// are live (scheduled until final) at once in this process; waiting ones are
// served with a handshake waiting (urgent) first, then oldest first; a
// challenge whose exclusion key is held by a live one waits without blocking
// the ones behind it. The queue is bounded: past MaxQueued, Acquire fails at
// once with ErrQueueFull instead of making a handshake wait past its client's
// patience. No goroutine is spent on a queued challenge beyond its caller's.
type Scheduler struct {
	mu       sync.Mutex
	limits   SchedulerLimits
	live     int
	liveKeys map[string]int
	queue    []*ticket // kept in service order
	seq      uint64
}

// SchedulerLimits are the scheduler's bounds.
type SchedulerLimits struct {
	// MaxLive is the most live challenges at once. Default 60.
	MaxLive int
	// MaxQueued is the most waiting challenges. Default 1000.
	MaxQueued int
}

// Documented scheduler defaults.
const (
	DefaultMaxLive   = 60
	DefaultMaxQueued = 1000
)

// Ticket describes a challenge asking for a slot.
type Ticket struct {
	// Created orders tickets of the same urgency: oldest first.
	Created time.Time
	// Urgent marks a challenge with a handshake waiting for it.
	Urgent bool
	// Key, if not empty, is an exclusion key: no two live challenges share it.
	Key string
}

type ticket struct {
	Ticket
	seq     uint64
	ready   chan struct{}
	granted bool
}

// ErrQueueFull is returned when too many challenges are already waiting.
var ErrQueueFull = errors.New("too many challenges waiting for the scheduler")

// NewScheduler returns a scheduler with the given limits (zero values take
// the defaults).
func NewScheduler(limits SchedulerLimits) *Scheduler {
	s := &Scheduler{liveKeys: map[string]int{}}
	s.limits = limits.withDefaults()
	return s
}

func (l SchedulerLimits) withDefaults() SchedulerLimits {
	if l.MaxLive <= 0 {
		l.MaxLive = DefaultMaxLive
	}
	if l.MaxQueued <= 0 {
		l.MaxQueued = DefaultMaxQueued
	}
	return l
}

// Configure changes the limits; the latest call wins. Raising MaxLive lets
// waiting challenges go at once; lowering it lets live ones finish.
func (s *Scheduler) Configure(limits SchedulerLimits) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.limits = limits.withDefaults()
	s.dispatchLocked()
}

// Limits returns the limits in force.
func (s *Scheduler) Limits() SchedulerLimits {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.limits
}

// Stats returns the number of live and waiting challenges.
func (s *Scheduler) Stats() (live, queued int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.live, len(s.queue)
}

// Acquire waits for a slot. It returns a release func to call exactly once
// when the challenge is final, or an error if ctx ends first or the queue is
// full.
func (s *Scheduler) Acquire(ctx context.Context, t Ticket) (release func(), err error) {
	s.mu.Lock()
	if len(s.queue) >= s.limits.MaxQueued {
		n := len(s.queue)
		s.mu.Unlock()
		return nil, fmt.Errorf("%w (%d queued, limit %d)", ErrQueueFull, n, s.limits.MaxQueued)
	}
	s.seq++
	tk := &ticket{Ticket: t, seq: s.seq, ready: make(chan struct{})}
	s.insertLocked(tk)
	s.dispatchLocked()
	s.mu.Unlock()

	select {
	case <-tk.ready:
		return s.releaseFunc(tk), nil
	case <-ctx.Done():
		s.mu.Lock()
		defer s.mu.Unlock()
		if tk.granted {
			// granted while we were giving up: hand the slot back
			s.releaseLocked(tk)
		} else {
			s.removeLocked(tk)
		}
		return nil, fmt.Errorf("waiting for a challenge slot: %w", ctx.Err())
	}
}

// TryAcquire grants a slot at once if one is free and nobody is waiting
// ahead of t; it never queues.
func (s *Scheduler) TryAcquire(t Ticket) (release func(), ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.live >= s.limits.MaxLive || (t.Key != "" && s.liveKeys[t.Key] > 0) {
		return nil, false
	}
	s.seq++
	tk := &ticket{Ticket: t, seq: s.seq, ready: make(chan struct{})}
	for _, q := range s.queue {
		if goesBefore(q, tk) {
			return nil, false
		}
	}
	s.live++
	if tk.Key != "" {
		s.liveKeys[tk.Key]++
	}
	tk.granted = true
	close(tk.ready)
	return s.releaseFunc(tk), true
}

func (s *Scheduler) releaseFunc(tk *ticket) func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.releaseLocked(tk)
		})
	}
}

func (s *Scheduler) releaseLocked(tk *ticket) {
	s.live--
	if tk.Key != "" {
		if s.liveKeys[tk.Key]--; s.liveKeys[tk.Key] <= 0 {
			delete(s.liveKeys, tk.Key)
		}
	}
	s.dispatchLocked()
}

// goesBefore is the service order: urgent first, then oldest, then arrival.
func goesBefore(a, b *ticket) bool {
	if a.Urgent != b.Urgent {
		return a.Urgent
	}
	if !a.Created.Equal(b.Created) {
		return a.Created.Before(b.Created)
	}
	return a.seq < b.seq
}

func (s *Scheduler) insertLocked(tk *ticket) {
	i := len(s.queue)
	for i > 0 && goesBefore(tk, s.queue[i-1]) {
		i--
	}
	s.queue = append(s.queue, nil)
	copy(s.queue[i+1:], s.queue[i:])
	s.queue[i] = tk
}

func (s *Scheduler) removeLocked(tk *ticket) {
	for i, q := range s.queue {
		if q == tk {
			s.queue = append(s.queue[:i], s.queue[i+1:]...)
			return
		}
	}
}

// dispatchLocked grants slots in service order, skipping tickets whose
// exclusion key is live.
func (s *Scheduler) dispatchLocked() {
	for i := 0; i < len(s.queue) && s.live < s.limits.MaxLive; {
		tk := s.queue[i]
		if tk.Key != "" && s.liveKeys[tk.Key] > 0 {
			i++
			continue
		}
		s.queue = append(s.queue[:i], s.queue[i+1:]...)
		s.live++
		if tk.Key != "" {
			s.liveKeys[tk.Key]++
		}
		tk.granted = true
		close(tk.ready)
	}
}
