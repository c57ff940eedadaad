// Command caddy is the benchmark's Caddy: Caddy's standard modules, the
// certflow issuer, the Redis storage module (caddy.storage.redis,
// github.com/pberkel/caddy-storage-redis) and the benchmark's counting
// storage (internal/bench/countstore). The benchmark runs this one binary
// with the stock acme issuer and with certflow.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/pberkel/caddy-storage-redis"

	_ "github.com/certflow/certflow"
	_ "github.com/certflow/certflow/internal/bench/countstore"
)

func main() {
	caddycmd.Main()
}
