package integration

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/certflow/certflow/integration/rig"
)

// TestFullQueueNeverStrandsAManagedName: with one slot and a queue of one,
// a flood of on-demand names fills the scheduler; a managed name added by a
// reload then meets the full queue. It gets an ordinary error (not
// certmagic.ErrNoRetry), so certmagic's retry ladder keeps running, and once
// the flood is over its retry obtains the certificate, without a reload.
func TestFullQueueNeverStrandsAManagedName(t *testing.T) {
	schedulerIdle(t)
	e := newEnv(t, envOptions{})
	flood := e.issuer(map[string]any{
		"max_concurrent_challenges": 1,
		"max_queued_challenges":     1,
		"self_check":                map[string]any{"interval": "50ms", "timeout": "3m"},
	})
	cfg := e.config(flood)
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	cfg.LogFile = logFile
	e.run(cfg)
	e.mustHandshake("probe.test")

	holders := []string{"flood-1.test", "flood-2.test"}
	e.block(holders...)
	wait := e.handshakeAsync(holders...)
	waitFor(t, "the flood to fill the slot and the queue", pollMax, func() bool {
		live, queued := currentScheduler().Stats()
		return live == 1 && queued == 1
	})
	e.handshakeAsync("flood-3.test", "flood-4.test", "flood-5.test")() // refused: the queue is full

	const managed = "managed-under-flood.test"
	cfg.Policies = []rig.Policy{{Subjects: []string{managed}, Issuers: []map[string]any{flood}}}
	cfg.Automate = []string{managed}
	e.reload(cfg, "probe.test")
	waitFor(t, "certmagic to log that it will retry "+managed, pollMax, func() bool {
		b, _ := os.ReadFile(logFile)
		for _, line := range bytes.Split(b, []byte("\n")) {
			if bytes.Contains(line, []byte("will retry")) && bytes.Contains(line, []byte(managed)) &&
				bytes.Contains(line, []byte(queueFullText)) {
				return true
			}
		}
		return false
	})
	if fileExists(e.certPath(managed)) {
		t.Fatal("the managed name was issued although the queue was full")
	}

	e.unblock(holders...)
	for n, r := range wait() {
		if r.err != nil {
			t.Errorf("handshake for %s: %v", n, r.err)
		}
	}
	// certmagic retries a failed managed obtain after a minute
	waited := waitFor(t, "certmagic's retry to store the certificate of "+managed, 90*time.Second, func() bool {
		return fileExists(e.certPath(managed))
	})
	t.Logf("the managed name was issued %s after the flood ended", waited.Round(time.Second))
}
