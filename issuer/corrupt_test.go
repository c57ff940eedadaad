package issuer

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap/zaptest"
)

// envelopeStorage is a file storage that, like the Redis module with a
// value not written through it, fails to return the values in bad (with an
// error that is not "not found"); failOnce fails a key's next read only.
type envelopeStorage struct {
	*certmagic.FileStorage
	mu       sync.Mutex
	bad      map[string]bool
	failOnce map[string]bool
}

func newEnvelopeStorage(dir string) *envelopeStorage {
	return &envelopeStorage{FileStorage: &certmagic.FileStorage{Path: dir}, bad: map[string]bool{}, failOnce: map[string]bool{}}
}

func (s *envelopeStorage) Load(ctx context.Context, key string) ([]byte, error) {
	s.mu.Lock()
	bad, once := s.bad[key], s.failOnce[key]
	delete(s.failOnce, key)
	s.mu.Unlock()
	if bad || once {
		if _, err := s.FileStorage.Load(ctx, key); err != nil {
			return nil, err
		}
		return nil, errors.New("Unable to unmarshal value for " + key + ": invalid character 'g' looking for beginning of value")
	}
	return s.FileStorage.Load(ctx, key)
}

func corruptTestStore(t *testing.T) (store, *envelopeStorage) {
	t.Helper()
	es := newEnvelopeStorage(t.TempDir())
	s := store{storage: es, issuerKey: "certflow-test"}
	if err := writeSentinel(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { FlushIndex(time.Minute) })
	return s, es
}

// asideKeys returns the keys under corrupt/.
func asideKeys(t *testing.T, s store) []string {
	t.Helper()
	keys, err := s.storage.List(context.Background(), s.prefix()+"/corrupt", false)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	return keys
}

func TestLoadRejectsAnotherResource(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name, kind, id, value string
		v                     any
		wantCorrupt           bool
	}{
		{"order naming nothing", KindOrder, "o1", `{"version":1}`, &Order{}, true},
		{"order naming another", KindOrder, "o1", `{"version":1,"id":"o2","state":"pending","url":"https://ca/o2"}`, &Order{}, true},
		{"order", KindOrder, "o1", `{"version":1,"id":"o1","state":"pending"}`, &Order{}, false},
		{"challenge naming another", KindChallenge, "c1", `{"version":1,"id":"c2","state":"queued"}`, &Challenge{}, true},
		{"request naming nothing", KindRequest, "r1", `{"version":1,"state":"pending"}`, &CertificateRequest{}, true},
		{"name record of another name", kindNames, "a.test", `{"version":1,"name":"b.test","failures":3}`, &NameRecord{}, true},
		{"name record in another case", kindNames, "A.test", `{"version":1,"name":"a.test"}`, &NameRecord{}, false},
		{"head of an order naming another", KindOrder, "o1", `{"version":1,"id":"o2","state":"valid"}`, &resourceHead{}, true},
		{"hold (keyed by scope)", kindHolds, "account-acct", `{"version":1,"until":"2030-01-01T00:00:00Z"}`, &Hold{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := corruptTestStore(t)
			key := s.key(tt.kind, tt.id)
			if err := s.storage.Store(ctx, key, []byte(tt.value)); err != nil {
				t.Fatal(err)
			}
			err := s.load(ctx, tt.kind, tt.id, tt.v)
			if !tt.wantCorrupt {
				if err != nil {
					t.Fatalf("load: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("load = %v, want ErrCorrupt", err)
			}
			if !strings.Contains(err.Error(), key) {
				t.Errorf("the error does not name the key %s: %v", key, err)
			}
			if _, err := s.storage.Load(ctx, key); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("the value is still at its key: %v", err)
			}
			aside := asideKeys(t, s)
			if len(aside) != 1 {
				t.Fatalf("set aside: %v, want one key", aside)
			}
			if b, err := s.storage.Load(ctx, aside[0]); err != nil || string(b) != tt.value {
				t.Errorf("set aside as %q (%v), want the value", b, err)
			}
		})
	}
}

func TestLoadSetsAsideWhatStorageCannotReturn(t *testing.T) {
	ctx := context.Background()
	s, es := corruptTestStore(t)
	key := s.key(KindOrder, "o1")
	_ = es.Store(ctx, key, []byte("garbage"))
	es.bad[key] = true

	var o Order
	err := s.load(ctx, KindOrder, "o1", &o)
	if !errors.Is(err, ErrCorrupt) || errors.Is(err, ErrStorage) {
		t.Fatalf("load = %v, want ErrCorrupt (not a storage error)", err)
	}
	if !strings.Contains(err.Error(), key) || !strings.Contains(err.Error(), "unreadable") {
		t.Errorf("the error does not say what and where: %v", err)
	}
	if es.Exists(ctx, key) {
		t.Error("the unreadable value is still at its key: every attempt would fail on it")
	}
	aside := asideKeys(t, s)
	if len(aside) != 1 {
		t.Fatalf("set aside: %v, want one note", aside)
	}
	b, _ := es.FileStorage.Load(ctx, aside[0])
	var note unreadableNote
	if err := json.Unmarshal(b, &note); err != nil || note.Key != key || !strings.Contains(note.Error, "Unable to unmarshal") {
		t.Errorf("the note kept is %s (%v)", b, err)
	}
}

