package issuer

import (
	"context"
	"encoding/json"
	"fmt"
	"path"
	"slices"
	"strings"
	"testing"
	"time"
)

// newTestCatalogWriter is a catalog writer of its own, with the writer ID
// a test chooses, that writes only when told (writeEntries): several of
// them are several processes sharing a store.
func newTestCatalogWriter(writer string) *catalogWriter {
	return &catalogWriter{writer: writer, books: map[string]*catalogBook{}, expiries: map[string]*expiryBook{}}
}

// writeEntries applies entries as one round of the writer's loop, and
// writes the records they changed.
func writeEntries(t *testing.T, cw *catalogWriter, s store, entries ...catalogEntry) {
	t.Helper()
	updates := make([]*heldUpdate, 0, len(entries))
	for _, e := range entries {
		updates = append(updates, &heldUpdate{s: s, entry: e})
	}
	if cw.write(updates) {
		t.Fatal("a catalog write failed")
	}
}

// storedRecord is a catalog record as found in storage, read without the
// code under test: its key's parts and its entries.
type storedRecord struct {
	start, writer string
	entries       []catalogEntry
}

// storedRecords returns the catalog records of an hour
// (certflow/<issuer key>/catalog/<hour>/<start>_<writer>.json), by start.
func storedRecords(t *testing.T, s store, hour string) []storedRecord {
	t.Helper()
	ctx := context.Background()
	keys, err := s.storage.List(ctx, path.Join(s.prefix(), "catalog", hour), false)
	if err != nil && !isNotExist(err) {
		t.Fatal(err)
	}
	var out []storedRecord
	for _, k := range keys {
		base := strings.TrimSuffix(path.Base(k), ".json")
		start, writer, ok := strings.Cut(base, "_")
		if !ok {
			t.Fatalf("catalog key %s is not <start>_<writer>.json", k)
		}
		b, err := s.storage.Load(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		var rec struct {
			Version int            `json:"version"`
			Writer  string         `json:"writer"`
			Entries []catalogEntry `json:"entries"`
		}
		if err := json.Unmarshal(b, &rec); err != nil || rec.Version != SchemaVersion || rec.Writer != writer {
			t.Fatalf("catalog record %s: version %d, writer %q (%v)", k, rec.Version, rec.Writer, err)
		}
		out = append(out, storedRecord{start, writer, rec.Entries})
	}
	slices.SortFunc(out, func(a, b storedRecord) int { return strings.Compare(a.start, b.start) })
	return out
}

func catalogTestStore(t *testing.T) store {
	t.Helper()
	s := store{storage: newMemStorage(), issuerKey: "certflow-catalog"}
	if err := writeSentinel(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestCatalogKeysAndWindows: a record's hour, start and writer come from
// its key; its window runs from its start to its writer's next start in
// the hour (or the hour's end), and records are read in the order their
// windows end, latest first.
func TestCatalogKeysAndWindows(t *testing.T) {
	t.Run("keys", func(t *testing.T) {
		tests := []struct {
			key                 string
			ok                  bool
			hour, start, writer string
		}{
			{"certflow/x/catalog/20260301-10/20260301-100000.000000000-0a0b0c0d_w1.json", true,
				"20260301-10", "20260301-100000.000000000-0a0b0c0d", "w1"},
			{"certflow/x/catalog/20260301-10/20260301-100000.000000000-0a0b0c0d_w1", false, "", "", ""},
			{"certflow/x/catalog/20260301-10/20260301-100000.000000000-0a0b0c0d.json", false, "", "", ""},
			{"certflow/x/catalog/20260301-10/_w1.json", false, "", "", ""},
			{"certflow/x/catalog/20260301-10/20260301-100000_.json", false, "", "", ""},
		}
		for _, tt := range tests {
			ref, ok := parseCatalogKey(tt.key)
			if ok != tt.ok || (ok && (ref.hour != tt.hour || ref.start != tt.start || ref.writer != tt.writer || ref.key != tt.key)) {
				t.Errorf("parseCatalogKey(%q) = %+v, %v; want %s %s %s, %v", tt.key, ref, ok, tt.hour, tt.start, tt.writer, tt.ok)
			}
		}
	})
	t.Run("windows", func(t *testing.T) {
		type window struct{ writer, start, end string }
		tests := []struct {
			desc string
			refs []window // writer and start
			want []window // in reading order
		}{
			{"one record: to the end of the hour", []window{{"w1", "a", ""}}, []window{{"w1", "a", ""}}},
			{"one writer: each to the next, the last to the end of the hour",
				[]window{{"w1", "c", ""}, {"w1", "a", ""}, {"w1", "b", ""}},
				[]window{{"w1", "c", ""}, {"w1", "b", "c"}, {"w1", "a", "b"}}},
			{"two writers, interleaved: their own next starts, latest end first",
				[]window{{"w1", "a", ""}, {"w2", "b", ""}, {"w1", "c", ""}, {"w2", "d", ""}},
				[]window{{"w2", "d", ""}, {"w1", "c", ""}, {"w2", "b", "d"}, {"w1", "a", "c"}}},
			{"a long window ending after a later one: read first",
				[]window{{"w1", "a", ""}, {"w2", "b", ""}, {"w2", "c", ""}, {"w1", "d", ""}},
				[]window{{"w1", "d", ""}, {"w2", "c", ""}, {"w1", "a", "d"}, {"w2", "b", "c"}}},
			{"a writer with one record beside another's many",
				[]window{{"w1", "a", ""}, {"w2", "b", ""}, {"w2", "c", ""}, {"w2", "e", ""}},
				[]window{{"w2", "e", ""}, {"w1", "a", ""}, {"w2", "c", "e"}, {"w2", "b", "c"}}},
		}
		for _, tt := range tests {
			t.Run(tt.desc, func(t *testing.T) {
				var refs []catalogRecordRef
				for _, w := range tt.refs {
					refs = append(refs, catalogRecordRef{key: w.start + "_" + w.writer, hour: "h", start: w.start, writer: w.writer, end: "stale"})
				}
				var got []window
				for _, r := range windows(refs) {
					got = append(got, window{r.writer, r.start, r.end})
				}
				if !slices.Equal(got, tt.want) {
					t.Fatalf("windows:\n got %v\nwant %v", got, tt.want)
				}
			})
		}
	})
}

// catalogIDs returns n IDs of hour (base's) spaced 1 ms apart from base
// plus offset, oldest first.
func catalogIDs(base time.Time, offset time.Duration, n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = newID(base.Add(offset + time.Duration(i)*time.Millisecond))
	}
	return ids
}

// TestCatalogWriterStartsNewRecords: a writer starts a new record when the
// last one has catalogRecordSize entries; an entry for an ID in an older
// window goes to that window's record, even once the writer forgot the
// hour (it reads the record back, and keeps what it held); an entry
// before every written record starts one of its own.
func TestCatalogWriterStartsNewRecords(t *testing.T) {
	s := catalogTestStore(t)
	base := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	hour := "20260301-10"
	ids := catalogIDs(base, time.Minute, 2*catalogRecordSize+1)
	cw := newTestCatalogWriter("w1")
	var entries []catalogEntry
	for _, id := range ids {
		entries = append(entries, catalogEntry{Kind: "r", ID: id, Name: "a.test", State: RequestReady, At: 1})
	}
	// two rounds, as a burst is written
	writeEntries(t, cw, s, entries[:700]...)
	writeEntries(t, cw, s, entries[700:]...)
	recs := storedRecords(t, s, hour)
	if len(recs) != 3 {
		t.Fatalf("%d records for %d entries, want 3", len(recs), len(ids))
	}
	for i, want := range []struct {
		start string
		n     int
	}{{ids[0], catalogRecordSize}, {ids[catalogRecordSize], catalogRecordSize}, {ids[2*catalogRecordSize], 1}} {
		if recs[i].start != want.start || len(recs[i].entries) != want.n || recs[i].writer != "w1" {
			t.Errorf("record %d: start %s, %d entries; want %s, %d", i, recs[i].start, len(recs[i].entries), want.start, want.n)
		}
	}

	// a resource of the first window finishes later, in a process that
	// forgot the hour (the same writer, its book gone)
	cw = newTestCatalogWriter("w1")
	writeEntries(t, cw, s, catalogEntry{Kind: "r", ID: ids[10], Name: "a.test", State: RequestFailed, At: 2})
	recs = storedRecords(t, s, hour)
	if len(recs) != 3 || len(recs[0].entries) != catalogRecordSize {
		t.Fatalf("after a late entry: %d records, the first with %d entries; want 3, %d", len(recs), len(recs[0].entries), catalogRecordSize)
	}
	if i := slices.IndexFunc(recs[0].entries, func(e catalogEntry) bool { return e.ID == ids[10] }); i < 0 || recs[0].entries[i].State != RequestFailed {
		t.Fatalf("the late entry is not in its window's record as it is now")
	}

	// one created earlier in the hour than every record
	early := newID(base)
	writeEntries(t, cw, s, catalogEntry{Kind: "o", ID: early, Name: "b.test", State: OrderValid, At: 3})
	recs = storedRecords(t, s, hour)
	if len(recs) != 4 || recs[0].start != early || len(recs[0].entries) != 1 {
		t.Fatalf("an earlier entry: records %d, the first starting %s with %d entries; want 4, %s, 1", len(recs), recs[0].start, len(recs[0].entries), early)
	}
	// and every entry is read back once
	var got []string
	if err := s.walkCatalog(context.Background(), "", "", func(catalogEntry) bool { return true }, func(e catalogEntry) (bool, error) {
		got = append(got, e.ID)
		return false, nil
	}); err != nil {
		t.Fatal(err)
	}
	want := append(slices.Clone(ids), early)
	slices.Sort(want)
	slices.Reverse(want)
	if !slices.Equal(got, want) {
		t.Fatalf("walked %d entries, want %d newest first\n got %v\nwant %v", len(got), len(want), abbrev(got), abbrev(want))
	}
}

// TestWalkCatalogPages: entries of three writers over three hours, each
// writer's in several records, some written late into older windows, are
// walked newest first, each once, in pages from any cursor, by kind, and
// from an hour on.
func TestWalkCatalogPages(t *testing.T) {
	s := catalogTestStore(t)
	ctx := context.Background()
	base := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	kinds := []string{"r", "o", "c"}
	writers := []*catalogWriter{newTestCatalogWriter("w1"), newTestCatalogWriter("w2"), newTestCatalogWriter("w3")}
	var all, later []catalogEntry
	for h := range 3 {
		ids := catalogIDs(base, time.Duration(h)*time.Hour, 1650)
		// w1 and w2 share the hour's IDs, w2 twice as busy: w1's first
		// window runs past w2's second's start. Each writes its own in
		// rounds of 200, in ID order, as their loops do.
		for w, cw := range writers[:2] {
			var mine []catalogEntry
			for i := range ids {
				if (i%3 == 0) != (w == 0) {
					continue
				}
				mine = append(mine, catalogEntry{Kind: kinds[i%7%3], ID: ids[i], Name: fmt.Sprintf("n%d.test", i%5), State: "s", At: 1})
			}
			all = append(all, mine...)
			for len(mine) > 0 {
				n := min(200, len(mine))
				writeEntries(t, cw, s, mine[:n]...)
				mine = mine[n:]
			}
		}
		// w3 writes a few of its own late, over the others' windows
		late := catalogIDs(base, time.Duration(h)*time.Hour+500*time.Microsecond, 7)
		for i, id := range late {
			e := catalogEntry{Kind: "c", ID: id, Name: "late.test", State: "s", At: 1}
			all = append(all, e)
			if i%2 == 0 {
				writeEntries(t, writers[2], s, e)
			} else {
				later = append(later, e)
			}
		}
	}
	// w3's others, once the hours are over, into the windows of records
	// it already wrote
	writeEntries(t, writers[2], s, later...)
	perWriter := map[string]int{}
	for _, r := range storedRecords(t, s, "20260301-11") {
		perWriter[r.writer]++
	}
	if perWriter["w1"] != 2 || perWriter["w2"] != 3 || perWriter["w3"] != 1 {
		t.Fatalf("records of an hour by writer: %v, want w1 two (550 entries), w2 three (1100), w3 one", perWriter)
	}
	slices.SortFunc(all, func(a, b catalogEntry) int { return strings.Compare(b.ID, a.ID) })

	walk := func(after, since string, keep func(catalogEntry) bool, limit int) []string {
		var got []string
		if err := s.walkCatalog(ctx, after, since, keep, func(e catalogEntry) (bool, error) {
			got = append(got, e.ID)
			return len(got) == limit, nil
		}); err != nil {
			t.Fatal(err)
		}
		return got
	}
	wantIDs := func(keep func(catalogEntry) bool, since string) []string {
		var ids []string
		for _, e := range all {
			if keep(e) && (since == "" || catalogHour(e.ID) >= since) {
				ids = append(ids, e.ID)
			}
		}
		return ids
	}
	every := func(catalogEntry) bool { return true }
	for _, tt := range []struct {
		desc   string
		keep   func(catalogEntry) bool
		since  string
		limits []int
	}{
		{"every entry", every, "", []int{100, 450, 10000}},
		{"orders", func(e catalogEntry) bool { return e.Kind == "o" }, "", []int{25, 10000}},
		{"from the second hour on", every, "20260301-11", []int{450, 10000}},
	} {
		for _, limit := range tt.limits {
			t.Run(fmt.Sprintf("%s, pages of %d", tt.desc, limit), func(t *testing.T) {
				want := wantIDs(tt.keep, tt.since)
				var got []string
				after := ""
				for pages := 0; ; pages++ {
					if pages > len(want)+1 {
						t.Fatal("paging does not end")
					}
					page := walk(after, tt.since, tt.keep, limit)
					got = append(got, page...)
					if len(page) < limit {
						break
					}
					after = page[len(page)-1]
				}
				if !slices.Equal(got, want) {
					t.Fatalf("walked %d, want %d newest first\n got %v\nwant %v", len(got), len(want), abbrev(got), abbrev(want))
				}
			})
		}
	}

	t.Run("pages of one across the windows of an hour", func(t *testing.T) {
		want := wantIDs(every, "")
		// from ten entries above the start of w1's second record of the
		// second hour to ten below it, one at a time
		var start string
		for _, r := range storedRecords(t, s, "20260301-11") {
			if r.writer == "w1" && r.start > start {
				start = r.start
			}
		}
		i := slices.Index(want, start)
		if i < 11 {
			t.Fatalf("the record start %s is not among the entries", start)
		}
		after := want[i-11]
		for _, id := range want[i-10 : i+11] {
			page := walk(after, "", every, 1)
			if len(page) != 1 || page[0] != id {
				t.Fatalf("after %s: %v, want %s", after, page, id)
			}
			after = id
		}
	})
}

// listHeads returns the items of a page of q: their IDs and states.
func listHeads(t *testing.T, r Reader, q Query) []resourceHead {
	t.Helper()
	page, err := r.List(context.Background(), q)
	if err != nil {
		t.Fatalf("List(%+v): %v", q, err)
	}
	heads := make([]resourceHead, 0, len(page.Items))
	for _, raw := range page.Items {
		var h resourceHead
		if err := json.Unmarshal(raw, &h); err != nil {
			t.Fatal(err)
		}
		heads = append(heads, h)
	}
	return heads
}

// TestCatalogResumedResourceShowsOnce: an order made by a process that
// died, resumed and finished by another, is in both writers' records; it
// is listed once, as the entry written last says, and as it is stored.
func TestCatalogResumedResourceShowsOnce(t *testing.T) {
	base := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	const name = "resumed.test"
	req, order := newID(base.Add(5*time.Minute)), newID(base.Add(5*time.Minute+time.Millisecond))
	fillers := func(offset time.Duration) []catalogEntry {
		var out []catalogEntry
		for _, id := range catalogIDs(base, offset, 3) {
			out = append(out, catalogEntry{Kind: "c", ID: id, Name: "filler.test", State: ChallengeValid, At: 1})
		}
		return out
	}
	t.Run("in the walk: the later entry", func(t *testing.T) {
		for _, tt := range []struct {
			desc           string
			diedAt, doneAt int64
			want           string
		}{
			{"the resuming process's entry is the later", 1000, 2000, OrderValid},
			{"the first process's entry is the later", 3000, 2000, OrderPending},
		} {
			t.Run(tt.desc, func(t *testing.T) {
				s := catalogTestStore(t)
				// the first process's record starts before the order, the
				// resuming process's at another ID: their windows differ
				writeEntries(t, newTestCatalogWriter("died"), s, append(fillers(time.Minute),
					catalogEntry{Kind: "o", ID: order, Name: name, State: OrderPending, In: storedInName, At: tt.diedAt})...)
				writeEntries(t, newTestCatalogWriter("resumed"), s, append(fillers(3*time.Minute),
					catalogEntry{Kind: "o", ID: order, Name: name, State: OrderValid, In: req, At: tt.doneAt})...)
				var got []catalogEntry
				if err := s.walkCatalog(context.Background(), "", "", func(e catalogEntry) bool { return e.ID == order },
					func(e catalogEntry) (bool, error) {
						got = append(got, e)
						return false, nil
					}); err != nil {
					t.Fatal(err)
				}
				if len(got) != 1 || got[0].State != tt.want {
					t.Fatalf("walked %+v, want the order once, %s", got, tt.want)
				}
			})
		}
	})
	t.Run("in the status views", func(t *testing.T) {
		s := catalogTestStore(t)
		ctx := context.Background()
		// the name's record as the first process left it (request and
		// order in flight), the request's record as the second wrote it
		o := Order{Version: SchemaVersion, ID: order, Request: req, Name: name, Identifiers: []string{name}, State: OrderPending}
		cr := CertificateRequest{Version: SchemaVersion, ID: req, Name: name, Identifiers: []string{name}, State: RequestPending, Order: order}
		rec := NameRecord{Version: SchemaVersion, Name: name, CurrentOrder: order, LastRequest: req, Recent: []string{req},
			Request: &cr, Order: &o}
		if err := s.save(ctx, kindNames, name, &rec); err != nil {
			t.Fatal(err)
		}
		done, doneOrder := cr, o
		done.State, doneOrder.State = RequestReady, OrderValid
		done.OrderRecord = &doneOrder
		if err := s.save(ctx, KindRequest, req, &done); err != nil {
			t.Fatal(err)
		}
		writeEntries(t, newTestCatalogWriter("died"), s, append(fillers(time.Minute),
			catalogEntry{Kind: "r", ID: req, Name: name, State: RequestPending, In: storedInName, At: 1000},
			catalogEntry{Kind: "o", ID: order, Name: name, State: OrderPending, In: storedInName, At: 1000})...)
		writeEntries(t, newTestCatalogWriter("resumed"), s, append(fillers(3*time.Minute),
			catalogEntry{Kind: "r", ID: req, Name: name, State: RequestReady, At: 2000},
			catalogEntry{Kind: "o", ID: order, Name: name, State: OrderValid, In: req, At: 2000})...)
		r := NewReader(s.storage, s.issuerKey)
		for _, tt := range []struct {
			q    Query
			want []resourceHead
		}{
			{Query{Kind: KindOrder}, []resourceHead{{order, name, OrderValid}}},
			{Query{Kind: KindOrder, State: OrderValid}, []resourceHead{{order, name, OrderValid}}},
			{Query{Kind: KindOrder, State: OrderPending}, nil},
			{Query{Kind: KindOrder, Name: name}, []resourceHead{{order, name, OrderValid}}},
			{Query{Kind: KindRequest}, []resourceHead{{req, name, RequestReady}}},
			{Query{Kind: KindRequest, State: RequestPending}, nil},
		} {
			if got := listHeads(t, r, tt.q); !slices.Equal(got, tt.want) {
				t.Errorf("List(%+v) = %+v, want %+v", tt.q, got, tt.want)
			}
		}
	})
}

// TestCatalogStaleEntriesAreChecked: an entry that no longer tells the
// truth (its resource moved on, or is gone) is checked against the
// resource: a list shows the resource as it is stored, a list by state
// does not show it under the state it left, and one that is gone is left
// out without shortening the page.
func TestCatalogStaleEntriesAreChecked(t *testing.T) {
	s := catalogTestStore(t)
	ctx := context.Background()
	base := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	ids := catalogIDs(base, time.Minute, 5)
	chall, goneChall, req, gone, other := ids[0], ids[1], ids[2], ids[3], ids[4]
	// a challenge that ended (its own record: valid), cataloged as presented
	ch := Challenge{Version: SchemaVersion, ID: chall, Order: "o", Name: "c.test", Type: "http-01", State: ChallengeValid}
	if err := s.save(ctx, KindChallenge, chall, &ch); err != nil {
		t.Fatal(err)
	}
	// a request that failed (its own record), cataloged as in flight in
	// its name's record, which no longer holds it
	for _, id := range []string{req, other} {
		cr := CertificateRequest{Version: SchemaVersion, ID: id, Name: "r.test", State: RequestFailed}
		if err := s.save(ctx, KindRequest, id, &cr); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.save(ctx, kindNames, "r.test", &NameRecord{Version: SchemaVersion, Name: "r.test", LastRequest: req}); err != nil {
		t.Fatal(err)
	}
	writeEntries(t, newTestCatalogWriter("w1"), s,
		catalogEntry{Kind: "c", ID: chall, Name: "c.test", State: ChallengePresented, At: 1},
		catalogEntry{Kind: "c", ID: goneChall, Name: "c.test", State: ChallengeValid, At: 1}, // trimmed since
		catalogEntry{Kind: "r", ID: other, Name: "r.test", State: RequestFailed, At: 1},
		catalogEntry{Kind: "r", ID: req, Name: "r.test", State: RequestPending, In: storedInName, At: 1},
		// trimmed since: no record any more
		catalogEntry{Kind: "r", ID: gone, Name: "r.test", State: RequestFailed, At: 1},
	)
	r := NewReader(s.storage, s.issuerKey)
	for _, tt := range []struct {
		q    Query
		want []resourceHead
	}{
		{Query{Kind: KindChallenge}, []resourceHead{{chall, "c.test", ChallengeValid}}},
		{Query{Kind: KindChallenge, State: ChallengePresented}, nil},
		{Query{Kind: KindRequest, Limit: 2}, []resourceHead{{other, "r.test", RequestFailed}, {req, "r.test", RequestFailed}}},
		{Query{Kind: KindRequest, State: RequestPending}, nil},
		{Query{Kind: KindRequest, State: RequestFailed}, []resourceHead{{other, "r.test", RequestFailed}}},
	} {
		if got := listHeads(t, r, tt.q); !slices.Equal(got, tt.want) {
			t.Errorf("List(%+v) = %+v, want %+v", tt.q, got, tt.want)
		}
	}
}

// TestFlushIndexWritesAtOnce: FlushIndex has this process's held catalog
// updates written at once, however long they would otherwise wait, so
// its own status views list what it just did.
func TestFlushIndexWritesAtOnce(t *testing.T) {
	s := catalogTestStore(t)
	id := newID(time.Now())
	cr := CertificateRequest{Version: SchemaVersion, ID: id, Name: "flush.test", State: RequestReady}
	if err := s.saveResource(context.Background(), KindRequest, id, cr.Name, cr.State, &cr); err != nil {
		t.Fatal(err)
	}
	// held for an hour, not catalogDelay: only a flush writes it now
	catalog.mu.Lock()
	u := catalog.held[heldKey{storeID(s), KindRequest, id}]
	if u != nil {
		u.due = time.Now().Add(time.Hour)
	}
	catalog.mu.Unlock()
	if u == nil {
		t.Fatal("the update was written before it was due") // catalogDelay passed between two statements
	}
	FlushIndex(10 * time.Second)
	if got := listHeads(t, NewReader(s.storage, s.issuerKey), Query{Kind: KindRequest}); !slices.Equal(got, []resourceHead{{id, "flush.test", RequestReady}}) {
		t.Fatalf("after FlushIndex: %+v, want the request just written", got)
	}
}
