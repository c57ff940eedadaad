package integration

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
)

// TestNetworkProxy: network_proxy has the stock acme issuer's meaning:
// certflow reaches the CA through the proxy module's proxy (here
// caddy.network_proxy.url, an HTTP CONNECT proxy on loopback), while the
// self-check and the CA's validation still connect directly.
func TestNetworkProxy(t *testing.T) {
	schedulerIdle(t)
	e := newEnv(t, envOptions{})
	proxyURL, tunnels := startConnectProxy(t)
	dir, err := url.Parse(e.ca.DirectoryURL)
	if err != nil {
		t.Fatal(err)
	}
	caHost := dir.Host
	e.run(e.config(e.issuer(map[string]any{
		"network_proxy": map[string]any{"from": "url", "url": proxyURL},
	})))

	e.mustHandshake("proxied.test")
	got := tunnels()
	if got[caHost] == 0 {
		t.Fatalf("no tunnel to the CA (%s) went through the proxy; tunnels: %v", caHost, got)
	}
	for target := range got {
		if target != caHost {
			t.Errorf("the proxy carried a tunnel to %s, which is not the CA", target)
		}
	}
	t.Logf("tunnels through the proxy: %v", got)
}

// startConnectProxy starts an HTTP CONNECT proxy on 127.0.0.1 and returns
// its URL and a function reporting how many tunnels it opened per target.
// It stops at the end of the test, closing every tunnel.
func startConnectProxy(t *testing.T) (string, func() map[string]int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu      sync.Mutex
		counts  = map[string]int{}
		conns   = map[net.Conn]bool{}
		wg      sync.WaitGroup
		stopped atomic.Bool
	)
	track := func(c net.Conn) bool {
		mu.Lock()
		defer mu.Unlock()
		if stopped.Load() {
			return false
		}
		conns[c] = true
		return true
	}
	serve := func(client net.Conn) {
		defer wg.Done()
		defer client.Close()
		req, err := http.ReadRequest(bufio.NewReader(client))
		if err != nil || req.Method != http.MethodConnect {
			_, _ = io.WriteString(client, "HTTP/1.1 405 Method Not Allowed\r\n\r\n")
			return
		}
		upstream, err := net.Dial("tcp", req.Host)
		if err != nil {
			_, _ = io.WriteString(client, "HTTP/1.1 502 Bad Gateway\r\n\r\n")
			return
		}
		defer upstream.Close()
		if !track(upstream) {
			return
		}
		mu.Lock()
		counts[req.Host]++
		mu.Unlock()
		if _, err := io.WriteString(client, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
			return
		}
		done := make(chan struct{}, 2)
		go func() { _, _ = io.Copy(upstream, client); done <- struct{}{} }()
		go func() { _, _ = io.Copy(client, upstream); done <- struct{}{} }()
		<-done // one side closed: close both, the other copy ends
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if !track(c) {
				c.Close()
				return
			}
			wg.Add(1)
			go serve(c)
		}
	}()
	t.Cleanup(func() {
		mu.Lock()
		stopped.Store(true)
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		ln.Close()
		wg.Wait()
	})
	return "http://" + ln.Addr().String(), func() map[string]int {
		mu.Lock()
		defer mu.Unlock()
		out := make(map[string]int, len(counts))
		for k, v := range counts {
			out[k] = v
		}
		return out
	}
}
