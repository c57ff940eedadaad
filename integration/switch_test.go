package integration

import (
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	certflow "github.com/certflow/certflow"
	"github.com/certflow/certflow/integration/rig"
)

// Switching a running Caddy between the stock acme issuer and certflow, and
// back, orders nothing: both store certificates under the same issuer key.

// stockIssuer is the stock acme issuer for this env's CA, with the same
// account email as e.issuer.
func (e *env) stockIssuer() map[string]any {
	return map[string]any{
		"module":                  "acme",
		"ca":                      e.ca.DirectoryURL,
		"email":                   "ops@example.com",
		"trusted_roots_pem_files": []string{e.ca.ServerRootsFile},
	}
}

// switchConfig is a config where iss manages names (a policy of their own,
// obtained at start) and answers on demand for every other name.
func (e *env) switchConfig(iss map[string]any, names []string, admin string) rig.CaddyConfig {
	cfg := e.config(iss)
	cfg.Policies = []rig.Policy{{Subjects: names, Issuers: []map[string]any{iss}}}
	cfg.Automate = names
	cfg.AdminListen = admin
	return cfg
}

// servedSerials makes a handshake for each name and returns the serial
// (hex) each is served with. Right after a start, certmagic loads managed
// names' certificates in the background: a handshake is tried again for up
// to 10 s (what it then serves, and the orders the CA saw, tell whether
// the stored certificate was found).
func (e *env) servedSerials(names []string) map[string]string {
	e.t.Helper()
	out := map[string]string{}
	for _, n := range names {
		var leaf *x509.Certificate
		var err error
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			if leaf, err = e.handshake(n); err == nil || time.Now().After(deadline) {
				break
			}
		}
		if err != nil {
			e.t.Fatalf("handshake for %s: %v", n, err)
		}
		out[n] = hex.EncodeToString(leaf.SerialNumber.Bytes())
	}
	return out
}

