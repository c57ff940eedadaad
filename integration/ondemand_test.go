package integration

import (
	"testing"
)

// TestOnDemandLifecycle: the first handshake for a new name waits while
// certflow obtains the certificate, over HTTP-01 only and over TLS-ALPN-01
// only, and the stored resources show the whole lifecycle.
func TestOnDemandLifecycle(t *testing.T) {
	tests := []struct {
		name       string
		host       string
		challenges map[string]any
		wantType   string
	}{
		{"http-01 only", "http.test", map[string]any{"tls-alpn": map[string]any{"disabled": true}}, "http-01"},
		{"tls-alpn-01 only", "alpn.test", map[string]any{"http": map[string]any{"disabled": true}}, "tls-alpn-01"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, envOptions{})
			e.run(e.config(e.issuer(map[string]any{"challenges": tt.challenges})))

			e.mustHandshake(tt.host)

			reqs := e.resources("requests", tt.host)
			if len(reqs) != 1 || reqs[0].str("state") != "ready" {
				t.Fatalf("certificate requests: %s", dump(reqs))
			}
			orders := e.resources("orders", tt.host)
			if len(orders) != 1 || orders[0].str("state") != "valid" || orders[0].str("request") != reqs[0].str("id") {
				t.Fatalf("orders: %s", dump(orders))
			}
			chals := e.resources("challenges", tt.host)
			if len(chals) != 1 {
				t.Fatalf("challenges: %s", dump(chals))
			}
			ch := chals[0]
			if ch.str("state") != "valid" || ch.str("type") != tt.wantType || ch["cleaned_up"] != true {
				t.Fatalf("challenge: %s", dump(ch))
			}
			times, _ := ch["times"].(map[string]any)
			for _, step := range []string{"scheduled", "presented", "self_checked", "accepted", "finished"} {
				if _, ok := times[step]; !ok {
					t.Errorf("challenge never reached %s: %s", step, dump(ch))
				}
			}
			if n := e.ca.NewOrders(tt.host); n != 1 {
				t.Errorf("CA saw %d new orders for %s, want 1", n, tt.host)
			}
			if left := e.tokenFiles(); len(left) != 0 {
				t.Errorf("challenge tokens left in storage: %v", left)
			}
			// a second handshake is served from the cache, no new order
			e.mustHandshake(tt.host)
			if n := e.ca.NewOrders(tt.host); n != 1 {
				t.Errorf("after a second handshake the CA saw %d new orders, want 1", n)
			}
		})
	}
}
