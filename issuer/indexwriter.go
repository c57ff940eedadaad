package issuer

import (
	"context"
	"hash/fnv"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"
)

// The index markers are not needed to resume a workflow, only to list
// resources, so they are written off the issuance path by a few background
// writers: on the file system every marker is a synced file, and an
// issuance would otherwise wait for them.
//
// Updates are held for indexDelay and merged per resource before they are
// written: a resource that goes from created to final within the delay (a
// fast issuance) gets its name and final-state markers only, never the
// in-flight marker it would write and delete again. That halves the marker
// writes of a burst, which on a synced file system compete with the
// issuance's own writes for the disk.
//
// The markers of one resource always go to the same writer, so they are
// applied in order. A marker lost in a crash only leaves the resource out of
// lists until it is next saved (a resumed resource re-puts its markers); a
// stale one is harmless (queries check the resource itself). Another node
// lists what this one did at most indexDelay late; this node's own status
// views flush first (FlushIndex). When the last workflow in flight ends,
// there is nothing left to merge with: what is held is handed to the
// writers at once, so a burst's markers are written as it ends rather than
// seconds later, when handshakes for the issued names arrive.

const (
	indexWriters = 4
	// indexDelay is how long an update waits for more of its resource's.
	indexDelay = 2 * time.Second
	// indexTick is how much later than the earliest due update the
	// dispatcher hands updates over, so those due close together go in one
	// pass.
	indexTick = 100 * time.Millisecond
	// maxPendingIndex bounds the updates held back; past it an update is
	// written by the caller, so the backlog never grows without bound.
	maxPendingIndex = 100000
	// indexQueueLength is each writer's queue.
	indexQueueLength = 1024
)

// indexUpdate is the net index change of one resource: from the state the
// index shows to the latest state saved.
type indexUpdate struct {
	s              store
	kind, id, name string
	from, to       string
	due            time.Time
	queue          uint32
}

type indexWriter struct {
	once    sync.Once
	mu      sync.Mutex
	held    map[string]*indexUpdate // by kind/id, not yet handed to a writer
	flushes int                     // FlushIndex calls waiting: hand everything over now
	drain   bool                    // hand everything over at the next dispatch
	running int                     // workflows in flight in this process
	wake    chan struct{}
	queues  [indexWriters]chan *indexUpdate
	pending int           // held or queued updates
	idle    chan struct{} // closed when pending drops to 0
}

var markers indexWriter

// submit records that a resource went from `from` to `to`; its markers are
// written later, merged with the resource's next changes.
func (iw *indexWriter) submit(s store, kind, id, name, from, to string) {
	iw.once.Do(iw.start)
	key := kind + "/" + id
	iw.mu.Lock()
	if u, ok := iw.held[key]; ok {
		u.to, u.s = to, s // the index still shows u.from
		iw.mu.Unlock()
		return
	}
	if len(iw.held) >= maxPendingIndex {
		iw.mu.Unlock()
		writeIndex(&indexUpdate{s: s, kind: kind, id: id, name: name, from: from, to: to})
		return
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(key))
	iw.held[key] = &indexUpdate{
		s: s, kind: kind, id: id, name: name, from: from, to: to,
		due: time.Now().Add(indexDelay), queue: h.Sum32() % indexWriters,
	}
	if iw.pending == 0 {
		iw.idle = make(chan struct{})
	}
	iw.pending++
	// the dispatcher sleeps while nothing is held, and a flush waiting
	// must not wait for this one's delay
	wake := len(iw.held) == 1 || iw.flushes > 0
	iw.mu.Unlock()
	if wake {
		iw.wakeDispatcher()
	}
}

func (iw *indexWriter) done() {
	iw.mu.Lock()
	defer iw.mu.Unlock()
	iw.pending--
	if iw.pending == 0 {
		close(iw.idle)
	}
}

func (iw *indexWriter) start() {
	iw.held = make(map[string]*indexUpdate)
	iw.wake = make(chan struct{}, 1)
	for i := range iw.queues {
		iw.queues[i] = make(chan *indexUpdate, indexQueueLength)
		go func(q chan *indexUpdate) {
			for u := range q {
				writeIndex(u)
				iw.done()
			}
		}(iw.queues[i])
	}
	go iw.dispatch()
}

func (iw *indexWriter) workflowStarted() {
	iw.mu.Lock()
	iw.running++
	iw.mu.Unlock()
}

// workflowEnded hands what is held over to the writers when no workflow is
// left in flight.
func (iw *indexWriter) workflowEnded() {
	iw.once.Do(iw.start)
	iw.mu.Lock()
	iw.running--
	idle := iw.running == 0 && len(iw.held) > 0
	if idle {
		iw.drain = true
	}
	iw.mu.Unlock()
	if idle {
		iw.wakeDispatcher()
	}
}

// dispatch hands due updates to their writers, oldest first, when the
// earliest held one is due (and a tick later, so updates due close together
// go in one pass), or at once when woken by a flush or the end of the last
// workflow. With nothing held it sleeps: an idle Caddy is not woken ten
// times a second for nothing.
func (iw *indexWriter) dispatch() {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case <-timer.C:
		case <-iw.wake:
		}
		due, next := iw.takeDue(time.Now())
		for _, u := range due {
			iw.queues[u.queue] <- u // blocks when a writer is behind: held updates keep merging meanwhile
		}
		timer.Stop()
		if !next.IsZero() {
			timer.Reset(time.Until(next) + indexTick)
		}
	}
}

// takeDue removes and returns the updates to write now, oldest first: the
// due ones, or all of them while a flush waits or after the last workflow
// ended. next is when the earliest update still held is due (zero when
// none is).
func (iw *indexWriter) takeDue(now time.Time) (due []*indexUpdate, next time.Time) {
	iw.mu.Lock()
	defer iw.mu.Unlock()
	all := iw.flushes > 0 || iw.drain
	iw.drain = false
	for key, u := range iw.held {
		switch {
		case all || !u.due.After(now):
			due = append(due, u)
			delete(iw.held, key)
		case next.IsZero() || u.due.Before(next):
			next = u.due
		}
	}
	slices.SortFunc(due, func(a, b *indexUpdate) int { return a.due.Compare(b.due) })
	return due, next
}

// wakeDispatcher makes the dispatcher look at what is held now.
func (iw *indexWriter) wakeDispatcher() {
	select {
	case iw.wake <- struct{}{}:
	default: // a wake is already pending
	}
}

func writeIndex(u *indexUpdate) {
	if u.from == u.to && u.from != "" {
		return // back where the index already is
	}
	ctx, cancel := context.WithTimeout(context.Background(), saveTimeout)
	defer cancel()
	if err := u.s.reindex(ctx, u.kind, u.id, u.name, u.from, u.to); err != nil && u.s.logger != nil {
		u.s.logger.Warn("updating the index", zap.String("resource", u.id), zap.String("kind", u.kind), zap.Error(err))
	}
}

// FlushIndex waits, at most for timeout, until this process has written
// the index updates it holds, so a status view served by this process
// lists what it just did.
func FlushIndex(timeout time.Duration) {
	markers.once.Do(markers.start)
	markers.mu.Lock()
	if markers.pending == 0 {
		markers.mu.Unlock()
		return
	}
	idle := markers.idle
	markers.flushes++
	markers.mu.Unlock()
	defer func() {
		markers.mu.Lock()
		markers.flushes--
		markers.mu.Unlock()
	}()
	markers.wakeDispatcher()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-idle:
	case <-timer.C:
	}
}
