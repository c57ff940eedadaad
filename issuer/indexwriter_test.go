package issuer

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
)

// recordingStorage is a FileStorage that records the keys written and
// deleted, so a test can tell which markers were ever written.
type recordingStorage struct {
	*certmagic.FileStorage
	mu      sync.Mutex
	stored  []string
	deleted []string
}

func (r *recordingStorage) Store(ctx context.Context, key string, value []byte) error {
	r.mu.Lock()
	r.stored = append(r.stored, key)
	r.mu.Unlock()
	return r.FileStorage.Store(ctx, key, value)
}

func (r *recordingStorage) Delete(ctx context.Context, key string) error {
	r.mu.Lock()
	r.deleted = append(r.deleted, key)
	r.mu.Unlock()
	return r.FileStorage.Delete(ctx, key)
}

// markerWrites returns the index keys stored and deleted so far, with the
// store's index prefix cut off.
func (r *recordingStorage) markerWrites(s store) (stored, deleted []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	cut := func(keys []string) []string {
		var out []string
		for _, k := range keys {
			if rest, ok := strings.CutPrefix(k, s.prefix()+"/"+indexDir+"/"); ok {
				out = append(out, rest)
			}
		}
		slices.Sort(out)
		return out
	}
	return cut(r.stored), cut(r.deleted)
}

// hasMarker reports whether the marker (relative to the index folder) was
// stored.
func (r *recordingStorage) hasMarker(s store, marker string) bool {
	stored, _ := r.markerWrites(s)
	return slices.Contains(stored, marker)
}

// waitMarker waits, at most within, until the marker was stored.
func (r *recordingStorage) waitMarker(t *testing.T, s store, marker string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !r.hasMarker(s, marker) {
		if time.Now().After(deadline) {
			t.Fatalf("marker %s not written within %s", marker, within)
		}
		time.Sleep(indexTick / 4)
	}
}

func TestIndexWriterMergesUpdates(t *testing.T) {
	ctx := context.Background()
	const id = "20261127-120000.000000001-abcd"
	const bucket = "20261127-12/00/00/" + id
	tests := []struct {
		name string
		// steps are the (from, to) saves; a "flush" step flushes between
		steps       [][2]string
		wantStored  []string
		wantDeleted []string
	}{
		{
			name:       "created and finished within the delay: no in-flight marker",
			steps:      [][2]string{{"", OrderPending}, {OrderPending, OrderReady}, {OrderReady, OrderValid}},
			wantStored: []string{"orders/name/a.test/" + id, "orders/state/valid/" + bucket},
		},
		{
			name:        "flushed while in flight, then finished",
			steps:       [][2]string{{"", OrderPending}, {"flush", ""}, {OrderPending, OrderProcessing}, {OrderProcessing, OrderInvalid}},
			wantStored:  []string{"orders/inflight/" + bucket, "orders/name/a.test/" + id, "orders/state/invalid/" + bucket},
			wantDeleted: []string{"orders/inflight/" + bucket},
		},
		{
			name:       "in-flight steps after the first flush write nothing",
			steps:      [][2]string{{"", OrderPending}, {"flush", ""}, {OrderPending, OrderReady}, {OrderReady, OrderProcessing}},
			wantStored: []string{"orders/inflight/" + bucket, "orders/name/a.test/" + id},
		},
		{
			name:        "loaded from storage (markers unknown): all put again",
			steps:       [][2]string{{indexUnknown, OrderValid}},
			wantStored:  []string{"orders/name/a.test/" + id, "orders/state/valid/" + bucket},
			wantDeleted: []string{"orders/inflight/" + bucket},
		},
		{
			name:        "a final state changed (a replaced order)",
			steps:       [][2]string{{"", OrderValid}, {"flush", ""}, {OrderValid, OrderErrored}},
			wantStored:  []string{"orders/name/a.test/" + id, "orders/state/errored/" + bucket, "orders/state/valid/" + bucket},
			wantDeleted: []string{"orders/state/valid/" + bucket},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recordingStorage{FileStorage: &certmagic.FileStorage{Path: t.TempDir()}}
			s := store{storage: rec, issuerKey: "certflow-test"}
			for _, step := range tt.steps {
				if step[0] == "flush" {
					FlushIndex(time.Minute)
					continue
				}
				if err := s.saveResource(ctx, KindOrder, id, "a.test", step[0], step[1], &Order{ID: id, Name: "a.test", State: step[1]}); err != nil {
					t.Fatal(err)
				}
			}
			FlushIndex(time.Minute)
			stored, deleted := rec.markerWrites(s)
			if !slices.Equal(stored, tt.wantStored) {
				t.Errorf("markers stored:\n got %q\nwant %q", stored, tt.wantStored)
			}
			if !slices.Equal(deleted, tt.wantDeleted) {
				t.Errorf("markers deleted:\n got %q\nwant %q", deleted, tt.wantDeleted)
			}
			// and the lists agree with the resource's last state
			page, err := NewReader(rec, s.issuerKey).List(ctx, Query{Kind: KindOrder})
			if err != nil || len(page.Items) != 1 {
				t.Fatalf("unfiltered list: %d items, %v; want the one order", len(page.Items), err)
			}
		})
	}
}

