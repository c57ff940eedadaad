package integration

import (
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// balancer is a TCP load balancer on 127.0.0.1: each accepted connection
// goes to a backend picked at random; a backend that refuses the dial is
// skipped and another tried.
type balancer struct {
	ln       net.Listener
	backends []string
	port     int
	mu       sync.Mutex
	conns    map[net.Conn]string // open connections: to a backend (its address), or from a client ("")
	wg       sync.WaitGroup
	dialFail atomic.Int64
}

func startBalancer(t *testing.T) *balancer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &balancer{ln: ln, port: ln.Addr().(*net.TCPAddr).Port, conns: map[net.Conn]string{}}
	b.wg.Add(1)
	go b.serve()
	t.Cleanup(b.close)
	return b
}

func (b *balancer) setBackends(addrs []string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.backends = append([]string(nil), addrs...)
}

// track adds (add) or removes an open connection; backend is the address
// it goes to, "" for a client's.
func (b *balancer) track(c net.Conn, backend string, add bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if add {
		b.conns[c] = backend
	} else {
		delete(b.conns, c)
	}
}

// openTo returns how many connections to backend are open; "" counts every
// backend's.
func (b *balancer) openTo(backend string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, to := range b.conns {
		if to != "" && (backend == "" || to == backend) {
			n++
		}
	}
	return n
}

func (b *balancer) serve() {
	defer b.wg.Done()
	for {
		c, err := b.ln.Accept()
		if err != nil {
			return
		}
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			b.proxy(c)
		}()
	}
}

func (b *balancer) proxy(c net.Conn) {
	b.track(c, "", true)
	defer func() { b.track(c, "", false); _ = c.Close() }()
	b.mu.Lock()
	backends := append([]string(nil), b.backends...)
	b.mu.Unlock()
	var up net.Conn
	var backend string
	for _, i := range rand.Perm(len(backends)) {
		conn, err := net.DialTimeout("tcp", backends[i], time.Second)
		if err == nil {
			up, backend = conn, backends[i]
			break
		}
		b.dialFail.Add(1)
	}
	if up == nil {
		return
	}
	b.track(up, backend, true)
	defer func() { b.track(up, backend, false); _ = up.Close() }()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, c); closeWrite(up); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, up); closeWrite(c); done <- struct{}{} }()
	<-done
	<-done
}

func closeWrite(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}

func (b *balancer) close() {
	_ = b.ln.Close()
	b.mu.Lock()
	for c := range b.conns {
		_ = c.Close()
	}
	b.mu.Unlock()
	b.wg.Wait()
}
