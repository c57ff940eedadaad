package integration

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/certflow/certflow/integration/rig"
)

// What the stock acme issuer's profile, certificate_lifetime and
// preferred_chains do to the order and to the certificate served, against
// Pebble configured with several profiles, and with alternate roots.

// TestProfileValidity: Pebble offers two profiles with their own validity
// and gives an order that names none a random one; with profile set, every
// certificate has that profile's validity, and the stored Order says which
// profile the CA issued under.
func TestProfileValidity(t *testing.T) {
	schedulerIdle(t)
	profiles := map[string]time.Duration{"short": 2 * time.Hour, "long": 72 * time.Hour}
	e := newEnv(t, envOptions{tuneCA: func(o *rig.CAOptions) { o.Profiles = profiles }})
	probe := ""
	for _, profile := range []string{"short", "long"} {
		cfg := e.config(e.issuer(map[string]any{"profile": profile}))
		if probe == "" {
			e.run(cfg)
		} else {
			e.reload(cfg, probe)
		}
		for i := range 3 {
			host := fmt.Sprintf("n%d.%s.profile.test", i, profile)
			leaf := e.mustHandshake(host)
			probe = host
			// Pebble's notAfter is notBefore + validity - 1s
			if got, want := leaf.NotAfter.Sub(leaf.NotBefore), profiles[profile]-time.Second; got != want {
				t.Errorf("%s: certificate valid for %s, want %s (profile %s)", host, got, want, profile)
			}
			orders := e.resources("orders", host)
			if len(orders) != 1 || orders[0].str("profile") != profile {
				t.Errorf("%s: orders %s, want one for profile %s", host, dump(orders), profile)
			}
		}
	}
}

// TestProfileNotOffered: a profile the CA's directory does not offer fails
// the request when the order would be made, with the profiles the CA offers
// in the reason, and no new-order request reaches the CA; loading the
// config never asks the CA (it loads while the CA is unreachable).
func TestProfileNotOffered(t *testing.T) {
	schedulerIdle(t)
	e := newEnv(t, envOptions{tuneCA: func(o *rig.CAOptions) {
		o.Profiles = map[string]time.Duration{"classic": 0, "tlsserver": 0}
	}})

	closedPort, err := rig.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	offline := e.issuer(map[string]any{"profile": "shortlived", "ca": fmt.Sprintf("https://127.0.0.1:%d/dir", closedPort)})
	e.run(e.config(offline)) // fails the test if loading needed the CA

	e.run(e.config(e.issuer(map[string]any{"profile": "shortlived"})))
	const host = "unknown.profile.test"
	var err2 error
	waitFor(t, "Caddy to answer after the reload", pollMax, func() bool {
		_, err2 = e.handshake(host)
		return len(e.resources("requests", host)) > 0
	})
	if err2 == nil {
		t.Fatalf("handshake for %s succeeded with a profile the CA does not offer", host)
	}
	reqs := e.resources("requests", host)
	if len(reqs) != 1 || reqs[0].str("state") != "failed" {
		t.Fatalf("certificate requests: %s", dump(reqs))
	}
	const want = `ACME profile "shortlived" is not offered by the CA; its directory offers: classic, tlsserver`
	if reason := reqs[0].str("reason"); !strings.Contains(reason, want) {
		t.Errorf("reason %q, want it to contain %q", reason, want)
	}
	if n := e.ca.NewOrders(host); n != 0 {
		t.Errorf("the CA saw %d new-order requests for %s, want none", n, host)
	}
	// the policy's mistake, not the name's: no backoff starts
	if party := reqs[0].str("charged_to"); party != "nobody" {
		t.Errorf("the failure is charged to %q, want nobody", party)
	}
	if rec := nameRecordOf(t, e.storage, host); rec != nil && rec["failures"] != nil && rec["failures"] != float64(0) {
		t.Errorf("the name's failure count grew: %s", dump(rec))
	}
}

// TestCertificateLifetime: certificate_lifetime becomes the order's
// notAfter, which Pebble honours: the certificate ends that long after the
// order was made, whatever the profile's validity (here 90 days).
func TestCertificateLifetime(t *testing.T) {
	schedulerIdle(t)
	e := newEnv(t, envOptions{})
	const lifetime = 3 * time.Hour
	e.run(e.config(e.issuer(map[string]any{"certificate_lifetime": lifetime.String()})))

	const host = "lifetime.test"
	before := time.Now().Truncate(time.Second)
	leaf := e.mustHandshake(host)
	after := time.Now()
	if leaf.NotAfter.Before(before.Add(lifetime)) || leaf.NotAfter.After(after.Add(lifetime)) {
		t.Errorf("certificate ends at %s, want between %s and %s (made at most %s after the handshake began)",
			leaf.NotAfter, before.Add(lifetime), after.Add(lifetime), after.Sub(before).Round(time.Millisecond))
	}
	orders := e.resources("orders", host)
	if len(orders) != 1 {
		t.Fatalf("orders: %s", dump(orders))
	}
	if asked := timeField(t, orders[0], "not_after"); !asked.Equal(leaf.NotAfter) {
		t.Errorf("the order asked for notAfter %s, the certificate has %s", asked, leaf.NotAfter)
	}
}

