package certflow

import (
	"crypto/tls"
	"fmt"
	"hash/maphash"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddytls"
	lru "github.com/hashicorp/golang-lru/v2"
	"go.uber.org/zap"
)

// EventClientBudgetExceeded is emitted by tls.permission.certflow when a
// client address first exceeds its budget of new names in a window (once
// per client and window, like the WARN log line). Data: client (the
// address or IPv6 /64), limit (int), window (float64 seconds), until
// (time.Time, the end of the window), name (the first name refused).
const EventClientBudgetExceeded = "certflow_client_budget_exceeded"

// maxBudgetClients bounds the client addresses whose window is tracked;
// past it the least recently seen is forgotten (and starts afresh if it
// comes back). An entry costs a few hundred bytes at the default budget.
const maxBudgetClients = 65536

// clientBudget counts, per client address, the new names its handshakes
// triggered in the current window.
type clientBudget struct {
	limit   int
	window  time.Duration
	seed    maphash.Seed
	clients *lru.Cache[string, *clientWindow]
}

// clientWindow is one client's current window. Names are kept as hashes,
// at most limit of them: a name counted once is not counted again when the
// client retries it.
type clientWindow struct {
	mu     sync.Mutex
	start  time.Time
	names  []uint64
	warned bool
}

func newClientBudget(limit int, window time.Duration) *clientBudget {
	c, err := lru.New[string, *clientWindow](maxBudgetClients)
	if err != nil {
		panic(err) // only for a size below 1
	}
	return &clientBudget{limit: limit, window: window, seed: maphash.MakeSeed(), clients: c}
}

// budgetVerdict is spend's answer.
type budgetVerdict struct {
	counted bool      // the name was already counted, or now is
	first   bool      // the first refusal of this window: warn
	until   time.Time // the end of the window
}

// spend counts name against client's window, or refuses it when the
// window's budget is spent.
func (b *clientBudget) spend(client, name string, now time.Time) budgetVerdict {
	w, ok := b.clients.Get(client)
	if !ok {
		fresh := &clientWindow{start: now}
		if prev, found, _ := b.clients.PeekOrAdd(client, fresh); found {
			w = prev
		} else {
			w = fresh
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if now.Sub(w.start) >= b.window {
		w.start, w.names, w.warned = now, w.names[:0], false
	}
	until := w.start.Add(b.window)
	h := maphash.String(b.seed, name)
	if w.has(h) {
		return budgetVerdict{counted: true, until: until}
	}
	if len(w.names) < b.limit {
		w.names = append(w.names, h)
		return budgetVerdict{counted: true, until: until}
	}
	first := !w.warned
	w.warned = true
	return budgetVerdict{first: first, until: until}
}

func (w *clientWindow) has(h uint64) bool {
	for _, n := range w.names {
		if n == h {
			return true
		}
	}
	return false
}

// spendBudget charges a new name to the handshake's client address, or
// refuses it when the client's budget is spent. A name with a certificate
// in storage is not new: it is neither counted nor refused.
func (p *Permission) spendBudget(client, name string, stored *storedOnce, now time.Time) error {
	b := p.state.budget
	if stored.get() {
		return nil
	}
	v := b.spend(client, name, now)
	if v.counted {
		return nil
	}
	permissionMetrics.refusals.WithLabelValues(refusedClientBudget).Inc()
	if v.first {
		p.logger.Warn("client exceeded its budget of new names; its new names are refused until the window ends",
			zap.String("client", client), zap.Int("limit", b.limit), zap.Duration("window", b.window),
			zap.Time("until", v.until), zap.String("name", name))
		if p.events != nil && p.ctx.Context != nil && p.ctx.Err() == nil && p.events.ShouldEmit(EventClientBudgetExceeded) {
			p.events.Emit(p.ctx, EventClientBudgetExceeded, map[string]any{
				"client": client,
				"limit":  b.limit,
				"window": b.window.Seconds(),
				"until":  v.until,
				"name":   name,
			})
		}
	}
	return fmt.Errorf("%w: client %s has triggered %d new names within %s; its new names are refused until %s",
		caddytls.ErrPermissionDenied, client, b.limit, b.window, v.until.UTC().Format(time.RFC3339))
}

// clientKey is the budget's key for the handshake's peer: its IP without
// the port, IPv6 addresses by their /64 (one host usually holds a whole
// /64, and could otherwise rotate through it). Empty when unknown.
func clientKey(hello *tls.ClientHelloInfo) string {
	if hello == nil || hello.Conn == nil || hello.Conn.RemoteAddr() == nil {
		return ""
	}
	var addr netip.Addr
	switch ra := hello.Conn.RemoteAddr().(type) {
	case *net.TCPAddr:
		addr, _ = netip.AddrFromSlice(ra.IP)
	default:
		ap, err := netip.ParseAddrPort(ra.String())
		if err != nil {
			return ""
		}
		addr = ap.Addr()
	}
	return clientKeyOf(addr)
}

// clientKeyOf buckets an address: IPv4 (also IPv4-mapped IPv6) as is,
// IPv6 by its /64.
func clientKeyOf(addr netip.Addr) string {
	if !addr.IsValid() {
		return ""
	}
	addr = addr.Unmap().WithZone("")
	if addr.Is4() {
		return addr.String()
	}
	prefix, err := addr.Prefix(64)
	if err != nil {
		return addr.String()
	}
	return prefix.String()
}