// forceRenew asks the admin API at admin to renew name now.
func forceRenew(t *testing.T, admin, name string) (int, certflow.RenewResult) {
	t.Helper()
	resp, err := observeAdminClient.Post("http://"+admin+"/certflow/renew/"+name, "", nil)
	if err != nil {
		t.Fatalf("POST /certflow/renew/%s: %v", name, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var res certflow.RenewResult
	if err := json.Unmarshal(body, &res); err != nil {
		t.Fatalf("POST /certflow/renew/%s: HTTP %d: %s", name, resp.StatusCode, body)
	}
	return resp.StatusCode, res
}

// TestSwitchIssuersOrdersNothing: names obtained by the stock acme issuer
// are served after the config switches to certflow (a reload, then a
// restart) without a single new order; a forced renewal of one is made by
// certflow with replaces, the stock certificate's ARI identifier; switching
// back to acme (reload and restart) orders nothing either, and serves the
// certificate certflow renewed.
func TestSwitchIssuersOrdersNothing(t *testing.T) {
	schedulerIdle(t)
	e := newEnv(t, envOptions{})
	log := &orderLog{}
	e.ca.SetFault(log.hook)
	port, err := rig.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	admin := fmt.Sprintf("127.0.0.1:%d", port)
	managed := []string{"s1.switch.test", "s2.switch.test", "s3.switch.test", "s4.switch.test"}
	onDemand := []string{"d1.switch.test", "d2.switch.test"}
	all := append(append([]string(nil), managed...), onDemand...)
	stock, cf := e.stockIssuer(), e.issuer(nil)
	ordersSoFar := func() int {
		n := 0
		for _, name := range all {
			n += len(log.of(name))
		}
		return n
	}
	// settle lets certmagic's background jobs run after a (re)start (they
	// order what they cannot find): the point of the sleep is an absence
	settle := func(phase string, before int) {
		t.Helper()
		time.Sleep(2 * time.Second)
		if got := ordersSoFar() - before; got != 0 {
			t.Errorf("%s: %d new orders, want none", phase, got)
		}
	}

	// the stock issuer obtains every name
	e.run(e.switchConfig(stock, managed, admin))
	for _, n := range managed {
		waitFor(t, "the stock issuer to obtain "+n, pollMax, func() bool { return fileExists(e.certPath(n)) })
	}
	first := e.servedSerials(all)
	if got := ordersSoFar(); got != len(all) {
		t.Fatalf("the stock issuer made %d orders for %d names", got, len(all))
	}
	t.Logf("the stock acme issuer obtained %d certificates", len(all))

	// to certflow: a reload, then a restart
	before := ordersSoFar()
	e.reload(e.switchConfig(cf, managed, admin), managed[0])
	if got := e.servedSerials(all); !equalMaps(got, first) {
		t.Errorf("after switching to certflow (reload), served %v, want %v", got, first)
	}
	settle("switched to certflow (reload)", before)
	if err := rig.StopCaddy(); err != nil {
		t.Fatal(err)
	}
	e.run(e.switchConfig(cf, managed, admin))
	if got := e.servedSerials(all); !equalMaps(got, first) {
		t.Errorf("after restarting with certflow, served %v, want %v", got, first)
	}
	settle("restarted with certflow", before)

	// certflow renews a stock certificate, with replaces
	renewed := managed[0]
	stockLeaf := e.mustHandshake(renewed)
	status, res := forceRenew(t, admin, renewed)
	if status != http.StatusOK || res.State != "ready" || res.Request == "" || !res.Served {
		t.Fatalf("forced renewal of %s: HTTP %d %s", renewed, status, dump(res))
	}
	orders := log.of(renewed)
	if len(orders) != 2 || orders[1].replaces != ariID(t, stockLeaf) {
		t.Errorf("%s: the renewal's order replaces %q, want the stock certificate's %q: %+v", renewed, orders[len(orders)-1].replaces, ariID(t, stockLeaf), orders)
	}
	if leaf := e.mustHandshake(renewed); hex.EncodeToString(leaf.SerialNumber.Bytes()) != res.Certificate.Serial || leaf.Equal(stockLeaf) {
		t.Errorf("after the renewal %s is served serial %x, want %s", renewed, leaf.SerialNumber, res.Certificate.Serial)
	}
	reqs := e.resources("requests", renewed)
	if len(reqs) != 1 || reqs[0].str("id") != res.Request || reqs[0].str("kind") != "renewal" {
		t.Errorf("certflow's requests for %s: %s", renewed, dump(reqs))
	}
	first[renewed] = res.Certificate.Serial

	// status: the certificate, when it is renewed and why, the last renewal
	o := &observed{env: e, admin: admin}
	st := o.status(renewed)
	if c := st.Certificate; c == nil || c.Serial != res.Certificate.Serial || c.Renewal == nil || !c.Renewal.At.After(time.Now()) ||
		c.IssuerKey != e.certKeySafe() {
		t.Errorf("status of %s: certificate %s", renewed, dump(st.Certificate))
	}
	if lr := st.LastRenewal; lr == nil || lr.ID != res.Request || lr.State != "ready" || lr.Renews == nil ||
		lr.Renews.Reason != "forced" || !lr.Renews.Replaces || lr.Renews.Serial != hex.EncodeToString(stockLeaf.SerialNumber.Bytes()) {
		t.Errorf("status of %s: last renewal %s", renewed, dump(st.LastRenewal))
	}
	out, code := o.cli(renewed)
	if !strings.Contains(out, "Renewal:        "+stampOf(st.Certificate.Renewal.At)) {
		t.Errorf("caddy certflow status %s does not say when the certificate is renewed:\n%s", renewed, out)
	}
	for _, want := range []string{"Renews:", "because of forced", "the order carries replaces " + orders[len(orders)-1].replaces} {
		if !strings.Contains(out, want) {
			t.Errorf("caddy certflow status %s (exit %d) does not say %q:\n%s", renewed, code, want, out)
		}
	}
	t.Logf("$ caddy certflow status %s\n%s", renewed, out)
	t.Logf("certflow renewed %s (request %s) with replaces %s", renewed, res.Request, orders[len(orders)-1].replaces)

	// and back to acme: a reload, then a restart
	before = ordersSoFar()
	e.reload(e.switchConfig(stock, managed, admin), managed[1])
	if got := e.servedSerials(all); !equalMaps(got, first) {
		t.Errorf("after switching back to acme (reload), served %v, want %v", got, first)
	}
	settle("switched back to acme (reload)", before)
	if err := rig.StopCaddy(); err != nil {
		t.Fatal(err)
	}
	e.run(e.switchConfig(stock, managed, admin))
	if got := e.servedSerials(all); !equalMaps(got, first) {
		t.Errorf("after restarting with acme, served %v, want %v", got, first)
	}
	settle("restarted with acme", before)
	t.Logf("new orders in all: %d for %d names (%d by the stock issuer, 1 renewal by certflow); none from switching",
		ordersSoFar(), len(all), len(all))
}

// TestCertificatesUnderTheOldKeyAreServed: certificates certflow stored
// under the issuer key it used before it shared the stock issuer's
// (certflow-<CA key>) are copied to the shared key once, at start, and
// served with no new order; the old files stay; a restart copies nothing
// again.
func TestCertificatesUnderTheOldKeyAreServed(t *testing.T) {
	schedulerIdle(t)
	e := newEnv(t, envOptions{})
	log := &orderLog{}
	e.ca.SetFault(log.hook)
	managed := []string{"k1.oldkey.test", "k2.oldkey.test", "k3.oldkey.test"}
	onDemand := []string{"k4.oldkey.test", "k5.oldkey.test"}
	all := append(append([]string(nil), managed...), onDemand...)
	cfg := e.switchConfig(e.issuer(nil), managed, "")
	e.run(cfg)
	for _, n := range managed {
		waitFor(t, "certflow to obtain "+n, pollMax, func() bool { return fileExists(e.certPath(n)) })
	}
	first := e.servedSerials(all)
	if err := rig.StopCaddy(); err != nil {
		t.Fatal(err)
	}

	// the storage as certflow left it before it shared the stock key: the
	// certificates under certflow-<CA key>, nothing under the CA's key, no
	// migration marker
	oldDir := filepath.Join(e.storage, "certificates", e.stateKeySafe())
	newDir := filepath.Join(e.storage, "certificates", e.certKeySafe())
	if err := os.Rename(newDir, oldDir); err != nil {
		t.Fatal(err)
	}
	marker := filepath.Join(e.storage, "certflow", e.stateKeySafe(), "migrations", "shared-issuer-key.json")
	if err := os.Remove(marker); err != nil {
		t.Fatalf("the migration marker of the first start: %v", err)
	}

	before := log.count()
	e.run(cfg)
	if got := e.servedSerials(all); !equalMaps(got, first) {
		t.Errorf("after the upgrade, served %v, want %v", got, first)
	}
	// the point is an absence: certmagic's background jobs have had time to
	// order what they did not find
	time.Sleep(2 * time.Second)
	if got := log.count() - before; got != 0 {
		t.Errorf("%d new orders after the upgrade, want none", got)
	}
	var rec struct {
		Copied int `json:"copied"`
		Failed int `json:"failed"`
	}
	b, err := os.ReadFile(marker)
	if err != nil || json.Unmarshal(b, &rec) != nil || rec.Copied != len(all) || rec.Failed != 0 {
		t.Errorf("migration marker: %s (%v), want %d copied", b, err, len(all))
	}
	for _, n := range all {
		if !fileExists(filepath.Join(oldDir, n, n+".crt")) {
			t.Errorf("the old key's copy of %s is gone", n)
		}
	}
	stat, _ := os.Stat(marker)
	if err := rig.StopCaddy(); err != nil {
		t.Fatal(err)
	}
	e.run(cfg)
	e.servedSerials(all)
	if again, _ := os.Stat(marker); stat == nil || again == nil || !again.ModTime().Equal(stat.ModTime()) {
		t.Errorf("the migration ran again at the next start")
	}
	t.Logf("%d certificates under the old key served after the upgrade, %d new orders", len(all), log.count()-before)
}

// stateKeySafe and certKeySafe are the storage folder names of certflow's
// state key and of the certificate key.
func (e *env) stateKeySafe() string { return certmagic.StorageKeys.Safe(e.stateKey()) }
func (e *env) certKeySafe() string  { return certmagic.StorageKeys.Safe(e.certKey()) }

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// stampOf is a time as `caddy certflow status` prints it.
func stampOf(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z") }
