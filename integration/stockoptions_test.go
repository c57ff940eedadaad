package integration

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/certflow/certflow/integration/rig"
)

// The stock acme issuer's options whose meaning certflow took over from its
// own: acme_timeout and account_key.

// TestACMETimeoutBoundsValidation: acme_timeout has the stock acme
// issuer's meaning, how long the CA may take to decide once asked to
// validate. The CA here answers every authorization request after the
// challenge was accepted only after 2 s; with acme_timeout 300ms the
// challenge ends errored at the bound, saying so, long before the CA's
// answer or the challenge timeout.
func TestACMETimeoutBoundsValidation(t *testing.T) {
	schedulerIdle(t)
	e := newEnv(t, envOptions{})
	const slow = 2 * time.Second
	var accepted atomic.Bool
	e.ca.SetFault(func(r *http.Request) (int, http.Header, string, bool) {
		switch rig.KindOf(r) {
		case rig.KindChall:
			accepted.Store(true)
		case rig.KindAuthz:
			if accepted.Load() {
				select { // the CA is slow to decide
				case <-r.Context().Done():
				case <-time.After(slow):
				}
			}
		}
		return 0, nil, "", false
	})
	e.run(e.config(e.issuer(map[string]any{"acme_timeout": "300ms"})))

	const host = "slow-ca.test"
	start := time.Now()
	if _, err := e.handshake(host); err == nil {
		t.Fatal("handshake succeeded; want the challenge to fail at acme_timeout")
	}
	took := time.Since(start)
	ch := e.onlyChallenge(host)
	if ch.str("state") != "errored" || !strings.Contains(ch.str("reason"), "the CA did not decide within acme_timeout 300ms") {
		t.Fatalf("challenge: %s", dump(ch))
	}
	accept, finish := timeField(t, ch, "times.accepted"), timeField(t, ch, "times.finished")
	if waited := finish.Sub(accept); waited >= slow {
		t.Errorf("the challenge waited %s for the CA, past acme_timeout 300ms and the CA's %s", waited, slow)
	}
	t.Logf("handshake failed after %s; the challenge waited %s for the CA", took.Round(time.Millisecond),
		finish.Sub(accept).Round(time.Millisecond))
}

// TestAccountKeyPEM: account_key holds the account's PEM key itself, as in
// the stock issuer. An issuer given the key registers the account for it;
// another given the same key in a file (account_key_file) finds that
// account instead of registering one: the CA registered exactly one.
func TestAccountKeyPEM(t *testing.T) {
	schedulerIdle(t)
	e := newEnv(t, envOptions{})
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := certmagic.PEMEncodePrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "account.pem")
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}

	e.run(e.config(e.issuer(map[string]any{"account_key": string(keyPEM)})))
	e.mustHandshake("pem-key.test")
	e.reload(e.config(e.issuer(map[string]any{"account_key_file": keyFile, "email": "other@example.com"})), "pem-key.test")
	e.mustHandshake("file-key.test")

	registered := 0
	for _, r := range e.ca.Requests() {
		if r.Kind == rig.KindNewAccount && r.Status == http.StatusCreated {
			registered++
		}
	}
	if registered != 1 {
		t.Errorf("the CA registered %d accounts, want 1 (the key's)", registered)
	}
}
