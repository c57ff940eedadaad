package integration

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/certflow/certflow/integration/rig"
)

// TestManagedRetryAfterFailedAttempt: a managed (not on-demand) name whose
// first attempt fails gets a normal error, not certmagic.ErrNoRetry, so
// certmagic's retry ladder keeps running: its retry a minute later obtains
// the certificate. The CA refuses the first new-order for the name (a 400
// rejectedIdentifier problem, once); the stored history shows a failed
// CertificateRequest with the CA's reason followed by a ready one.
func TestManagedRetryAfterFailedAttempt(t *testing.T) {
	schedulerIdle(t)
	e := newEnv(t, envOptions{})
	const name = "managed.test"
	const detail = "certflow test: the first order for managed.test is refused"
	e.ca.SetFault(rejectFirstOrder(name, detail))

	logFile := filepath.Join(t.TempDir(), "caddy.log")
	cfg := e.config(e.issuer(nil))
	cfg.Policies = []rig.Policy{{Subjects: []string{name}, Issuers: []map[string]any{e.issuer(nil)}}}
	cfg.Automate = []string{name}
	cfg.LogFile = logFile
	start := time.Now()
	e.run(cfg)

	waitFor(t, "the first certificate request to fail", pollMax, func() bool {
		reqs := e.resources("requests", name)
		return len(reqs) >= 1 && reqs[0].str("state") == "failed"
	})
	first := e.resources("requests", name)[0]
	if !strings.Contains(first.str("reason"), detail) || first["on_demand"] == true {
		t.Fatalf("first certificate request: want a managed request failed with the CA's reason %q: %s", detail, dump(first))
	}
	// certmagic only logs "will retry" for an error that is not ErrNoRetry
	waitFor(t, "certmagic to log that it will retry "+name, 10*time.Second, func() bool {
		b, _ := os.ReadFile(logFile)
		for _, line := range bytes.Split(b, []byte("\n")) {
			if bytes.Contains(line, []byte("will retry")) && bytes.Contains(line, []byte(name)) {
				return true
			}
		}
		return false
	})

	waited := waitFor(t, "certmagic's retry to store the certificate of "+name, 90*time.Second, func() bool {
		return fileExists(e.certPath(name))
	})
	t.Logf("certificate stored %s after start (%s after the first failure)",
		time.Since(start).Round(time.Second), waited.Round(time.Second))

	reqs := e.resources("requests", name)
	if len(reqs) != 2 || reqs[0].str("state") != "failed" || reqs[1].str("state") != "ready" {
		t.Fatalf("want a failed then a ready certificate request, got: %s", dump(reqs))
	}
	if reqs[1]["on_demand"] == true || number(reqs[1]["attempt"]) != 2 {
		t.Errorf("second certificate request: want managed attempt 2: %s", dump(reqs[1]))
	}
	if n := e.ca.NewOrders(name); n != 2 {
		t.Errorf("CA saw %d new orders for %s, want 2 (refused, then issued)", n, name)
	}

	// Caddy serves the certificate it manages (no on-demand: the policy for
	// the name is not on demand); it is cached right after being stored
	var hsErr error
	for deadline := time.Now().Add(5 * time.Second); ; {
		if _, hsErr = e.handshake(name); hsErr == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if hsErr != nil {
		t.Errorf("handshake for managed %s after issuance: %v", name, hsErr)
	}
}