// TestPreferredChains: Pebble with three roots offers every certificate
// with three chains (the default and two alternates) of two intermediates
// each. Whatever preferred_chains picks is what certmagic stores and Caddy
// serves, and it verifies against the root it leads to.
func TestPreferredChains(t *testing.T) {
	schedulerIdle(t)
	e := newEnv(t, envOptions{tuneCA: func(o *rig.CAOptions) { o.AlternateRoots, o.ChainLength = 2, 2 }})
	roots := e.ca.Roots()
	if len(roots) != 3 {
		t.Fatalf("Pebble has %d roots, want 3", len(roots))
	}

	// without a preference: the CA's default chain. This first certificate
	// also shows what the chains look like.
	e.run(e.config(e.issuer(nil)))
	leaf := e.mustHandshake("default.chains.test")
	offered, err := e.ca.OfferedChains(leaf)
	if err != nil {
		t.Fatal(err)
	}
	if len(offered) != 3 {
		t.Fatalf("Pebble offers %d chains, want 3", len(offered))
	}
	e.checkStoredChain("default.chains.test", offered, 0, roots[0])
	// the top intermediate of chain 1 (issued by its root) is in no other chain
	chain1 := parsePEMChain(t, offered[1])
	topOfChain1 := chain1[len(chain1)-1].Subject.CommonName
	smallest := 0
	for i, c := range offered {
		if len(c) < len(offered[smallest]) {
			smallest = i
		}
	}

	for _, tc := range []struct {
		name  string
		pref  map[string]any
		chain int
	}{
		{"root common name", map[string]any{"root_common_name": []string{roots[2].Subject.CommonName}}, 2},
		{"root common names in order", map[string]any{"root_common_name": []string{"No Such Root", roots[1].Subject.CommonName, roots[2].Subject.CommonName}}, 1},
		{"any common name", map[string]any{"any_common_name": []string{topOfChain1}}, 1},
		{"no match", map[string]any{"root_common_name": []string{"No Such Root"}}, 0},
		{"smallest", map[string]any{"smallest": true}, smallest},
	} {
		e.reload(e.config(e.issuer(map[string]any{"preferred_chains": tc.pref})), "default.chains.test")
		host := strings.ReplaceAll(tc.name, " ", "-") + ".chains.test"
		e.mustHandshake(host)
		e.checkStoredChain(host, nil, tc.chain, roots[tc.chain])
	}
}

// checkStoredChain checks that the chain certmagic stored for host is
// Pebble's chain number want (offered, or Pebble's chains for the stored
// leaf when nil), that the Order records which chain was picked, and that a
// handshake serves a chain verifying against root alone.
func (e *env) checkStoredChain(host string, offered [][]byte, want int, root *x509.Certificate) {
	e.t.Helper()
	stored, err := os.ReadFile(e.certPath(host))
	if err != nil {
		e.t.Fatalf("reading the stored certificate of %s: %v", host, err)
	}
	if offered == nil {
		if offered, err = e.ca.OfferedChains(parsePEMChain(e.t, stored)[0]); err != nil {
			e.t.Fatal(err)
		}
	}
	got := -1
	for i, c := range offered {
		if bytes.Equal(c, stored) {
			got = i
		}
	}
	if got != want {
		e.t.Errorf("%s: stored chain is Pebble's chain %d, want %d", host, got, want)
	}
	orders := e.resources("orders", host)
	if len(orders) != 1 {
		e.t.Fatalf("%s: orders %s", host, dump(orders))
	}
	if recorded := orders[0].str("chain"); (want == 0) != (recorded == orders[0].str("certificate")) ||
		(want != 0 && !strings.HasSuffix(recorded, fmt.Sprintf("/%d", want))) {
		e.t.Errorf("%s: the order records chain %q (certificate %q), want chain %d",
			host, recorded, orders[0].str("certificate"), want)
	}
	pool := x509.NewCertPool()
	pool.AddCert(root)
	if _, err := rig.Handshake(e.addr(), host, pool, 30*time.Second); err != nil {
		e.t.Errorf("%s: the served chain does not verify against %q alone: %v", host, root.Subject.CommonName, err)
	}
}

func parsePEMChain(t *testing.T, data []byte) []*x509.Certificate {
	t.Helper()
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		certs = append(certs, cert)
	}
	if len(certs) == 0 {
		t.Fatal("no certificate in the chain")
	}
	return certs
}
