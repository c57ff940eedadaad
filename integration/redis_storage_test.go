package integration

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/certflow/certflow/integration/rig"
	"github.com/certflow/certflow/issuer"
)

// Tests of what the Redis storage module does differently from the file
// system (see rig/redis.go for how it stores values, directories and
// locks): a delete is not recursive, a write is several commands, a value
// not written through the module does not load, and locks are released
// through the storage value that took them.

// certflowDir returns certflow's folder in Redis (prefix included) for the
// nodes' issuer key, found through the sentinel the engine writes first.
func (re *redisEnv) certflowDir(ctx context.Context) string {
	re.t.Helper()
	keys, err := re.redis.Keys(ctx, re.prefix+"/certflow/*/sentinel")
	if err != nil {
		re.t.Fatal(err)
	}
	if len(keys) != 1 {
		re.t.Fatalf("want one certflow sentinel in Redis, found %v", keys)
	}
	return path.Dir(keys[0])
}

// storedResourceIDs returns the IDs of certflow's stored resources of a
// kind ("requests", "orders", "challenges"), read from Redis wherever
// certflow keeps them (issuer.StoredResources).
func (re *redisEnv) storedResourceIDs(ctx context.Context, kind string) []string {
	re.t.Helper()
	view := re.redis.StorageView(re.prefix)
	keys, err := view.List(ctx, "certflow", false)
	if err != nil {
		re.t.Fatal(err)
	}
	var ids []string
	for _, k := range keys {
		raws, err := issuer.StoredResources(ctx, view, path.Base(k), kind)
		if err != nil {
			re.t.Fatal(err)
		}
		for _, raw := range raws {
			var r resource
			if err := json.Unmarshal(raw, &r); err != nil {
				re.t.Fatal(err)
			}
			ids = append(ids, r.str("id"))
		}
	}
	slices.Sort(ids)
	return ids
}

// treeProblems fails t with the inconsistencies of the module's directory
// tree under the prefix, but for the ones expected.
func (re *redisEnv) checkTree(ctx context.Context, expected ...string) {
	re.t.Helper()
	// a write in progress (the module's SET and its directory entries are
	// separate commands; a live node writes its heartbeat meanwhile) shows
	// as an inconsistency for a moment: only one that persists across a
	// few reads is an orphan
	var problems []string
	for range treeCheckReads {
		var err error
		problems, err = re.redis.TreeProblems(ctx, re.prefix)
		if err != nil {
			re.t.Fatal(err)
		}
		if len(problems) <= len(expected) {
			break
		}
		time.Sleep(treeCheckGap) // the write in progress is given time to finish; nothing to wait on from outside
	}
	for _, p := range problems {
		known := false
		for _, e := range expected {
			known = known || strings.Contains(p, e)
		}
		if !known {
			re.t.Errorf("orphan in Redis: %s", p)
		}
	}
	re.t.Logf("Redis directory tree checked: %d inconsistencies (%d expected)", len(problems), len(expected))
}

// treeCheckReads and treeCheckGap bound how long checkTree waits for a
// write in progress to complete.
const (
	treeCheckReads = 5
	treeCheckGap   = 200 * time.Millisecond
)

