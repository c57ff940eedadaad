// Command redisnode is Caddy with certflow and the Redis storage module
// (caddy.storage.redis, github.com/pberkel/caddy-storage-redis) compiled
// in. It exists for the integration tests, which build it with go build -o
// and run several of them on one redis-server.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/pberkel/caddy-storage-redis"

	_ "github.com/certflow/certflow"
)

func main() {
	caddycmd.Main()
}
