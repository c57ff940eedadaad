package rig

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	storageredis "github.com/pberkel/caddy-storage-redis"
)

// TestRedisTreeProblems checks TreeProblems against the Redis storage
// module itself: what the module writes and deletes key by key is
// consistent; a directory deleted whole (the module does not recurse)
// leaves what was under it unlisted; a value gone without its entry leaves
// a dangling entry.
func TestRedisTreeProblems(t *testing.T) {
	if _, err := RedisServerPath(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true and %v: .ci/run installs it", err)
		}
		t.Skipf("skipping: %v", err)
	}
	r, err := StartRedis(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = r.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	const prefix = "tree-test"
	cctx, ccancel := caddy.NewContext(caddy.Context{Context: ctx})
	defer ccancel()
	rs := storageredis.New()
	rs.Address = []string{r.Addr}
	rs.KeyPrefix = prefix
	if err := rs.Provision(cctx); err != nil {
		t.Fatalf("provisioning the Redis storage module: %v", err)
	}
	defer func() { _ = rs.Cleanup() }()

	problems := func() []string {
		t.Helper()
		p, err := r.TreeProblems(ctx, prefix)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, k := range []string{"a/b/c.json", "a/b/d.json", "a/e.json", "f.json"} {
		if err := rs.Store(ctx, k, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if p := problems(); len(p) != 0 {
		t.Fatalf("after the module's own stores: %v", p)
	}
	// key by key: consistent, and the emptied directories go too
	for _, k := range []string{"a/b/c.json", "a/b/d.json"} {
		if err := rs.Delete(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	if p := problems(); len(p) != 0 {
		t.Fatalf("after the module's deletes key by key: %v", p)
	}
	if keys, _ := r.Keys(ctx, prefix+"/a/b*"); len(keys) != 0 {
		t.Errorf("an emptied directory is left: %v", keys)
	}
	// StoreValue writes what the module reads
	if err := r.StoreValue(ctx, prefix+"/g/h.json", []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if b, err := rs.Load(ctx, "g/h.json"); err != nil || string(b) != "hello" {
		t.Errorf("the module reads %q, %v from StoreValue", b, err)
	}
	if keys, err := rs.List(ctx, "g", false); err != nil || len(keys) != 1 {
		t.Errorf("the module lists %v, %v after StoreValue", keys, err)
	}
	// a value the module did not write: an error that is not "not found"
	if err := r.StoreRaw(ctx, prefix+"/g/raw.json", []byte("garbage")); err != nil {
		t.Fatal(err)
	}
	if _, err := rs.Load(ctx, "g/raw.json"); err == nil || errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the module's Load of a raw value: %v, want an error other than not found", err)
	}
	if p := problems(); len(p) != 0 {
		t.Fatalf("after StoreValue and StoreRaw: %v", p)
	}

	// a directory deleted whole: its set goes, what it held stays unlisted
	if err := rs.Store(ctx, "m/n/o.json", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := rs.Delete(ctx, "m/n"); err != nil {
		t.Fatal(err)
	}
	if _, err := rs.Load(ctx, "m/n/o.json"); err != nil {
		t.Errorf("the module's Delete of a directory removed what was in it (%v): has it become recursive?", err)
	}
	p := problems()
	if !containsSubstring(p, prefix+"/m/n/o.json is not listed") {
		t.Errorf("the orphan left by deleting a directory is not found: %v", p)
	}
	_ = rs.Delete(ctx, "m/n/o.json")
	_ = r.client.ZRem(ctx, prefix+"/m", "n/").Err()
	_ = r.client.ZRem(ctx, prefix, "m/").Err()

	// a value gone without its directory entry: a dangling entry
	if err := r.client.Del(ctx, prefix+"/a/e.json").Err(); err != nil {
		t.Fatal(err)
	}
	// half a Store: the entry without the value
	if err := r.AddDirectoryEntries(ctx, prefix+"/p/q.json"); err != nil {
		t.Fatal(err)
	}
	p = problems()
	if !containsSubstring(p, `lists "e.json"`) || !containsSubstring(p, `lists "q.json"`) || len(p) != 2 {
		t.Errorf("problems %v, want the two dangling entries", p)
	}
}

func containsSubstring(list []string, sub string) bool {
	for _, s := range list {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}
