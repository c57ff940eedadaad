package integration

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	certflow "github.com/certflow/certflow"
	"github.com/certflow/certflow/integration/rig"
)

// TestForcedRenewal: two Caddy processes, A and B, on one storage, both
// serving a name. A renewal forced through A's admin API is served by A at
// once and by B within certflow.RenewalServedWithin; one forced with
// `caddy certflow renew` through B likewise the other way round. Each
// renewal's order carries replaces. Then the certificate the CA already
// saw replaced is put back in storage and renewed again: Pebble answers
// alreadyReplaced, and certflow orders again at once without replaces.
func TestForcedRenewal(t *testing.T) {
	pe := newProcEnv(t, procEnvOptions{nodes: []string{"a", "b"}, admin: true})
	log := &orderLog{}
	pe.ca.SetFault(log.hook)
	a, b := pe.start("a"), pe.start("b")
	const name = "forced.cluster.test"
	logs := func() string { return "A:\n" + tail(a.Log(), 30) + "\nB:\n" + tail(b.Log(), 30) }

	serial := func(node string) string {
		leaf, err := pe.handshake(node, name, 30*time.Second)
		if err != nil {
			t.Fatalf("handshake with %s for %s: %v\n%s", node, name, err, logs())
		}
		return hex.EncodeToString(leaf.SerialNumber.Bytes())
	}
	// servedBy waits until node serves want, at most certflow's bound
	servedBy := func(node, want string) time.Duration {
		t.Helper()
		return waitForDiag(t, node+" to serve serial "+want, certflow.RenewalServedWithin, func() bool { return serial(node) == want }, logs)
	}
	leafOf := func(node string) []byte {
		leaf, err := pe.handshake(node, name, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return leaf.Raw
	}

	c0 := serial("a")
	if got := serial("b"); got != c0 {
		t.Fatalf("B serves %s, A %s", got, c0)
	}
	c0Raw := leafOf("a")

	// through A's admin API
	status, res := forceRenew(t, pe.nodes["a"].admin, name)
	if status != http.StatusOK || res.State != "ready" || res.Request == "" || res.Replaced != c0 || res.Certificate == nil {
		t.Fatalf("forced renewal through A: HTTP %d %s\n%s", status, dump(res), logs())
	}
	c1 := res.Certificate.Serial
	if got := serial("a"); got != c1 || !res.Served {
		t.Errorf("A serves %s right after renewing, want %s (served: %v)", got, c1, res.Served)
	}
	took := servedBy("b", c1)
	t.Logf("renewed through A's admin API (request %s): A served it at once, B after %s", res.Request, took.Round(time.Millisecond))

	// through B, with the CLI
	certDir := filepath.Join(pe.storage, filepath.FromSlash(certmagic.StorageKeys.CertsSitePrefix(issuerKeyOf(pe.ca), name)))
	saved := readFiles(t, certDir) // c1's files, put back below
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, pe.binary, "certflow", "renew", name, "--address", pe.nodes["b"].admin).CombinedOutput()
	if err != nil {
		t.Fatalf("caddy certflow renew %s: %v\n%s", name, err, out)
	}
	reqs := pe.resources("requests", name)
	last := reqs[len(reqs)-1]
	if !strings.Contains(string(out), last.str("id")) || !strings.Contains(string(out), "renewed") {
		t.Errorf("the CLI's output does not name the request %s as renewed:\n%s", last.str("id"), out)
	}
	c2 := serial("b")
	if c2 == c1 {
		t.Errorf("B still serves %s right after renewing", c1)
	}
	took = servedBy("a", c2)
	t.Logf("renewed with `caddy certflow renew` through B:\n%s\nA served it after %s", out, took.Round(time.Millisecond))

	// replaces, as the CA saw it
	orders := log.of(name)
	if len(orders) != 3 || orders[0].replaces != "" || orders[1].replaces == "" || orders[2].replaces == "" ||
		orders[1].replaces == orders[2].replaces {
		t.Errorf("new-orders for %s: %+v, want the first without replaces, each renewal's with its own", name, orders)
	}
	if want := ariIDOf(t, c0Raw); len(orders) > 1 && orders[1].replaces != want {
		t.Errorf("the first renewal replaces %q, want %q", orders[1].replaces, want)
	}

	// c1, which the CA knows as replaced, back in storage: a renewal of it
	// is refused alreadyReplaced by Pebble and ordered again without
	writeFiles(t, certDir, saved)
	status, res = forceRenew(t, pe.nodes["a"].admin, name)
	if status != http.StatusOK || res.State != "ready" || res.Replaced != c1 {
		t.Fatalf("renewing the replaced certificate again: HTTP %d %s\n%s", status, dump(res), logs())
	}
	var newOrders []rig.Request
	for _, r := range pe.ca.Requests() {
		if r.Kind == rig.KindNewOrder && contains(r.Identifiers, name) {
			newOrders = append(newOrders, r)
		}
	}
	orders = log.of(name)
	if len(newOrders) != 5 || len(orders) != 5 || newOrders[3].Status < 400 || orders[3].replaces == "" || newOrders[4].Status >= 400 || orders[4].replaces != "" {
		t.Errorf("want the CA to refuse the order with replaces, then accept one without: %+v %+v", newOrders, orders)
	}
	rs := pe.resources("requests", name)
	if renews, _ := rs[len(rs)-1]["renews"].(map[string]any); renews == nil || !strings.Contains(renews["no_replaces"].(string), "the CA refused replaces") {
		t.Errorf("the last request: %s", dump(rs[len(rs)-1]))
	}
	servedBy("b", res.Certificate.Serial)
	t.Logf("new-orders for %s: %d (1 first issuance, 3 forced renewals, 1 refused alreadyReplaced and sent again without replaces)", name, len(orders))
}

// issuerKeyOf is the issuer key certflow stores certificates from ca under.
func issuerKeyOf(ca *rig.CA) string { return (&certflow.Issuer{CA: ca.DirectoryURL}).IssuerKey() }

func ariIDOf(t *testing.T, raw []byte) string {
	t.Helper()
	leaf, err := x509.ParseCertificate(raw)
	if err != nil {
		t.Fatal(err)
	}
	return ariID(t, leaf)
}

// readFiles returns the files of dir by name.
func readFiles(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = b
	}
	return out
}

func writeFiles(t *testing.T, dir string, files map[string][]byte) {
	t.Helper()
	for n, b := range files {
		if err := os.WriteFile(filepath.Join(dir, n), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}
