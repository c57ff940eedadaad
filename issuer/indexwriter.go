package issuer

import (
	"context"
	"hash/fnv"
	"sync"
	"time"

	"go.uber.org/zap"
)

// The index markers are not needed to resume a workflow, only to list
// resources, so they are written off the issuance path by a few background
// writers: on the file system every marker is a synced file, and an
// issuance would otherwise wait for a dozen of them. The markers of one
// resource always go to the same writer, so they are applied in order.
// A marker lost in a crash only leaves the resource out of lists; a stale
// one is harmless (queries check the resource itself).

const (
	indexWriters     = 4
	indexQueueLength = 4096
)

type indexWriter struct {
	once    sync.Once
	queues  [indexWriters]chan func()
	pending sync.WaitGroup
}

var markers indexWriter

// submit queues the index update of one resource. When the queue is full,
// it runs the update itself: the backlog never grows without bound.
func (iw *indexWriter) submit(resourceID string, logger *zap.Logger, update func(context.Context) error) {
	iw.once.Do(iw.start)
	h := fnv.New32a()
	_, _ = h.Write([]byte(resourceID))
	op := func() {
		ctx, cancel := context.WithTimeout(context.Background(), saveTimeout)
		defer cancel()
		if err := update(ctx); err != nil && logger != nil {
			logger.Warn("updating the index", zap.String("resource", resourceID), zap.Error(err))
		}
	}
	iw.pending.Add(1)
	select {
	case iw.queues[h.Sum32()%indexWriters] <- op:
	default:
		op()
		iw.pending.Done()
	}
}

func (iw *indexWriter) start() {
	for i := range iw.queues {
		iw.queues[i] = make(chan func(), indexQueueLength)
		go func(q chan func()) {
			for op := range q {
				op()
				iw.pending.Done()
			}
		}(iw.queues[i])
	}
}

// FlushIndex waits, at most for timeout, until this process has written
// the index updates it queued, so a status view served by this process
// lists what it just did.
func FlushIndex(timeout time.Duration) {
	done := make(chan struct{})
	go func() {
		markers.pending.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(timeout):
	}
}
