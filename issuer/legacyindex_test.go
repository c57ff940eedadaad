package issuer

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"
)

// The previous release kept every resource under its own key and, written
// by its background index writer, empty marker keys (its issuer/index.go):
//
//	certflow/<issuer key>/index/<kind>/name/<name>/<id>
//	certflow/<issuer key>/index/<kind>/inflight/<YYYYMMDD-HH>/<MM>/<SS>/<id>        while not final
//	certflow/<issuer key>/index/<kind>/state/<state>/<YYYYMMDD-HH>/<MM>/<SS>/<id>   once final
//
// The helpers below write exactly that, with the paths spelled out here
// rather than taken from the code under test.

// legacyMarkers are the marker keys the previous release wrote for a
// resource: by name, and in flight or by its final state; staleInflight
// adds the in-flight marker a crash between its two writes left beside the
// final one.
func legacyMarkers(issuerKey, kind, id, name, state string, staleInflight bool) []string {
	safe := certmagic.StorageKeys.Safe
	root := path.Join("certflow", safe(issuerKey), "index", kind)
	buckets := path.Join(id[:11], id[11:13], id[13:15])
	keys := []string{path.Join(root, "name", safe(name), safe(id))}
	if !IsFinal(kind, state) || staleInflight {
		keys = append(keys, path.Join(root, "inflight", buckets, safe(id)))
	}
	if IsFinal(kind, state) {
		keys = append(keys, path.Join(root, "state", safe(state), buckets, safe(id)))
	}
	return keys
}

// putLegacy writes a resource as the previous release did: its record
// under its own key, and its empty markers. It returns the markers.
func putLegacy(t testing.TB, storage certmagic.Storage, issuerKey, kind, id, name, state string, staleInflight bool, v any) []string {
	t.Helper()
	ctx := context.Background()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	own := path.Join("certflow", certmagic.StorageKeys.Safe(issuerKey), kind, certmagic.StorageKeys.Safe(id)+".json")
	if err := storage.Store(ctx, own, b); err != nil {
		t.Fatal(err)
	}
	markers := legacyMarkers(issuerKey, kind, id, name, state, staleInflight)
	for _, k := range markers {
		if err := storage.Store(ctx, k, nil); err != nil {
			t.Fatal(err)
		}
	}
	return markers
}

// legacyIssuance is what seedLegacy wrote for one issuance.
type legacyIssuance struct {
	name                   string
	request, order, chall  string
	requestState, inFlight string
	markers                []string
}

// seedLegacy writes n issuances as the previous release did, 7 minutes
// apart from base (so over several hours' folders): every 4th still in
// flight (request pending, order pending, challenge presented), every 4th
// from the second failed (request failed, order and challenge invalid),
// the others ready; every 5th from the third with a stale in-flight marker
// beside its final ones. Names cycle over old-0..2.test, every 6th from
// the sixth is shared, a name the new release also issues for. Each
// old-N.test gets its record as the previous release wrote it (latest
// request, order in flight, failures). It returns every resource written
// (as query_test.go's synthetic ones) and the issuances.
func seedLegacy(t testing.TB, s store, n int, base time.Time, shared string) ([]synthetic, []legacyIssuance) {
	t.Helper()
	ctx := context.Background()
	var all []synthetic
	var issuances []legacyIssuance
	records := map[string]*NameRecord{}
	for i := range n {
		now := base.Add(time.Duration(i) * 7 * time.Minute)
		name := fmt.Sprintf("old-%d.test", i%3)
		if i%6 == 5 {
			name = shared
		}
		reqState, orderState, challState := RequestReady, OrderValid, ChallengeValid
		switch i % 4 {
		case 0:
			reqState, orderState, challState = RequestPending, OrderPending, ChallengePresented
		case 1:
			reqState, orderState, challState = RequestFailed, OrderInvalid, ChallengeInvalid
		}
		stale := i%5 == 2
		cr := &CertificateRequest{Version: SchemaVersion, ID: newID(now), Name: name, Identifiers: []string{name},
			State: reqState, Attempt: 1, Created: now, Updated: now}
		o := &Order{Version: SchemaVersion, ID: newID(now.Add(100 * time.Microsecond)), Request: cr.ID, Name: name,
			Identifiers: []string{name}, State: orderState, Created: now, Updated: now}
		ch := &Challenge{Version: SchemaVersion, ID: o.ID + "-a0-1", Order: o.ID, Name: name, Type: acme.ChallengeTypeHTTP01,
			Token: "tok", State: challState, Created: now, Updated: now}
		cr.Order, o.Challenges = o.ID, []string{ch.ID}
		if reqState == RequestFailed {
			cr.Reason, o.Reason, ch.Reason = "the CA refused", "the CA refused", "the CA refused"
		}
		is := legacyIssuance{name: name, request: cr.ID, order: o.ID, chall: ch.ID, requestState: reqState}
		for _, r := range []struct {
			kind, id, state string
			v               any
		}{{KindRequest, cr.ID, reqState, cr}, {KindOrder, o.ID, orderState, o}, {KindChallenge, ch.ID, challState, ch}} {
			is.markers = append(is.markers, putLegacy(t, s.storage, s.issuerKey, r.kind, r.id, name, r.state, stale, r.v)...)
			all = append(all, synthetic{r.kind, r.id, name, r.state, cr.ID})
		}
		issuances = append(issuances, is)
		if name == shared {
			continue
		}
		rec := records[name]
		if rec == nil {
			rec = &NameRecord{Version: SchemaVersion, Name: name}
			records[name] = rec
		}
		rec.LastRequest, rec.Updated, rec.CurrentOrder = cr.ID, now, ""
		switch reqState {
		case RequestPending:
			rec.CurrentOrder = o.ID
		case RequestFailed:
			rec.Failures++
			rec.NextAttempt, rec.LastError = now.Add(time.Hour), "the CA refused"
		default:
			rec.Failures, rec.NextAttempt, rec.LastError = 0, time.Time{}, ""
		}
	}
	for name, rec := range records {
		if err := s.save(ctx, kindNames, name, rec); err != nil {
			t.Fatal(err)
		}
	}
	return all, issuances
}

