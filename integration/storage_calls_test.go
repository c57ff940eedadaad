package integration

import (
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// storageCallsMetric is certflow's count of its own storage calls.
const storageCallsMetric = "certflow_storage_operations_total"

// maxListsPerNodePass bounds the storage lists a node makes that do not
// belong to any handshake: one maintenance pass (3s after start, then
// hourly) lists requests, orders and challenges for retention and the
// challenges again for leftovers.
const maxListsPerNodePass = 4

// storageLists is how many times certflow has listed storage in this
// process: its storage calls metric, read from the running Caddy's metrics
// registry.
func storageLists(t *testing.T) float64 {
	t.Helper()
	ctx := caddy.ActiveContext()
	families, err := ctx.GetMetricsRegistry().Gather()
	if err != nil {
		t.Fatalf("reading Caddy's metrics: %v", err)
	}
	var lists float64
	for _, f := range families {
		if f.GetName() != storageCallsMetric {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "operation" && l.GetValue() == "list" {
					lists += m.GetCounter().GetValue()
				}
			}
		}
	}
	return lists
}
