package issuer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
)

// synthetic is one resource written for the query tests: what List must
// find it by.
type synthetic struct {
	kind, id, name, state string
	request               string // the request it belongs to
}

// writeSynthetic writes n resources of each kind the way the engine keeps
// them: a finished request with its order and challenge in its record, a
// request in flight (every 5th) and its order and challenge in records of
// their own, a challenge whose self-check keeps failing (every 13th) in
// its own record; each name's record with its recent requests; the
// catalog through the background writer. Names cycle over `names`
// distinct values; IDs are spaced 1 ms apart from base, so their order is
// known. It returns every resource written, oldest first.
func writeSynthetic(t testing.TB, s store, n, names int, base time.Time) []synthetic {
	t.Helper()
	ctx := context.Background()
	var out []synthetic
	var mu sync.Mutex
	jobs := make(chan int)
	errs := make(chan error, 1)
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				made, err := writeOne(ctx, s, i, names, base)
				if err != nil {
					select {
					case errs <- err:
					default:
					}
					continue
				}
				mu.Lock()
				out = append(out, made...)
				mu.Unlock()
			}
		}()
	}
	for i := range n {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	slices.SortFunc(out, func(a, b synthetic) int { return cmpString(a.id, b.id) })
	// each name's record, with its latest requests
	recent := map[string][]string{}
	for _, r := range out {
		if r.kind == KindRequest {
			recent[r.name] = append(recent[r.name], r.id)
		}
	}
	for name, ids := range recent {
		if len(ids) > maxRecentRequests {
			ids = ids[len(ids)-maxRecentRequests:]
		}
		rec := &NameRecord{Version: SchemaVersion, Name: name, LastRequest: ids[len(ids)-1], Recent: ids, Updated: base}
		if err := s.save(ctx, kindNames, name, rec); err != nil {
			t.Fatal(err)
		}
	}
	FlushIndex(10 * time.Minute) // the catalog is written in the background
	return out
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// writeOne writes the i-th request, order and challenge.
func writeOne(ctx context.Context, s store, i, names int, base time.Time) ([]synthetic, error) {
	now := base.Add(time.Duration(i) * time.Millisecond)
	name := fmt.Sprintf("name-%03d.test", i%names)

	// requests: every 5th in flight, every 3rd of the rest failed
	cr := &CertificateRequest{Version: SchemaVersion, ID: newID(now), Name: name, Identifiers: []string{name},
		State: RequestPending, Created: now, Updated: now}
	switch {
	case i%5 == 0:
	case i%3 == 0:
		cr.State, cr.Reason = RequestFailed, "synthetic failure"
	default:
		cr.State = RequestReady
	}
	// orders: valid (or invalid every 7th, processing every 11th)
	o := &Order{Version: SchemaVersion, ID: newID(now.Add(100 * time.Microsecond)), Request: cr.ID, Name: name,
		Identifiers: []string{name}, State: OrderValid, Created: now, Updated: now}
	switch {
	case i%11 == 0:
		o.State = OrderProcessing
	case i%7 == 0:
		o.State = OrderInvalid
	}
	cr.Order = o.ID
	// challenges: valid (or errored every 4th), still presented every 13th
	ch := &Challenge{Version: SchemaVersion, ID: newID(now.Add(200 * time.Microsecond)), Order: o.ID, Name: name,
		Type: "http-01", Token: "tok", State: ChallengeValid, Created: now, Updated: now}
	switch {
	case i%13 == 0:
		ch.State = ChallengePresented
	case i%4 == 0:
		ch.State = ChallengeErrored
	}
	o.Challenges = []string{ch.ID}
	out := []synthetic{{KindRequest, cr.ID, name, cr.State, cr.ID}, {KindOrder, o.ID, name, o.State, cr.ID}, {KindChallenge, ch.ID, name, ch.State, cr.ID}}

	if cr.State == RequestPending || ch.State == ChallengePresented {
		// in flight: records of their own
		if err := s.saveResource(ctx, KindChallenge, ch.ID, ch.Name, ch.State, ch); err != nil {
			return nil, err
		}
		if cr.State == RequestPending {
			if err := s.saveResource(ctx, KindOrder, o.ID, o.Name, o.State, o); err != nil {
				return nil, err
			}
			return out, s.saveResource(ctx, KindRequest, cr.ID, cr.Name, cr.State, cr)
		}
	} else {
		cr.ChallengeRecords = []Challenge{*ch}
	}
	cr.OrderRecord = o
	if err := s.save(ctx, KindRequest, cr.ID, cr); err != nil {
		return nil, err
	}
	catalog.submit(s, KindRequest, cr.ID, name, cr.State, "")
	catalog.submit(s, KindOrder, o.ID, name, o.State, cr.ID)
	if len(cr.ChallengeRecords) > 0 {
		catalog.submit(s, KindChallenge, ch.ID, name, ch.State, cr.ID)
	}
	return out, nil
}

// expected returns the IDs List should return for q, newest first: by
// name, those of the name's latest maxRecentRequests requests.
func expected(all []synthetic, q Query) []string {
	recent := map[string]bool{}
	if q.Name != "" {
		var reqs []string
		for _, r := range all {
			if r.kind == KindRequest && r.name == q.Name {
				reqs = append(reqs, r.id)
			}
		}
		for _, id := range reqs[max(0, len(reqs)-maxRecentRequests):] {
			recent[id] = true
		}
	}
	var ids []string
	for i := len(all) - 1; i >= 0; i-- {
		r := all[i]
		if r.kind != q.Kind || (q.Name != "" && (r.name != q.Name || !recent[r.request])) || (q.State != "" && r.state != q.State) {
			continue
		}
		if q.After != "" && r.id >= q.After {
			continue
		}
		ids = append(ids, r.id)
	}
	return ids
}

// listAll pages through q with page size limit and returns every ID, and
// the number of pages.
func listAll(t *testing.T, r Reader, q Query) ([]string, int) {
	t.Helper()
	var ids []string
	pages := 0
	for {
		pages++
		if pages > 10000 {
			t.Fatalf("paging %+v does not end", q)
		}
		page, err := r.List(context.Background(), q)
		if err != nil {
			t.Fatalf("List(%+v): %v", q, err)
		}
		if len(page.Items) > max(q.Limit, 0) && q.Limit > 0 {
			t.Fatalf("List(%+v) returned %d items, more than the limit", q, len(page.Items))
		}
		for _, raw := range page.Items {
			var head resourceHead
			if err := json.Unmarshal(raw, &head); err != nil {
				t.Fatalf("item does not decode: %v: %s", err, raw)
			}
			ids = append(ids, head.ID)
		}
		if page.Next == "" {
			return ids, pages
		}
		if len(page.Items) == 0 {
			t.Fatalf("List(%+v) returned an empty page with a next cursor %q", q, page.Next)
		}
		q.After = page.Next
	}
}

func TestReaderList(t *testing.T) {
	s := store{storage: &certmagic.FileStorage{Path: scratchDir(t)}, issuerKey: "certflow-test"}
	base := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	all := writeSynthetic(t, s, 240, 17, base)
	r := NewReader(s.storage, s.issuerKey)

	queries := []Query{
		{Kind: KindRequest},
		{Kind: KindOrder},
		{Kind: KindChallenge},
		{Kind: KindRequest, Name: "name-003.test"},
		{Kind: KindChallenge, Name: "name-016.test"},
		{Kind: KindRequest, State: RequestFailed},
		{Kind: KindRequest, State: RequestPending},
		{Kind: KindRequest, State: RequestReady},
		{Kind: KindOrder, State: OrderProcessing},
		{Kind: KindOrder, State: OrderInvalid},
		{Kind: KindChallenge, State: ChallengePresented},
		{Kind: KindChallenge, State: ChallengeErrored},
		{Kind: KindChallenge, State: ChallengeQueued}, // none left
		{Kind: KindRequest, Name: "name-005.test", State: RequestFailed},
		{Kind: KindOrder, Name: "name-000.test", State: OrderValid},
		{Kind: KindRequest, Name: "nobody.test"},
	}
	for _, q := range queries {
		limits := []int{7, 100, 1000}
		if q.Name != "" {
			limits = append(limits, 1) // one page per item: cheap when the name has few
		}
		for _, limit := range limits {
			q := q
			q.Limit = limit
			t.Run(fmt.Sprintf("%s name=%s state=%s limit=%d", q.Kind, q.Name, q.State, limit), func(t *testing.T) {
				want := expected(all, q)
				got, pages := listAll(t, r, q)
				if !slices.Equal(got, want) {
					t.Fatalf("got %d IDs, want %d\n got: %v\nwant: %v", len(got), len(want), abbrev(got), abbrev(want))
				}
				if wantPages := max(1, (len(want)+limit-1)/limit); pages < wantPages || pages > wantPages+1 {
					t.Errorf("%d pages for %d items of %d, want %d (or one more, empty)", pages, len(want), limit, wantPages)
				}
			})
		}
	}

	t.Run("after a cursor in the middle", func(t *testing.T) {
		reqs := expected(all, Query{Kind: KindRequest})
		cursor := reqs[123]
		page, err := r.List(context.Background(), Query{Kind: KindRequest, Limit: 5, After: cursor})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, raw := range page.Items {
			var h resourceHead
			_ = json.Unmarshal(raw, &h)
			got = append(got, h.ID)
		}
		if !slices.Equal(got, reqs[124:129]) || page.Next != reqs[128] {
			t.Fatalf("after %s: got %v next %q, want %v next %q", cursor, got, page.Next, reqs[124:129], reqs[128])
		}
	})

	t.Run("a cursor that is not an ID of the kind", func(t *testing.T) {
		// a cursor between two IDs (e.g. the ID of a trimmed resource)
		reqs := expected(all, Query{Kind: KindRequest})
		cursor := reqs[10] + "-"
		page, err := r.List(context.Background(), Query{Kind: KindRequest, Limit: 3, After: cursor})
		if err != nil {
			t.Fatal(err)
		}
		var h resourceHead
		_ = json.Unmarshal(page.Items[0], &h)
		if h.ID != reqs[10] {
			t.Fatalf("first item after %q is %s, want %s", cursor, h.ID, reqs[10])
		}
	})

	t.Run("default and maximum page sizes", func(t *testing.T) {
		page, err := r.List(context.Background(), Query{Kind: KindRequest})
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Items) != 100 || page.Next == "" {
			t.Fatalf("default page: %d items, next %q; want 100 and a cursor", len(page.Items), page.Next)
		}
		page, err = r.List(context.Background(), Query{Kind: KindRequest, Limit: 5000})
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Items) != 240 || page.Next != "" {
			t.Fatalf("large page: %d items, next %q; want all 240 and no cursor", len(page.Items), page.Next)
		}
	})

	t.Run("unknown kind", func(t *testing.T) {
		if _, err := r.List(context.Background(), Query{Kind: "names"}); !errors.Is(err, ErrBadQuery) {
			t.Fatalf("List of kind names: %v, want ErrBadQuery", err)
		}
	})

	t.Run("a resource deleted behind the index is skipped", func(t *testing.T) {
		reqs := expected(all, Query{Kind: KindRequest})
		if err := s.delete(context.Background(), KindRequest, reqs[0]); err != nil {
			t.Fatal(err)
		}
		got, _ := listAll(t, r, Query{Kind: KindRequest, Limit: 50})
		if !slices.Equal(got, reqs[1:]) {
			t.Fatalf("got %d IDs, want %d without the deleted one", len(got), len(reqs)-1)
		}
	})
}