func TestLoadUnreadableKeepsValueWhenStoreIsNotAnswering(t *testing.T) {
	ctx := context.Background()
	s, es := corruptTestStore(t)
	key := s.key(KindOrder, "o1")
	_ = es.Store(ctx, key, []byte(`{"version":1,"id":"o1","state":"pending"}`))
	es.bad[key] = true
	es.bad[s.sentinelKey()] = true // the whole store fails: not this value's fault

	var o Order
	err := s.load(ctx, KindOrder, "o1", &o)
	if !errors.Is(err, ErrStorage) || errors.Is(err, ErrCorrupt) {
		t.Fatalf("load = %v, want a storage error", err)
	}
	if !es.Exists(ctx, key) || len(asideKeys(t, s)) != 0 {
		t.Error("a value was removed while the store was not answering")
	}
}

func TestLoadUnreadableOnceIsAStorageError(t *testing.T) {
	ctx := context.Background()
	s, es := corruptTestStore(t)
	key := s.key(KindOrder, "o1")
	_ = es.Store(ctx, key, []byte(`{"version":1,"id":"o1","state":"pending"}`))
	es.failOnce[key] = true

	var o Order
	err := s.load(ctx, KindOrder, "o1", &o)
	if !errors.Is(err, ErrStorage) || errors.Is(err, ErrCorrupt) {
		t.Fatalf("load = %v, want a storage error (retried), the value reads again", err)
	}
	if err := s.load(ctx, KindOrder, "o1", &o); err != nil || o.State != OrderPending {
		t.Fatalf("the next load: %v, %+v", err, o)
	}
	if len(asideKeys(t, s)) != 0 {
		t.Error("a value that failed once was set aside")
	}
}

// TestLoadUnreadableNameRecordStartsClean: the workflow treats the set-
// aside record as absent and the name as new, instead of failing on it.
func TestLoadUnreadableNameRecordStartsClean(t *testing.T) {
	ctx := context.Background()
	s, es := corruptTestStore(t)
	key := s.key(kindNames, "x.test")
	_ = es.Store(ctx, key, []byte("\x00garbage"))
	es.bad[key] = true
	w := &workflow{store: s, name: "x.test", logger: zaptest.NewLogger(t)}
	rec, err := w.loadNameRecord(ctx)
	if err != nil {
		t.Fatalf("loadNameRecord: %v", err)
	}
	if rec.Name != "x.test" || rec.Failures != 0 || rec.CurrentOrder != "" {
		t.Errorf("record %+v, want a fresh one", rec)
	}
}

// TestListSkipsUnreadable: one value the storage cannot return does not
// fail every list, and a value that is not its marker's resource is not
// listed; a store that does not answer still fails the list.
func TestListSkipsUnreadable(t *testing.T) {
	ctx := context.Background()
	s, es := corruptTestStore(t)
	now := time.Now()
	var ids []string
	for i := range 3 {
		o := &Order{Version: SchemaVersion, ID: newID(now.Add(time.Duration(i) * time.Millisecond)), Name: "x.test", State: OrderValid}
		if err := s.saveResource(ctx, KindOrder, o.ID, o.Name, o.State, o); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, o.ID)
	}
	FlushIndex(time.Minute)
	es.bad[s.key(KindOrder, ids[0])] = true
	// a value that decodes, but is another resource
	if err := es.Store(ctx, s.key(KindOrder, ids[2]), []byte(`{"version":1,"id":"another","name":"x.test","state":"valid"}`)); err != nil {
		t.Fatal(err)
	}
	r := Reader{s: s}
	page, err := r.List(ctx, Query{Kind: KindOrder})
	if err != nil {
		t.Fatalf("list with one unreadable value: %v", err)
	}
	if len(page.Items) != 1 || !strings.Contains(string(page.Items[0]), ids[1]) {
		t.Errorf("listed %d items, want the one readable order %s only", len(page.Items), ids[1])
	}
	es.bad[s.sentinelKey()] = true
	if _, err := r.List(ctx, Query{Kind: KindOrder}); !errors.Is(err, ErrStorage) {
		t.Errorf("list with the store not answering = %v, want a storage error", err)
	}
}
