// Package bench is certflow's benchmark against stock Caddy: it runs the same
// Caddy binary (built with certflow compiled in) as a separate process, once
// configured with the certflow issuer and once with Caddy's stock "acme"
// issuer, alternating in one run, against an in-process Pebble ACME CA and a
// DNS server answering 127.0.0.1 (both from integration/rig). Each run gets
// fresh ports, a fresh CA and fresh file-system storage on the local disk.
//
// For each scenario ("N names at concurrency C") and each issuer it measures
// the first-handshake latency of new on-demand names (p50/p90/p99/max), the
// wall time of the burst, failed handshakes by kind, the latency of cached
// handshakes, Caddy's peak RSS and CPU time, and the CA requests per new name,
// and prints them side by side with the ratio certflow/stock.
//
// The command cmd/certflow-bench is a thin CLI over Run; the integration
// smoke test calls Run with a tiny workload. All traffic stays on 127.0.0.1,
// every loop is bounded in count and time, and only the Caddy processes the
// package started are ever stopped, by their PID.
package bench