func abbrev(ids []string) []string {
	if len(ids) > 6 {
		return append(slices.Clip(ids[:3]), append([]string{"…"}, ids[len(ids)-3:]...)...)
	}
	return ids
}

func TestReaderStatusAndClearBackoff(t *testing.T) {
	ctx := context.Background()
	s := testStore(t)
	r := NewReader(s.storage, s.issuerKey)

	// no sentinel yet: absence cannot be trusted
	if _, err := r.Status(ctx, "x.test"); !errors.Is(err, ErrStorage) {
		t.Fatalf("Status before the store was ever written: %v, want a storage error", err)
	}
	if err := writeSentinel(ctx, s); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Status(ctx, "x.test"); !errors.Is(err, ErrUnknownName) {
		t.Fatalf("Status of an unknown name: %v, want ErrUnknownName", err)
	}
	if err := r.ClearBackoff(ctx, "x.test"); !errors.Is(err, ErrUnknownName) {
		t.Fatalf("ClearBackoff of an unknown name: %v, want ErrUnknownName", err)
	}

	now := time.Now()
	ch := &Challenge{Version: SchemaVersion, ID: newID(now), Order: "o1", Name: "x.test", Type: "http-01",
		State: ChallengeInvalid, Reason: "the CA could not validate the challenge: connection refused", Created: now}
	o := &Order{Version: SchemaVersion, ID: "o1", Request: "r1", Name: "x.test", State: OrderInvalid,
		Challenges: []string{ch.ID}, Created: now}
	cr := &CertificateRequest{Version: SchemaVersion, ID: "r1", Name: "x.test", State: RequestFailed,
		Reason: o.Reason, Order: o.ID, NextAttempt: now.Add(time.Hour), Created: now}
	rec := &NameRecord{Version: SchemaVersion, Name: "x.test", LastRequest: cr.ID, Failures: 2,
		NextAttempt: now.Add(time.Hour), LastError: "challenge failed"}
	for _, w := range []struct {
		kind, id string
		v        any
	}{{KindChallenge, ch.ID, ch}, {KindOrder, o.ID, o}, {KindRequest, cr.ID, cr}, {kindNames, "x.test", rec}} {
		if err := s.save(ctx, w.kind, w.id, w.v); err != nil {
			t.Fatal(err)
		}
	}

	st, err := r.Status(ctx, "x.test")
	if err != nil {
		t.Fatal(err)
	}
	if !st.BackingOff || st.Request == nil || st.Request.ID != "r1" || st.Order == nil || st.Order.ID != "o1" ||
		len(st.Challenges) != 1 || st.Challenges[0].Reason != ch.Reason {
		t.Fatalf("status: %+v", st)
	}

	if err := r.ClearBackoff(ctx, "x.test"); err != nil {
		t.Fatal(err)
	}
	st, err = r.Status(ctx, "x.test")
	if err != nil {
		t.Fatal(err)
	}
	if st.BackingOff || st.Record.Failures != 0 || !st.Record.NextAttempt.IsZero() {
		t.Fatalf("after ClearBackoff: %+v", st.Record)
	}
	// the lock ClearBackoff took is released
	if err := s.storage.Lock(ctx, "issue_cert_x.test"); err != nil {
		t.Fatal(err)
	}
	_ = s.storage.Unlock(ctx, "issue_cert_x.test")
}

