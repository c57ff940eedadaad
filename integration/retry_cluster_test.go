package integration

import (
	"net/http"
	"testing"
	"time"

	certflow "github.com/certflow/certflow"
)

// TestRetryClearsOnEveryNode: two Caddy processes on one storage. A name
// refused by the CA through node B backs off, and B's PreCheck refuses its
// handshakes from what B remembers. POST /certflow/retry/<name> on node A
// clears it in storage and notes it for the other nodes: B forgets the
// backoff within certflow.RenewalServedWithin and issues the name, long
// before the backoff would have ended.
func TestRetryClearsOnEveryNode(t *testing.T) {
	pe := newProcEnv(t, procEnvOptions{nodes: []string{"a", "b"}, admin: true})
	const name = "retried.cluster.test"
	pe.ca.SetFault(rejectFirstOrder(name, "certflow test: refused once"))
	pe.start("a")
	pe.start("b")
	if _, err := pe.handshake("b", name, 30*time.Second); err == nil {
		t.Fatal("the first handshake succeeded despite the refusal")
	}
	if _, err := pe.handshake("b", name, 30*time.Second); err == nil {
		t.Fatal("a handshake within the backoff succeeded")
	}
	if n := pe.ca.NewOrders(name); n != 1 {
		t.Fatalf("the CA saw %d new-orders during the backoff, want 1", n)
	}

	req, _ := http.NewRequest(http.MethodPost, "http://"+pe.nodes["a"].admin+"/certflow/retry/"+name, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST retry on A: HTTP %d", resp.StatusCode)
	}
	took := waitFor(t, "node B to issue the name cleared on A", certflow.RenewalServedWithin+5*time.Second, func() bool {
		_, err := pe.handshake("b", name, 30*time.Second)
		return err == nil
	})
	t.Logf("B issued %s %s after the retry on A (bound %s)", name, took.Round(time.Millisecond), certflow.RenewalServedWithin)
}