// waitLog waits, at most timeout, until node i's current log has at least
// n lines containing every one of subs, and returns them.
func (re *redisEnv) waitLog(i, n int, timeout time.Duration, subs ...string) []string {
	re.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var lines []string
		for _, l := range strings.Split(re.nodes[i].proc.Log(), "\n") {
			all := true
			for _, s := range subs {
				all = all && strings.Contains(l, s)
			}
			if all {
				lines = append(lines, l)
			}
		}
		if len(lines) >= n {
			return lines
		}
		if time.Now().After(deadline) {
			re.t.Fatalf("node %s logged %d line(s) with %q in %s, want %d\n%s", re.nodes[i].name, len(lines), subs, timeout, n, tail(re.nodes[i].proc.Log(), 30))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// restart stops node i (SIGTERM) and starts it again on the same config.
func (re *redisEnv) restart(i int) {
	re.t.Helper()
	stopNode(re.t, re.nodes[i])
	re.start(i)
}

// TestRedisDeletesLeaveNoOrphans: the Redis module deletes a "directory"
// without what is under it, so certflow deletes key by key. After the
// challenges' tokens are cleaned up and the history is trimmed, no key of a
// deleted resource is left in Redis (values, index markers, directory
// entries), and the module's directory tree has no orphan.
func TestRedisDeletesLeaveNoOrphans(t *testing.T) {
	const keep = 3
	re := newRedisEnv(t, redisEnvOptions{nodes: 1, issuer: map[string]any{
		"retention": map[string]any{"max_count": keep},
	}})
	re.start(0)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	names := namesN("trim", 0, 8)
	for name, r := range re.handshakeAll(names, 4, 1, 60*time.Second) {
		if r.err != nil {
			t.Fatalf("%s: %v", name, r.err)
		}
	}
	re.checkOneOrderEach(names, true)
	re.flushIndexes()
	dir := re.certflowDir(ctx)

	// every challenge is valid and cleaned up: no token left, nor the
	// token folder's directory set
	tokens, err := re.redis.Keys(ctx, re.prefix+"/acme/*/challenge_tokens*")
	if err != nil {
		t.Fatal(err)
	}
	if len(tokens) != 0 {
		t.Errorf("challenge tokens left in Redis after every challenge was cleaned up: %v", tokens)
	}
	re.checkTree(ctx)

	before := map[string][]string{}
	for _, kind := range []string{"requests", "orders", "challenges"} {
		before[kind] = re.storedResourceIDs(ctx, kind)
		if len(before[kind]) < len(names) {
			t.Fatalf("%d %s stored for %d names", len(before[kind]), kind, len(names))
		}
	}
	catalogBefore, _ := re.redis.Keys(ctx, dir+"/catalog/*")

	// the history is trimmed by the maintenance 3s after a start
	re.restart(0)
	trimmed := re.waitLog(0, 1, 30*time.Second, "trimmed history")
	for _, l := range trimmed {
		t.Logf("node log: %s", truncate(l, 300))
	}
	var gone []string
	for _, kind := range []string{"requests", "orders", "challenges"} {
		after := re.storedResourceIDs(ctx, kind)
		if len(after) != keep {
			t.Errorf("%d %s kept after the trim, want %d", len(after), kind, keep)
		}
		for _, id := range before[kind] {
			if !slices.Contains(after, id) {
				gone = append(gone, id)
			}
		}
	}
	if len(gone) == 0 {
		t.Fatal("nothing was trimmed")
	}
	// no key names a deleted resource: not its value, not a marker of a
	// previous version (a challenge's ID starts with its order's: compare
	// whole segments; the catalog's records name only their first entry's
	// ID, with their writer's)
	all, err := re.redis.Keys(ctx, re.prefix+"/*")
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range gone {
		safe := certmagic.StorageKeys.Safe(id)
		for _, k := range all {
			for _, seg := range strings.Split(k, "/") {
				if seg == safe || seg == safe+".json" {
					t.Errorf("a key of the deleted resource %s is left: %s", id, k)
				}
			}
		}
	}
	// and no directory lists something that is gone, or holds what no
	// directory lists
	re.checkTree(ctx)
	catalogAfter, _ := re.redis.Keys(ctx, dir+"/catalog/*")
	t.Logf("trimmed %d resources; Redis keys under the catalog: %d before, %d after", len(gone), len(catalogBefore), len(catalogAfter))

	// the admin API lists what is left, and only that
	for _, kind := range []string{"certificaterequests", "orders", "challenges"} {
		if got := len(re.adminList(0, "/certflow/"+kind)); got != keep {
			t.Errorf("the admin API lists %d %s after the trim, want %d", got, kind, keep)
		}
	}
}

// envelope is the Redis module's JSON around a value.
func envelope(value []byte, compression int) []byte {
	b, _ := json.Marshal(map[string]any{
		"value": base64.StdEncoding.EncodeToString(value), "modified": time.Now(), "size": len(value),
		"compression": compression, "encryption": 0,
	})
	return b
}

// TestRedisCorruptValues: values written into Redis behind the module's
// back — garbage, truncated, not the resource of their key, half written —
// under a name's record or its current order are reported and set aside,
// never decoded as a resource, and the name still gets its certificate with
// one order. A corrupt record of an issued name's request is set aside by
// the maintenance, and so is a value planted at its challenge's key (the
// maintenance reads every stored challenge when it starts); a value
// planted at its order's key is reported by its status; none is ever
// listed, and the admin API keeps answering meanwhile.
func TestRedisCorruptValues(t *testing.T) {
	re := newRedisEnv(t, redisEnvOptions{nodes: 1, issuer: map[string]any{
		// the maintenance loads the heads of everything beyond this
		"retention": map[string]any{"max_count": 1},
	}})
	re.start(0)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const warm = "warm.test"
	if _, err := re.handshakeAt(re.nodes[0].addr(), warm, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	dir := re.certflowDir(ctx)
	nameKey := func(name string) string { return dir + "/names/" + name + ".json" }
	orderKey := func(id string) string { return dir + "/orders/" + id + ".json" }
	record := func(name, order string) []byte {
		b, _ := json.Marshal(map[string]any{"version": 1, "name": name, "current_order": order, "updated": time.Now()})
		return b
	}
	orderJSON := func(id, name string) []byte {
		b, _ := json.Marshal(map[string]any{"version": 1, "id": id, "name": name, "identifiers": []string{name},
			"url": "https://127.0.0.1:1/order/" + id, "state": "pending", "created": time.Now(), "updated": time.Now()})
		return b
	}
	type corruption struct {
		name    string
		key     string // the corrupted key
		aside   bool   // set aside under corrupt/ (false: it reads as missing)
		logged  string // what the node logs
		prepare func(name string) error
	}
	raw := func(key string, b []byte) error { return re.redis.StoreRaw(ctx, key, b) }
	value := func(key string, b []byte) error { return re.redis.StoreValue(ctx, key, b) }
	orderID := func(n int) string { return fmt.Sprintf("20260101-000000.00000000%d-corrupt", n) }
	cases := []corruption{
		{name: "raw-record.test", aside: true, logged: "name record is corrupt", prepare: func(n string) error {
			return raw(nameKey(n), []byte("\x00\xffnot the module's envelope{"))
		}},
		{name: "truncated-record.test", aside: true, logged: "name record is corrupt", prepare: func(n string) error {
			return value(nameKey(n), []byte(`{"version":1,"name":"truncated-record.test","failures":3,"next_att`))
		}},
		{name: "foreign-record.test", aside: true, logged: "name record is corrupt", prepare: func(n string) error {
			// another name's record, in backoff for an hour: must not hold this name back
			b, _ := json.Marshal(map[string]any{"version": 1, "name": "someone-else.test", "failures": 5,
				"next_attempt": time.Now().Add(time.Hour), "last_error": "not this name's"})
			return value(nameKey(n), b)
		}},
		{name: "raw-order.test", aside: true, logged: "stored order is corrupt", prepare: func(n string) error {
			if err := value(nameKey(n), record(n, orderID(1))); err != nil {
				return err
			}
			return raw(orderKey(orderID(1)), []byte("garbage"))
		}},
		{name: "truncated-order.test", aside: true, logged: "stored order is corrupt", prepare: func(n string) error {
			if err := value(nameKey(n), record(n, orderID(2))); err != nil {
				return err
			}
			b := orderJSON(orderID(2), n)
			return value(orderKey(orderID(2)), b[:len(b)/2])
		}},
		{name: "empty-order.test", aside: true, logged: "stored order is corrupt", prepare: func(n string) error {
			if err := value(nameKey(n), record(n, orderID(3))); err != nil {
				return err
			}
			return value(orderKey(orderID(3)), []byte(`{"version":1}`))
		}},
		{name: "compressed-order.test", aside: true, logged: "stored order is corrupt", prepare: func(n string) error {
			if err := value(nameKey(n), record(n, orderID(4))); err != nil {
				return err
			}
			// flagged as compressed, but not: the module fails to inflate it
			return raw(orderKey(orderID(4)), envelope([]byte("not deflate data"), 1))
		}},
		{name: "half-order.test", aside: false, prepare: func(n string) error {
			if err := value(nameKey(n), record(n, orderID(5))); err != nil {
				return err
			}
			// the module died between the directory entry and the value
			return re.redis.AddDirectoryEntries(ctx, orderKey(orderID(5)))
		}},
	}
	for i := range cases {
		c := &cases[i]
		c.key = nameKey(c.name)
		if _, after, ok := strings.Cut(c.name, "order"); ok && after == ".test" {
			c.key = orderKey(orderID(i - 2)) // the order cases follow the three record cases, orderID(1) first
		}
		if err := c.prepare(c.name); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
	}
	asideBefore, _ := re.redis.Keys(ctx, dir+"/corrupt/*")

	for _, c := range cases {
		if _, err := re.handshakeAt(re.nodes[0].addr(), c.name, 30*time.Second); err != nil {
			t.Errorf("%s: the handshake failed: %v\n%s", c.name, err, tail(re.nodes[0].proc.Log(), 20))
			continue
		}
		if n := re.ca.NewOrders(c.name); n != 1 {
			t.Errorf("%s: the CA saw %d new-orders, want 1", c.name, n)
		}
		// the corrupt value is not at its key any more (a name record is
		// rewritten by the issuance: it must decode as this name's)
		if strings.Contains(c.key, "/names/") {
			rec := re.nameRecord(c.name)
			if rec["name"] != c.name || number(rec["failures"]) != 0 {
				t.Errorf("%s: the record after the issuance is %s", c.name, dump(rec))
			}
		} else if n, _ := re.redis.Client().Exists(ctx, c.key).Result(); n != 0 {
			t.Errorf("%s: the corrupt order %s is still at its key", c.name, c.key)
		}
		if c.logged != "" {
			lines := re.waitLog(0, 1, 5*time.Second, c.logged, `"name":"`+c.name+`"`)
			t.Logf("%s: %s", c.name, truncate(lines[0], 400))
		}
	}
	asideAfter, _ := re.redis.Keys(ctx, dir+"/corrupt/*")
	wantAside := 0
	for _, c := range cases {
		if c.aside {
			wantAside++
		}
	}
	if got := len(asideAfter) - len(asideBefore); got != wantAside {
		t.Errorf("%d values set aside under corrupt/, want %d: %v", got, wantAside, asideAfter)
	}

	// the resources of an issued name, corrupted: the admin API keeps
	// answering, and the maintenance (a restart runs it 3s later) sets
	// aside the request's record (retention reads every request beyond
	// the one it keeps) and the value planted at the challenge's key (the
	// first pass reads every stored challenge); the order's key is read
	// by the status views only, which report it and change nothing
	st := re.adminStatus(0, warm)
	req, _ := st["request"].(map[string]any)
	ord, _ := st["order"].(map[string]any)
	chs, _ := st["challenges"].([]any)
	if req == nil || ord == nil || len(chs) != 1 {
		t.Fatalf("status of %s: %s", warm, dump(st))
	}
	ch, _ := chs[0].(map[string]any)
	warmKeys := []string{
		dir + "/requests/" + resource(req).str("id") + ".json",
		dir + "/orders/" + resource(ord).str("id") + ".json",
		dir + "/challenges/" + resource(ch).str("id") + ".json",
	}
	_ = raw(warmKeys[0], []byte("garbage request"))
	_ = value(warmKeys[1], []byte(`{"version":1,"id":"another-order","state":"valid"}`))
	_ = value(warmKeys[2], []byte(`{"version":1,"id":"`))
	for _, kind := range adminKinds {
		status, _, body := re.admin(0, http.MethodGet, "/certflow/"+kind, nil, nil)
		if status != http.StatusOK {
			t.Errorf("GET /certflow/%s with corrupt values stored: HTTP %d: %s", kind, status, body)
		}
		if strings.Contains(string(body), "garbage") || strings.Contains(string(body), "another-order") {
			t.Errorf("GET /certflow/%s lists a corrupt value: %s", kind, truncate(string(body), 500))
		}
	}
	re.restart(0)
	if st := re.adminStatus(0, warm); !strings.Contains(dump(st["problems"]), "another-order") {
		t.Errorf("the status of %s does not report the value planted at its order's key: %s", warm, dump(st))
	}
	for _, k := range []string{warmKeys[0], warmKeys[2]} {
		deadline := time.Now().Add(20 * time.Second)
		for {
			n, err := re.redis.Client().Exists(ctx, k).Result()
			if err != nil {
				t.Fatal(err)
			}
			if n == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the corrupt value %s is still at its key 20s after the restart\n%s", k, tail(re.nodes[0].proc.Log(), 30))
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	final, _ := re.redis.Keys(ctx, dir+"/corrupt/*")
	if got := len(final) - len(asideAfter); got != 2 {
		t.Errorf("the maintenance set aside %d values, want the request's and the challenge's", got)
	}
	for _, k := range final {
		b, err := re.redis.LoadValue(ctx, k)
		if err != nil {
			t.Errorf("set-aside %s does not load: %v", k, err)
			continue
		}
		t.Logf("set aside: %s (%d bytes): %s", strings.TrimPrefix(k, dir+"/"), len(b), truncate(string(b), 120))
	}
	// no process died on them
	select {
	case <-re.nodes[0].proc.Exited():
		t.Fatalf("the node exited: %v", re.nodes[0].proc.ExitErr())
	default:
	}
	for _, n := range re.nodes {
		for _, f := range logFiles(n) {
			if b, _ := os.ReadFile(f); strings.Contains(string(b), "panic") {
				t.Errorf("%s mentions a panic", f)
			}
		}
	}
	// the half write planted above (an entry a List returns and a Load
	// does not find) is removed by the maintenance pass after the restart
	// (its ID is old, and the store answers): then the directory tree has
	// no inconsistency left
	re.waitLog(0, 1, 20*time.Second, "removed a listing entry with no value", orderID(5))
	re.checkTree(ctx)
}

func logFiles(n *node) []string {
	logs, _ := filepath.Glob(filepath.Join(n.dir, "caddy-*.log"))
	return logs
}

// reload POSTs node i's current config to its admin /load, forcing a
// reload of the same config.
func (re *redisEnv) reload(i int) time.Duration {
	re.t.Helper()
	n := re.nodes[i]
	cfg, err := os.ReadFile(filepath.Join(n.dir, fmt.Sprintf("caddy-%d.json", n.starts)))
	if err != nil {
		re.t.Fatal(err)
	}
	start := time.Now()
	status, _, body := re.admin(i, http.MethodPost, "/load", cfg, http.Header{
		"Content-Type":  {"application/json"},
		"Cache-Control": {"must-revalidate"}, // reload even though the config is the same
	})
	if status != http.StatusOK {
		re.t.Fatalf("node %s: POST /load: HTTP %d: %s", n.name, status, body)
	}
	return time.Since(start)
}

// lockKeys returns the lock keys in Redis with their time to live.
func (re *redisEnv) lockKeys(ctx context.Context) map[string]time.Duration {
	re.t.Helper()
	keys, err := re.redis.Keys(ctx, re.prefix+"/locks/*")
	if err != nil {
		re.t.Fatal(err)
	}
	out := map[string]time.Duration{}
	for _, k := range keys {
		ttl, err := re.redis.Client().PTTL(ctx, k).Result()
		if err != nil {
			re.t.Fatal(err)
		}
		if ttl == -2*time.Nanosecond || ttl == -2*time.Millisecond {
			continue // gone since the scan
		}
		out[strings.TrimPrefix(k, re.prefix+"/")] = ttl
	}
	return out
}

// redisProvisioned is what the Redis module logs when a config provisions
// it: a reload does it again.
const redisProvisioned = "Provision Redis"

// redislock's lease in the module: a lock key lives this long unless its
// holder refreshes it.
const redisLockLease = 5 * time.Second

// TestRedisReloadReleasesLocks: a config reload closes the old Redis
// storage value's client. Locks taken through it (certmagic's issue_cert
// locks of issuances in flight) are released through it, or lapse with
// their lease; none is refreshed by a storage value nobody uses any more.
// Every lock key has a lease, and once the node is idle, none is left a
// lease after the reload.
func TestRedisReloadReleasesLocks(t *testing.T) {
	re := newRedisEnv(t, redisEnvOptions{nodes: 1})
	re.start(0)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := re.handshakeAt(re.nodes[0].addr(), "warm.test", 30*time.Second); err != nil {
		t.Fatal(err)
	}

	// slow validations keep the names' issue_cert locks held while the
	// config is reloaded
	const slow = 1500 * time.Millisecond
	re.ca.SetFault(pebbleSerializer(func(r *http.Request) (int, http.Header, string, bool) {
		if rig.KindOf(r) == rig.KindChall {
			time.Sleep(slow)
		}
		return 0, nil, "", false
	}))
	names := namesN("reload", 0, 6)
	var res map[string]hsResult
	done := make(chan struct{})
	go func() {
		defer close(done)
		res = re.handshakeAll(names, len(names), 1, 30*time.Second)
	}()
	var held map[string]time.Duration
	deadline := time.Now().Add(15 * time.Second)
	for {
		held = re.lockKeys(ctx)
		n := 0
		for k := range held {
			if strings.HasPrefix(k, "locks/issue_cert_reload-") {
				n++
			}
		}
		if n >= 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the names' locks were not taken within 15s: %v", held)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("locks held when the reload starts: %v", held)
	provisioned := strings.Count(re.nodes[0].proc.Log(), redisProvisioned)
	took := re.reload(0)
	reloadedAt := time.Now()
	re.waitLog(0, provisioned+1, 10*time.Second, redisProvisioned)
	afterReload := re.lockKeys(ctx)
	t.Logf("reload with locks held took %s; lock keys right after: %v", took.Round(time.Millisecond), afterReload)
	<-done
	re.ca.SetFault(pebbleSerializer(nil))
	// the locks the old config's storage took are released or lapse
	// within their lease (its client is closed: nothing refreshes them)
	for {
		left := map[string]time.Duration{}
		for k, ttl := range re.lockKeys(ctx) {
			if _, ok := afterReload[k]; ok {
				left[k] = ttl
			}
		}
		if len(left) == 0 {
			t.Logf("the locks held across the reload are gone %s after it", time.Since(reloadedAt).Round(time.Millisecond))
			break
		}
		if time.Since(reloadedAt) > redisLockLease+2*time.Second {
			t.Fatalf("locks held across the reload outlive their lease: %v, %s after the reload", left, time.Since(reloadedAt).Round(time.Millisecond))
		}
		time.Sleep(100 * time.Millisecond)
	}
	var failed []string
	for _, name := range names {
		if r := res[name]; r.err != nil {
			failed = append(failed, name)
			t.Logf("%s, in flight during the reload: %v", name, r.err)
			shown := 0
			for _, l := range strings.Split(re.nodes[0].proc.Log(), "\n") {
				if strings.Contains(l, `"`+name+`"`) && strings.Contains(l, `"level":"error"`) && shown < 2 {
					t.Logf("  node log: %s", truncate(l, 400))
					shown++
				}
			}
		}
	}
	// a client tries again: the reloaded config issues them
	for _, name := range failed {
		if _, err := re.handshakeAt(re.nodes[0].addr(), name, 30*time.Second); err != nil {
			t.Errorf("%s after the reload: %v", name, err)
		}
	}
	var orders []string
	for _, name := range names {
		// a name whose issuance the reload cut may need one more order
		n := re.ca.NewOrders(name)
		orders = append(orders, fmt.Sprintf("%s=%d", name, n))
		if n < 1 || n > 2 || (n == 2 && !slices.Contains(failed, name)) {
			t.Errorf("the CA saw %d new-orders for %s (in flight during the reload: %v)", n, name, slices.Contains(failed, name))
		}
	}
	t.Logf("new-orders at the CA: %s", strings.Join(orders, " "))

	// right after issuance, while idle: reload again
	provisioned = strings.Count(re.nodes[0].proc.Log(), redisProvisioned)
	took = re.reload(0)
	re.waitLog(0, provisioned+1, 10*time.Second, redisProvisioned)
	idleSince := time.Now()
	t.Logf("idle reload took %s; lock keys right after: %v", took.Round(time.Millisecond), re.lockKeys(ctx))

	// every lock key has a lease, and none outlives it
	for {
		locks := re.lockKeys(ctx)
		for k, ttl := range locks {
			if ttl < 0 || ttl > redisLockLease {
				t.Fatalf("lock key %s has ttl %s, want a lease of at most %s", k, ttl, redisLockLease)
			}
		}
		if len(locks) == 0 {
			t.Logf("no lock key left %s after the idle reload", time.Since(idleSince).Round(time.Millisecond))
			break
		}
		if time.Since(idleSince) > redisLockLease+2*time.Second {
			t.Fatalf("lock keys outlive their lease: %v, %s after the idle reload (a storage value nobody uses refreshes them?)", locks, time.Since(idleSince).Round(time.Millisecond))
		}
		time.Sleep(100 * time.Millisecond)
	}
	// and the node still issues, through the new config's storage
	if _, err := re.handshakeAt(re.nodes[0].addr(), "after-reload.test", 30*time.Second); err != nil {
		t.Errorf("a new name after the reloads: %v", err)
	}
	if locks := re.lockKeys(ctx); len(locks) > 0 {
		t.Logf("lock keys right after a new issuance (released or lapsing): %v", locks)
	}
}