// TestListPageCost: with many resources stored, a page of 100 loads no
// resource the catalog (or the name's record) did not offer as a candidate
// for it: the resources of the name, the state, the kind in flight, or
// the kind, newest first, down to the page's last item (a name's record
// too, for a name); and only the catalog records whose windows reach down
// to that item: one per catalogRecordSize entries of any kind in that
// span, and one more. It returns exactly the expected items. How long a
// page takes is BenchmarkListPage's to measure.
func TestListPageCost(t *testing.T) {
	n := 500
	if testing.Short() {
		n = 200
	}
	s := store{storage: &certmagic.FileStorage{Path: scratchDir(t)}, issuerKey: "certflow-test"}
	fast := store{storage: unsyncedFileStorage{s.storage.(*certmagic.FileStorage)}, issuerKey: s.issuerKey}
	all := writeSynthetic(t, fast, n, 97, time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	for _, q := range listBenchQueries() {
		counted := &loadsByFolder{Storage: s.storage, loads: map[string]int{}}
		r := NewReader(counted, s.issuerKey)
		page, err := r.List(context.Background(), q)
		if err != nil {
			t.Fatalf("List(%+v): %v", q, err)
		}
		var got []string
		for _, raw := range page.Items {
			var head resourceHead
			if err := json.Unmarshal(raw, &head); err != nil {
				t.Fatalf("List(%+v): an item does not decode: %v", q, err)
			}
			got = append(got, head.ID)
		}
		want := expected(all, q)
		want = want[:min(len(want), q.Limit)]
		if len(want) == 0 || !slices.Equal(got, want) {
			t.Errorf("List(%+v): %d items, want the %d newest of %d: got %v, want %v", q, len(got), len(want), len(expected(all, q)), abbrev(got), abbrev(want))
			continue
		}
		last := got[len(got)-1]
		candidates, span := 0, 0
		for _, r := range all {
			if r.id < last {
				continue
			}
			span++
			if r.kind == q.Kind && walkedFolderHolds(q, r) {
				candidates++
			}
		}
		resources := counted.loads[KindRequest] + counted.loads[KindOrder] + counted.loads[KindChallenge]
		names := counted.loads[kindNames]
		records := counted.loads[catalogDir]
		t.Logf("List %-10s name=%-14q state=%-8q limit=%d over %d: %d items, %d resources and %d name records loaded of %d candidates, %d catalog records for %d entries",
			q.Kind, q.Name, q.State, q.Limit, n, len(got), resources, names, candidates, records, span)
		if resources > candidates {
			t.Errorf("List(%+v) loaded %d resources for %d items; %d candidates down to the page's last item", q, resources, len(got), candidates)
		}
		if wantNames := map[bool]int{true: 1, false: 0}[q.Name != ""]; names > wantNames {
			t.Errorf("List(%+v) loaded %d name records, want at most %d", q, names, wantNames)
		}
		if bound := (span+catalogRecordSize-1)/catalogRecordSize + 1; q.Name == "" && records > bound {
			t.Errorf("List(%+v) loaded %d catalog records for %d entries down to the page's last item, want at most %d", q, records, span, bound)
		}
		if q.Name != "" && records != 0 {
			t.Errorf("List(%+v) loaded %d catalog records: a name's list starts from its record", q, records)
		}
	}
}

// loadsByFolder counts the loads of a storage by the folder certflow keeps
// them in (requests, orders, challenges, names, catalog, ...).
type loadsByFolder struct {
	certmagic.Storage
	mu    sync.Mutex
	loads map[string]int
}

func (l *loadsByFolder) Load(ctx context.Context, key string) ([]byte, error) {
	parts := strings.Split(key, "/")
	if len(parts) > 2 {
		l.mu.Lock()
		l.loads[parts[2]]++
		l.mu.Unlock()
	}
	return l.Storage.Load(ctx, key)
}

// walkedFolderHolds reports whether List offers r as a candidate for q:
// the name's resources for a name, those in flight for a state that is
// not final, those in the state for a final one, or every one of the kind.
func walkedFolderHolds(q Query, r synthetic) bool {
	switch {
	case q.Name != "":
		return r.name == q.Name
	case q.State != "" && !IsFinal(q.Kind, q.State):
		return !IsFinal(r.kind, r.state)
	case q.State != "":
		return r.state == q.State
	}
	return true
}

func listBenchQueries() []Query {
	return []Query{
		{Kind: KindRequest, Limit: 100},
		{Kind: KindRequest, Limit: 100, Name: "name-042.test"},
		{Kind: KindRequest, Limit: 100, State: RequestFailed},
		{Kind: KindRequest, Limit: 100, State: RequestPending},
		{Kind: KindChallenge, Limit: 100, State: ChallengePresented},
	}
}

func timeList(t testing.TB, r Reader, q Query) time.Duration {
	start := time.Now()
	page, err := r.List(context.Background(), q)
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Items) == 0 {
		t.Fatalf("List(%+v) found nothing", q)
	}
	return time.Since(start)
}

