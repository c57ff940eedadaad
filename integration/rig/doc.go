// Package rig is the reusable test and demo rig for certflow: an in-process
// DNS server that resolves every name to 127.0.0.1, an in-process Pebble ACME
// CA with request counting and fault injection, a Caddy JSON config builder,
// helpers to run Caddy in this process, an on-demand "ask" endpoint, a TLS
// handshake helper and readers for the resources certflow persists in
// storage.
//
// The rig is imported by integration tests and by cmd/certflow-demo, so it
// does not import "testing". All traffic stays on 127.0.0.1.
//
// Caddy is a process singleton (caddy.Load / caddy.Stop), and Pebble reads its
// knobs from environment variables while being constructed, so neither
// RunCaddy nor StartCA may be used concurrently with itself; tests using them
// must not run in parallel.
package rig
