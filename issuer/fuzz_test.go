package issuer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"path"
	"strings"
	"testing"
	"time"
)

// decodeTargets are the stored kinds and the types they decode into.
var decodeTargets = []struct {
	kind string
	new  func() any
}{
	{KindRequest, func() any { return new(CertificateRequest) }},
	{KindOrder, func() any { return new(Order) }},
	{KindChallenge, func() any { return new(Challenge) }},
	{kindNames, func() any { return new(NameRecord) }},
	{kindHolds, func() any { return new(Hold) }},
}

func versionOf(v any) int {
	switch r := v.(type) {
	case *CertificateRequest:
		return r.Version
	case *Order:
		return r.Version
	case *Challenge:
		return r.Version
	case *NameRecord:
		return r.Version
	case *Hold:
		return r.Version
	}
	return -1
}

// fuzzSeeds are stored resources as certflow writes them, and damaged ones.
func fuzzSeeds() [][]byte {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	valid := []any{
		CertificateRequest{Version: SchemaVersion, ID: newID(now), Name: "a.test", Identifiers: []string{"a.test"},
			CSR: "-----BEGIN CERTIFICATE REQUEST-----\n-----END CERTIFICATE REQUEST-----\n", OnDemand: true,
			State: RequestFailed, Reason: "the CA said no", Attempt: 2, NextAttempt: now.Add(time.Minute),
			Created: now, Updated: now, Took: Duration(1500 * time.Millisecond)},
		Order{Version: SchemaVersion, ID: newID(now), Request: "r", Name: "a.test", Identifiers: []string{"a.test"},
			URL: "https://ca.test/order/1", Authorizations: []string{"https://ca.test/authz/1"},
			Finalize: "https://ca.test/finalize/1", State: OrderPending, Challenges: []string{"c1"},
			Expires: now.Add(24 * time.Hour), Created: now, Updated: now},
		Challenge{Version: SchemaVersion, ID: "c1", Order: "o1", Name: "a.test", Type: "http-01", Token: "tok",
			AuthorizationURL: "https://ca.test/authz/1", URL: "https://ca.test/chall/1", State: ChallengePresented,
			Presented:  json.RawMessage(`{"zone":"test.","record":{"name":"_acme-challenge","value":"x"}}`),
			SelfChecks: 3, Created: now, Updated: now, Times: ChallengeTimes{Scheduled: now, Presented: now}},
		NameRecord{Version: SchemaVersion, Name: "a.test", CurrentOrder: "o1", Failures: 3,
			NextAttempt: now.Add(time.Hour), LastError: "x", TypeOffset: 1, Updated: now},
		Hold{Version: SchemaVersion, Scope: HoldScope{Kind: ScopeNames, Value: "a.example"}, Until: now.Add(time.Minute), Reason: "429", Updated: now},
	}
	var seeds [][]byte
	for _, v := range valid {
		b, err := json.Marshal(v)
		if err != nil {
			panic(err)
		}
		seeds = append(seeds, b, b[:len(b)/2], bytes.Replace(b, []byte(`"version":1`), []byte(`"version":2`), 1))
	}
	for _, s := range []string{
		``, `null`, `[]`, `{}`, `"x"`, `{"version":1}`, `{"version":"1"}`, `{"version":1.5}`, `{"version":1e400}`,
		`{"version":-1}`, `{"version":1,"created":"yesterday"}`, `{"version":1,"took":"forever"}`, `{"version":1,"took":12}`,
		`{"version":1,"presented":{"a":[1,2,{}]}}`, `{"version":1,"presented":nul}`, `{"version":1,"identifiers":"a.test"}`,
		`{"version":1}{"version":1}`, `{"version":2,"version":1}`, "\xef\xbb\xbf{\"version\":1}", `{"version":1,"until":"0000-01-01T00:00:00Z"}`,
		`{"version":1,"next_attempt":"9999-12-31T23:59:59.999999999+23:59"}`, `{"version":1,"took":"-9223372036854775808ns"}`,
	} {
		seeds = append(seeds, []byte(s))
	}
	return seeds
}