func TestFlushIndexWithNothingHeldReturnsAtOnce(t *testing.T) {
	FlushIndex(time.Minute) // whatever an earlier test left
	start := time.Now()
	FlushIndex(time.Minute)
	if took := time.Since(start); took > time.Second {
		t.Fatalf("FlushIndex with nothing held took %s", took)
	}
}

func TestIndexWriterWritesWhenTheLastWorkflowEnds(t *testing.T) {
	ctx := context.Background()
	FlushIndex(time.Minute) // whatever an earlier test left
	rec := &recordingStorage{FileStorage: &certmagic.FileStorage{Path: t.TempDir()}}
	s := store{storage: rec, issuerKey: "certflow-test"}
	const id = "20261127-120000.000000002-abcd"
	const marker = "requests/state/ready/20261127-12/00/00/" + id

	markers.workflowStarted()
	markers.workflowStarted() // a second workflow still in flight
	for _, step := range [][2]string{{"", RequestPending}, {RequestPending, RequestReady}} {
		if err := s.saveResource(ctx, KindRequest, id, "a.test", step[0], step[1], &CertificateRequest{ID: id, Name: "a.test", State: step[1]}); err != nil {
			t.Fatal(err)
		}
	}
	markers.workflowEnded()
	// three of the writer's ticks pass with a workflow still in flight:
	// what is proven is that nothing happens, so the wait is the point
	time.Sleep(3 * indexTick)
	if rec.hasMarker(s, marker) {
		t.Fatal("markers written while a workflow is still in flight, before their delay")
	}
	markers.workflowEnded() // the last one: written well before the delay
	rec.waitMarker(t, s, marker, indexDelay/2)
}

func TestIndexWriterWritesWhenDue(t *testing.T) {
	ctx := context.Background()
	FlushIndex(time.Minute) // whatever an earlier test left
	rec := &recordingStorage{FileStorage: &certmagic.FileStorage{Path: t.TempDir()}}
	s := store{storage: rec, issuerKey: "certflow-test"}
	const id = "20261127-120000.000000003-abcd"
	markers.workflowStarted() // a workflow in flight: nothing drains early
	defer markers.workflowEnded()
	start := time.Now()
	if err := s.saveResource(ctx, KindOrder, id, "a.test", "", OrderPending, &Order{ID: id, Name: "a.test", State: OrderPending}); err != nil {
		t.Fatal(err)
	}
	rec.waitMarker(t, s, "orders/inflight/20261127-12/00/00/"+id, indexDelay+2*time.Second)
	if took := time.Since(start); took < indexDelay {
		t.Fatalf("the marker was written after %s, before its delay of %s", took, indexDelay)
	}
}
