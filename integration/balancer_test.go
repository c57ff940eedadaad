package integration

import (
	"testing"

	"github.com/certflow/certflow/integration/rig"
)

// startBalancer starts a TCP load balancer (rig.Balancer) for t, closed at
// its end.
func startBalancer(t *testing.T) *rig.Balancer {
	t.Helper()
	b, err := rig.StartBalancer()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b
}