// FuzzDecodeResource: store.load on arbitrary stored bytes never panics, and
// either decodes a resource of the current schema version, left in place,
// that can be saved and loaded again; or returns ErrNewerSchema naming the
// key, the bytes left in place untouched (a newer certflow wrote them); or
// returns ErrCorrupt naming the key, having set the bytes aside unchanged
// under corrupt/ and removed them from their place, so the workflow for the
// name starts clean. store.inspect, the reads' load, comes to the same
// verdict and changes nothing in the storage.
func FuzzDecodeResource(f *testing.F) {
	for _, s := range fuzzSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ctx := context.Background()
		for _, target := range decodeTargets {
			mem := newMemStorage()
			s := store{storage: mem, issuerKey: "certflow-fuzz"}
			const id = "20261127-120000.000000000-00000000"
			key := s.key(target.kind, id)
			if err := mem.Store(ctx, key, data); err != nil {
				t.Fatal(err)
			}
			before := mem.snapshot()
			ierr := s.inspect(ctx, target.kind, id, target.new())
			if !mem.equal(before) {
				t.Fatalf("%s: inspect changed the storage (%v); input %q", target.kind, ierr, data)
			}
			v := target.new()
			err := s.load(ctx, target.kind, id, v)
			aside, _ := mem.List(ctx, path.Join(s.prefix(), "corrupt"), false)
			if verdict(ierr) != verdict(err) {
				t.Fatalf("%s: inspect says %v, load says %v; input %q", target.kind, ierr, err, data)
			}
			switch {
			case err == nil:
				if got := versionOf(v); got != SchemaVersion {
					t.Fatalf("%s: decoded with version %d from %q", target.kind, got, data)
				}
				if !mem.Exists(ctx, key) || len(aside) != 0 {
					t.Fatalf("%s: a resource that decoded was moved (aside: %v)", target.kind, aside)
				}
				// what loads can be written back and loaded again
				if err := s.save(ctx, target.kind, id, v); err != nil {
					t.Fatalf("%s: a resource that loads cannot be saved: %v; input %q", target.kind, err, data)
				}
				if err := s.load(ctx, target.kind, id, target.new()); err != nil {
					t.Fatalf("%s: a resource that loaded and was saved again does not load: %v; input %q", target.kind, err, data)
				}
			case errors.Is(err, ErrNewerSchema):
				if !strings.Contains(err.Error(), key) {
					t.Fatalf("%s: the error does not name the key %s: %v", target.kind, key, err)
				}
				if kept, _ := mem.Load(ctx, key); !bytes.Equal(kept, data) || len(aside) != 0 {
					t.Fatalf("%s: a newer resource was not left in place as it was (aside: %v)", target.kind, aside)
				}
			case errors.Is(err, ErrCorrupt):
				if !strings.Contains(err.Error(), key) {
					t.Fatalf("%s: the error does not name the key %s: %v", target.kind, key, err)
				}
				if mem.Exists(ctx, key) {
					t.Fatalf("%s: a corrupt resource was left in place: %v", target.kind, err)
				}
				if len(aside) != 1 {
					t.Fatalf("%s: want the corrupt resource set aside once, found %v", target.kind, aside)
				}
				kept, _ := mem.Load(ctx, aside[0])
				if !bytes.Equal(kept, data) {
					t.Fatalf("%s: the set-aside copy differs from what was stored", target.kind)
				}
				if !strings.Contains(err.Error(), aside[0]) {
					t.Fatalf("%s: the error does not name where it was set aside (%s): %v", target.kind, aside[0], err)
				}
			default:
				t.Fatalf("%s: neither decoded nor reported corrupt: %v; input %q", target.kind, err, data)
			}
		}
	})
}

// verdict is what a load or inspect made of a stored value.
func verdict(err error) string {
	switch {
	case err == nil:
		return "decoded"
	case errors.Is(err, ErrNewerSchema):
		return "newer"
	case errors.Is(err, ErrCorrupt):
		return "corrupt"
	}
	return "other: " + err.Error()
}

// snapshot copies every key and value.
func (s *memStorage) snapshot() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]string, len(s.m))
	for k, v := range s.m {
		out[k] = string(v)
	}
	return out
}

// equal reports whether the storage holds exactly the snapshot.
func (s *memStorage) equal(snap map[string]string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.m) != len(snap) {
		return false
	}
	for k, v := range s.m {
		if w, ok := snap[k]; !ok || w != string(v) {
			return false
		}
	}
	return true
}
