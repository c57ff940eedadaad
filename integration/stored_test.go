package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	certflow "github.com/certflow/certflow"
	"github.com/certflow/certflow/integration/rig"
)

// timeField parses one of a resource's RFC 3339 time fields ("times.x" for
// a challenge's lifecycle times); zero if absent.
func timeField(t *testing.T, r resource, field string) time.Time {
	t.Helper()
	var raw any = map[string]any(r)
	for _, part := range strings.Split(field, ".") {
		m, ok := raw.(map[string]any)
		if !ok {
			return time.Time{}
		}
		raw = m[part]
	}
	s, _ := raw.(string)
	if s == "" {
		return time.Time{}
	}
	tm, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatalf("resource %s: field %s = %q is not RFC 3339: %v", r.str("id"), field, s, err)
	}
	return tm
}

// onlyChallenge returns the single stored challenge of name, failing the
// test if there is not exactly one.
func (e *env) onlyChallenge(name string) resource {
	e.t.Helper()
	chals := e.resources("challenges", name)
	if len(chals) != 1 {
		e.t.Fatalf("want exactly 1 stored challenge for %s, got %d: %s", name, len(chals), dump(chals))
	}
	return chals[0]
}

// stateKey is the key of this env's certflow issuer's own resources
// (certflow/<key>/…).
func (e *env) stateKey() string { return certflow.StateKeyForCA(e.ca.DirectoryURL) }

// certKey is the issuer key certmagic stores the certificates of this
// env's certflow issuer under (shared with the stock acme issuer).
func (e *env) certKey() string { return (&certflow.Issuer{CA: e.ca.DirectoryURL}).IssuerKey() }

// certPath is where certmagic stores the certificate of name obtained by
// this env's certflow issuer, under the storage root.
func (e *env) certPath(name string) string {
	return filepath.Join(e.storage, filepath.FromSlash(certmagic.StorageKeys.SiteCert(e.certKey(), name)))
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func loadResources(t *testing.T, storage, kind, name string) []resource {
	t.Helper()
	all, err := rig.LoadResources(storage, kind)
	if err != nil {
		t.Fatal(err)
	}
	var out []resource
	for _, r := range all {
		if name == "" || r["name"] == name {
			out = append(out, resource(r))
		}
	}
	// IDs sort by creation time
	sort.Slice(out, func(i, j int) bool { return out[i].str("id") < out[j].str("id") })
	return out
}

// nameRecord reads certflow's record of name, nil if there is none.
func nameRecordOf(t *testing.T, storage, name string) map[string]any {
	t.Helper()
	matches, _ := filepath.Glob(filepath.Join(storage, "certflow", "*", "names", name+".json"))
	if len(matches) == 0 {
		return nil
	}
	b, err := os.ReadFile(matches[0])
	if err != nil {
		t.Fatal(err)
	}
	var rec map[string]any
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatal(err)
	}
	return rec
}