// TestReaderListsLegacyIndex: in a store a cluster is being upgraded in
// (resources the previous release wrote, with its markers, beside
// resources the new one wrote, with the catalog, for some of the same
// names) the status views list everything once, newest first, by kind,
// by state and by name, and a name of the previous release shows its
// status.
func TestReaderListsLegacyIndex(t *testing.T) {
	s := store{storage: &certmagic.FileStorage{Path: scratchDir(t)}, issuerKey: "certflow-test"}
	if err := writeSentinel(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	base := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	// the previous release's, over 10:00 to 13:30; the new release's, at
	// 11:00 within a second, in between
	legacy, issuances := seedLegacy(t, s, 30, base, "name-001.test")
	fresh := writeSynthetic(t, s, 60, 7, base.Add(time.Hour))
	all := slices.Concat(legacy, fresh)
	slices.SortFunc(all, func(a, b synthetic) int { return strings.Compare(a.id, b.id) })
	r := NewReader(s.storage, s.issuerKey)

	queries := []Query{
		{Kind: KindRequest},
		{Kind: KindOrder},
		{Kind: KindChallenge},
		{Kind: KindRequest, State: RequestFailed},
		{Kind: KindRequest, State: RequestPending},
		{Kind: KindRequest, State: RequestReady},
		{Kind: KindOrder, State: OrderPending},
		{Kind: KindOrder, State: OrderInvalid},
		{Kind: KindChallenge, State: ChallengePresented},
		{Kind: KindChallenge, State: ChallengeInvalid},
		{Kind: KindChallenge, State: ChallengeValid},
		{Kind: KindRequest, Name: "old-1.test"},
		{Kind: KindOrder, Name: "old-2.test"},
		{Kind: KindChallenge, Name: "old-0.test"},
		{Kind: KindRequest, Name: "name-001.test"},
		{Kind: KindChallenge, Name: "name-001.test"},
		{Kind: KindRequest, Name: "old-1.test", State: RequestFailed},
	}
	for _, q := range queries {
		for _, limit := range []int{4, 1000} {
			q := q
			q.Limit = limit
			t.Run(fmt.Sprintf("%s name=%s state=%s limit=%d", q.Kind, q.Name, q.State, limit), func(t *testing.T) {
				want := expected(all, q)
				if len(want) == 0 {
					t.Fatal("the query expects nothing: it tests nothing")
				}
				got, _ := listAll(t, r, q)
				if !slices.Equal(got, want) {
					t.Fatalf("got %d IDs, want %d\n got: %v\nwant: %v", len(got), len(want), abbrev(got), abbrev(want))
				}
			})
		}
	}
	// the previous release's requests of a shared name are listed beside
	// the new release's
	if got, _ := listAll(t, r, Query{Kind: KindRequest, Name: "name-001.test", Limit: 1000}); !slices.ContainsFunc(got, func(id string) bool {
		return slices.ContainsFunc(issuances, func(is legacyIssuance) bool { return is.request == id })
	}) {
		t.Errorf("no request of the previous release listed for name-001.test: %v", got)
	}

	t.Run("status of a name the previous release worked on", func(t *testing.T) {
		var last legacyIssuance
		for _, is := range issuances {
			if is.name == "old-1.test" {
				last = is
			}
		}
		st, err := r.Status(context.Background(), "old-1.test")
		if err != nil {
			t.Fatal(err)
		}
		if st.Request == nil || st.Request.ID != last.request || st.Request.State != last.requestState {
			t.Fatalf("request: %+v, want %s (%s)", st.Request, last.request, last.requestState)
		}
		if st.Order == nil || st.Order.ID != last.order || len(st.Challenges) != 1 || st.Challenges[0].ID != last.chall {
			t.Fatalf("order %+v, challenges %+v; want %s with %s", st.Order, st.Challenges, last.order, last.chall)
		}
	})
}

// TestLegacyBackoffHonoured: a name the previous release backed off (its
// record exactly as it wrote it) is not ordered again by this release
// until its next attempt, and its status says it backs off.
func TestLegacyBackoffHonoured(t *testing.T) {
	const name = "backoff.example"
	r := newBranchRig(t, nil)
	ctx := context.Background()
	if err := writeSentinel(ctx, r.store()); err != nil {
		t.Fatal(err)
	}
	next := time.Now().Add(time.Hour).UTC()
	old := fmt.Sprintf(`{"version":1,"name":%q,"last_request":"20261206-100000.000000000-0a0b0c0d","failures":3,`+
		`"next_attempt":%q,"last_error":"the CA refused the challenge","type_offset":1,"on_demand":true,"updated":%q}`,
		name, next.Format(time.RFC3339Nano), time.Now().Add(-time.Minute).UTC().Format(time.RFC3339Nano))
	if err := r.storage.Store(ctx, "certflow/"+branchIssuerKey+"/names/"+name+".json", []byte(old)); err != nil {
		t.Fatal(err)
	}
	for _, onDemand := range []bool{true, false} { // a handshake; certmagic's renewal of a name a handshake asked for
		_, err := r.issue(name, onDemand)
		if err == nil || !strings.Contains(err.Error(), "backing off after 3 failed attempt(s)") {
			t.Fatalf("on demand %v: %v, want the previous release's backoff", onDemand, err)
		}
	}
	if n := r.ca.newOrdersFor(name); n != 0 {
		t.Fatalf("%d new-orders during the previous release's backoff", n)
	}
	st, err := NewReader(r.storage, branchIssuerKey).Status(ctx, name)
	if err != nil || !st.BackingOff || st.Record.Failures != 3 || !st.Record.NextAttempt.Equal(next) {
		t.Fatalf("status: %+v (%v), want backing off until %s", st.Record, err, next)
	}
}

// TestTrimDeletesLegacyMarkers: the hourly trim deletes a finished
// resource of the previous release with its markers, keeps one in flight
// with its own, and removes the index folder once no marker is left in
// it.
func TestTrimDeletesLegacyMarkers(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s := store{storage: &certmagic.FileStorage{Path: dir}, issuerKey: "certflow-test"}
	if err := writeSentinel(ctx, s); err != nil {
		t.Fatal(err)
	}
	base := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	_, issuances := seedLegacy(t, s, 12, base, "shared.test")
	opts := &Options{RetentionAge: 24 * time.Hour}
	opts.SetDefaults()
	indexDir := filepath.Join(dir, "certflow", "certflow-test", "index")
	exists := func(key string) bool { return s.storage.Exists(ctx, key) }

	trimHistory(ctx, s, opts, base.Add(30*24*time.Hour))
	for _, is := range issuances {
		inFlight := is.requestState == RequestPending
		for _, k := range append([]string{s.key(KindRequest, is.request), s.key(KindOrder, is.order), s.key(KindChallenge, is.chall)}, is.markers...) {
			if exists(k) != inFlight {
				t.Errorf("request %s (%s): %s exists %v, want %v", is.request, is.requestState, k, exists(k), inFlight)
			}
		}
	}
	if _, err := os.Stat(indexDir); err != nil {
		t.Fatalf("the index folder went while markers of resources in flight are left: %v", err)
	}

	// the new release finishes what was in flight (in the resources' own
	// records, as a resumed request does); the next trim deletes them
	// with their markers, and then the folder
	for _, is := range issuances {
		if is.requestState != RequestPending {
			continue
		}
		for _, r := range []struct{ kind, id, state string }{
			{KindRequest, is.request, RequestFailed}, {KindOrder, is.order, OrderErrored}, {KindChallenge, is.chall, ChallengeErrored},
		} {
			b, err := s.storage.Load(ctx, s.key(r.kind, r.id))
			if err != nil {
				t.Fatal(err)
			}
			var v map[string]any
			if err := json.Unmarshal(b, &v); err != nil {
				t.Fatal(err)
			}
			v["state"] = r.state
			if b, err = json.Marshal(v); err != nil {
				t.Fatal(err)
			}
			if err := s.storage.Store(ctx, s.key(r.kind, r.id), b); err != nil {
				t.Fatal(err)
			}
		}
	}
	trimHistory(ctx, s, opts, base.Add(30*24*time.Hour))
	for _, is := range issuances {
		for _, k := range is.markers {
			if exists(k) {
				t.Errorf("marker %s left after its resource was trimmed", k)
			}
		}
	}
	if _, err := os.Stat(indexDir); !os.IsNotExist(err) {
		t.Fatalf("the empty index folder is still there (%v)", err)
	}
	if kinds := s.legacyKinds(ctx); len(kinds) != 0 {
		t.Fatalf("legacy kinds after the folder went: %v", kinds)
	}
}
