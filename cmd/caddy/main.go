// Command caddy is Caddy with the certflow issuer compiled in: the same as
// `xcaddy build --with github.com/certflow/certflow`.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/certflow/certflow"
)

func main() {
	caddycmd.Main()
}