// BenchmarkListPage measures one page of 100 with many stored resources:
// CERTFLOW_BENCH_RESOURCES of each kind (default 100000), written once into
// CERTFLOW_BENCH_DIR (default a new directory under /dev/shm when there is
// one, else a temporary directory; a CERTFLOW_BENCH_DIR that already holds
// them is reused, so a second run skips the writing).
//
//	go test ./issuer -run '^$' -bench ListPage -benchtime 20x
func BenchmarkListPage(b *testing.B) {
	n := 100000
	if v := os.Getenv("CERTFLOW_BENCH_RESOURCES"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil {
			b.Fatal(err)
		}
	}
	dir := os.Getenv("CERTFLOW_BENCH_DIR")
	if dir == "" {
		dir = scratchDir(b)
	}
	fs := &certmagic.FileStorage{Path: dir}
	s := store{storage: fs, issuerKey: "certflow-bench"}
	marker := filepath.Join(dir, fmt.Sprintf("written-%d", n))
	if _, err := os.Stat(marker); err != nil {
		start := time.Now()
		writeSynthetic(b, store{storage: unsyncedFileStorage{fs}, issuerKey: s.issuerKey}, n, 997, time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
		b.Logf("wrote %d resources of each kind in %s", n, time.Since(start).Round(time.Second))
		if err := os.WriteFile(marker, nil, 0o600); err != nil {
			b.Fatal(err)
		}
	}
	r := NewReader(fs, s.issuerKey)
	for _, q := range listBenchQueries() {
		b.Run(fmt.Sprintf("%s/name=%s/state=%s", q.Kind, q.Name, q.State), func(b *testing.B) {
			for b.Loop() {
				timeList(b, r, q)
			}
		})
	}
}

// unsyncedFileStorage writes like certmagic.FileStorage, at the same
// paths, without an fsync per file: only to fill a test directory quickly.
type unsyncedFileStorage struct{ *certmagic.FileStorage }

func (u unsyncedFileStorage) Store(_ context.Context, key string, value []byte) error {
	name := u.Filename(key)
	if err := os.MkdirAll(filepath.Dir(name), 0o700); err != nil {
		return err
	}
	return os.WriteFile(name, value, 0o600)
}

// scratchDir is a directory removed at the end of the test, in memory
// (/dev/shm) when the system has it: creating files on some CI disks costs
// a millisecond each, and these tests create tens of thousands.
func scratchDir(t testing.TB) string {
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		if dir, err := os.MkdirTemp("/dev/shm", "certflow-query-test-"); err == nil {
			t.Cleanup(func() { _ = os.RemoveAll(dir) })
			return dir
		}
	}
	return t.TempDir()
}
