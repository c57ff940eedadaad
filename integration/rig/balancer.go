package rig

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Balancer is a TCP load balancer on 127.0.0.1, in front of several Caddy
// processes sharing one storage: each accepted connection goes to a backend
// picked at random; a backend that refuses the dial is skipped and another
// tried. The CA validates through it, so a challenge is answered by
// whichever node it reaches.
type Balancer struct {
	// Port is the balancer's port on 127.0.0.1.
	Port int

	ln       net.Listener
	mu       sync.Mutex
	backends []string
	conns    map[net.Conn]string // open connections: to a backend (its address), or from a client ("")
	wg       sync.WaitGroup
	dialFail atomic.Int64
}

// StartBalancer listens on a free loopback port; SetBackends says where
// connections go. Close stops it.
func StartBalancer() (*Balancer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("starting a balancer: %w", err)
	}
	b := &Balancer{ln: ln, Port: ln.Addr().(*net.TCPAddr).Port, conns: map[net.Conn]string{}}
	b.wg.Add(1)
	go b.serve()
	return b, nil
}

// Addr is "127.0.0.1:<Port>".
func (b *Balancer) Addr() string { return loopback(b.Port) }

// SetBackends replaces the addresses new connections go to.
func (b *Balancer) SetBackends(addrs []string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.backends = append([]string(nil), addrs...)
}

// DialFailures counts the backends that refused a dial so far.
func (b *Balancer) DialFailures() int64 { return b.dialFail.Load() }

// track adds (add) or removes an open connection; backend is the address
// it goes to, "" for a client's.
func (b *Balancer) track(c net.Conn, backend string, add bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if add {
		b.conns[c] = backend
	} else {
		delete(b.conns, c)
	}
}

// OpenTo returns how many connections to backend are open; "" counts every
// backend's.
func (b *Balancer) OpenTo(backend string) int {
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

func (b *Balancer) serve() {
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

func (b *Balancer) proxy(c net.Conn) {
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

// Close stops accepting, closes every open connection and waits for the
// balancer's goroutines to end.
func (b *Balancer) Close() {
	_ = b.ln.Close()
	b.mu.Lock()
	for c := range b.conns {
		_ = c.Close()
	}
	b.mu.Unlock()
	b.wg.Wait()
}
