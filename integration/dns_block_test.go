package integration

import (
	"net/netip"
)

// unreachable is a loopback address nothing listens on: a name resolving to
// it fails both certflow's self-check and the CA's validation at once
// (connection refused), until the name is reset.
var unreachable = netip.MustParseAddr("127.0.0.2")

// block makes names resolve to an address where nothing listens, so their
// self-checks keep failing, until unblock (or the end of the test).
func (e *env) block(names ...string) {
	for _, n := range names {
		e.dns.SetAddrs(n, unreachable)
	}
	e.t.Cleanup(func() { e.unblock(names...) })
}

// unblock restores the default address (127.0.0.1) of names.
func (e *env) unblock(names ...string) {
	for _, n := range names {
		e.dns.ResetAddrs(n)
	}
}
