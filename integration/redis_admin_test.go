package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/certflow/certflow"
)

// The admin API of every node reads the same storage, so it shows the same
// resources. Lists go through the index, whose markers each node writes in
// the background (merged for a couple of seconds): a node lists what another
// node did once that node has written its markers, and its own work at
// once (a list flushes the node's own pending markers first). status/<name>
// reads the resources themselves and is current on every node. An operator
// asking any node sees a name's state at once, and the lists within the
// index delay; TestRedisAdminAgrees checks both.

var adminClient = &http.Client{Timeout: 30 * time.Second}

// admin makes a request to node i's admin endpoint and returns the status,
// headers and body.
func (re *redisEnv) admin(i int, method, uri string, body []byte, header http.Header) (int, http.Header, []byte) {
	re.t.Helper()
	n := re.nodes[i]
	req, err := http.NewRequest(method, fmt.Sprintf("http://127.0.0.1:%d%s", re.adminPorts[n.name], uri), bytes.NewReader(body))
	if err != nil {
		re.t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := adminClient.Do(req)
	if err != nil {
		re.t.Fatalf("node %s: %s %s: %v", n.name, method, uri, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 32<<20))
	if err != nil {
		re.t.Fatalf("node %s: %s %s: reading the body: %v", n.name, method, uri, err)
	}
	return resp.StatusCode, resp.Header, b
}

// adminList fetches every page of a list endpoint of node i.
func (re *redisEnv) adminList(i int, uri string) []resource {
	re.t.Helper()
	var all []resource
	next := ""
	for page := 0; ; page++ {
		u := uri
		if next != "" {
			sep := "?"
			if strings.Contains(u, "?") {
				sep = "&"
			}
			u += sep + "after=" + next
		}
		status, h, body := re.admin(i, http.MethodGet, u, nil, nil)
		if status != http.StatusOK {
			re.t.Fatalf("node %s: GET %s: HTTP %d: %s", re.nodes[i].name, u, status, body)
		}
		var items []resource
		if err := json.Unmarshal(body, &items); err != nil {
			re.t.Fatalf("node %s: GET %s: %v: %s", re.nodes[i].name, u, err, body)
		}
		all = append(all, items...)
		if next = h.Get(certflow.NextHeader); next == "" {
			return all
		}
		if page > 100 {
			re.t.Fatalf("node %s: GET %s: more than 100 pages", re.nodes[i].name, uri)
		}
	}
}

// adminStatus fetches status/<name> from node i, as decoded JSON.
func (re *redisEnv) adminStatus(i int, name string) map[string]any {
	re.t.Helper()
	status, _, body := re.admin(i, http.MethodGet, "/certflow/status/"+name, nil, nil)
	if status != http.StatusOK {
		re.t.Fatalf("node %s: status of %s: HTTP %d: %s", re.nodes[i].name, name, status, body)
	}
	var st map[string]any
	if err := json.Unmarshal(body, &st); err != nil {
		re.t.Fatalf("node %s: status of %s: %v", re.nodes[i].name, name, err)
	}
	return st
}

// clusterPicture is what one node's admin API shows of a set of names:
// each list's resources of those names as "id → state", by kind.
type clusterPicture map[string]map[string]string

var adminKinds = []string{"certificaterequests", "orders", "challenges"}

// picture reads node i's three lists (unfiltered, every page) and keeps
// the resources of names.
func (re *redisEnv) picture(i int, names map[string]bool) clusterPicture {
	re.t.Helper()
	p := clusterPicture{}
	for _, kind := range adminKinds {
		p[kind] = map[string]string{}
		for _, r := range re.adminList(i, "/certflow/"+kind+"?limit=50") {
			if names[r.str("name")] {
				p[kind][r.str("id")] = r.str("state")
			}
		}
	}
	return p
}

func (p clusterPicture) String() string {
	var b strings.Builder
	for _, kind := range adminKinds {
		ids := slices.Sorted(maps.Keys(p[kind]))
		fmt.Fprintf(&b, "%s (%d):", kind, len(ids))
		for _, id := range ids {
			fmt.Fprintf(&b, " %s=%s", id, p[kind][id])
		}
		b.WriteString("\n")
	}
	return b.String()
}

func (p clusterPicture) equal(q clusterPicture) bool {
	for _, kind := range adminKinds {
		if !maps.Equal(p[kind], q[kind]) {
			return false
		}
	}
	return true
}

// expectedPicture is what the resources themselves say (status/<name> of
// node i: the name's request, order and challenges).
func (re *redisEnv) expectedPicture(i int, names []string) clusterPicture {
	re.t.Helper()
	p := clusterPicture{"certificaterequests": {}, "orders": {}, "challenges": {}}
	for _, name := range names {
		st := re.adminStatus(i, name)
		if r, ok := st["request"].(map[string]any); ok {
			p["certificaterequests"][resource(r).str("id")] = resource(r).str("state")
		}
		if o, ok := st["order"].(map[string]any); ok {
			p["orders"][resource(o).str("id")] = resource(o).str("state")
		}
		if chs, ok := st["challenges"].([]any); ok {
			for _, c := range chs {
				if m, ok := c.(map[string]any); ok {
					p["challenges"][resource(m).str("id")] = resource(m).str("state")
				}
			}
		}
	}
	return p
}

// TestRedisAdminAgrees: names issued through different nodes (and one that
// failed) show the same on every node's admin API: status/<name> at once,
// the lists once the index delay has passed, without flushing the nodes
// that did the work.
func TestRedisAdminAgrees(t *testing.T) {
	re := newRedisEnv(t, redisEnvOptions{nodes: 3})
	re.startAll()
	const failing = "admin-rejected.test"
	re.ca.SetFault(pebbleSerializer(rejectFirstOrder(failing, "rejected by the test")))
	names := namesN("admin", 0, 12)
	res := re.handshakeAll(append(slices.Clone(names), failing), 6, 1, 60*time.Second)
	issuedAt := time.Now()
	for _, name := range names {
		if r := res[name]; r.err != nil {
			t.Fatalf("%s: %v\n%s", name, r.err, re.logTails(20))
		}
	}
	if res[failing].err == nil {
		t.Fatalf("%s was issued though the CA rejected its order", failing)
	}
	all := append(slices.Clone(names), failing)
	want := map[string]bool{}
	for _, n := range all {
		want[n] = true
	}

	// every node tells where each name stands, at once, and the same
	var statuses []string
	for i := range re.nodes {
		var b strings.Builder
		for _, name := range all {
			st := re.adminStatus(i, name)
			js, _ := json.Marshal(st) // map keys sorted: comparable
			b.Write(js)
			b.WriteString("\n")
		}
		statuses = append(statuses, b.String())
	}
	for i := 1; i < len(statuses); i++ {
		if statuses[i] != statuses[0] {
			t.Errorf("node %s's status of the names differs from node %s's:\n%s\nvs\n%s", re.nodes[i].name, re.nodes[0].name, statuses[i], statuses[0])
		}
	}
	st := re.adminStatus(1, failing)
	if st["backing_off"] != true || st["order"] != nil {
		t.Errorf("status of %s: %v, want backing off without an order", failing, dump(st))
	}
	expected := re.expectedPicture(0, all)
	if len(expected["certificaterequests"]) != len(all) || len(expected["orders"]) != len(names) || len(expected["challenges"]) < len(names) {
		t.Fatalf("the names' statuses name %d requests, %d orders, %d challenges; want %d, %d, ≥%d:\n%s",
			len(expected["certificaterequests"]), len(expected["orders"]), len(expected["challenges"]), len(all), len(names), len(names), expected)
	}

	// each node's lists show that picture once the other nodes have
	// written their index markers, which they do on their own (a list only
	// flushes the node asked): poll each node, bounded
	const listDeadline = 15 * time.Second
	for i, n := range re.nodes {
		var got clusterPicture
		for tries := 0; ; tries++ {
			got = re.picture(i, want)
			if got.equal(expected) {
				t.Logf("node %s lists every name's resources %s after the last issuance (%d reads)", n.name, time.Since(issuedAt).Round(time.Millisecond), tries+1)
				break
			}
			if time.Since(issuedAt) > listDeadline || tries > 300 {
				t.Fatalf("node %s's lists still differ from the resources %s after the last issuance:\nlisted:\n%s\nstored:\n%s", n.name, listDeadline, got, expected)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	// and the filtered lists agree on every node
	for _, q := range []string{"/certflow/orders?state=valid", "/certflow/certificaterequests?state=failed",
		"/certflow/certificaterequests?state=ready", "/certflow/challenges?state=valid",
		"/certflow/orders?name=" + names[3], "/certflow/challenges?name=" + names[5],
		"/certflow/certificaterequests?name=" + failing} {
		var first []string
		for i := range re.nodes {
			var ids []string
			for _, r := range re.adminList(i, q) {
				if want[r.str("name")] {
					ids = append(ids, r.str("id")+"="+r.str("state"))
				}
			}
			sort.Strings(ids)
			if len(ids) == 0 {
				t.Errorf("node %s: %s lists none of the names", re.nodes[i].name, q)
			}
			if i == 0 {
				first = ids
			} else if !slices.Equal(ids, first) {
				t.Errorf("%s: node %s lists %v, node %s %v", q, re.nodes[i].name, ids, re.nodes[0].name, first)
			}
		}
	}
	re.checkOneOrderEach(names, true)
}
