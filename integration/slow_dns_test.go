package integration

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// startSlowDNS starts a DNS server on 127.0.0.1 (UDP and TCP on one port)
// that answers every A query with 127.0.0.1 and every other query with an
// empty answer, each only after delay: a slow but working resolver for
// certflow's self-check. It is stopped at the end of the test.
func startSlowDNS(t *testing.T, delay time.Duration) string {
	t.Helper()
	var (
		tcp net.Listener
		udp net.PacketConn
		err error
	)
	for range 20 {
		if tcp, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		udp, err = net.ListenPacket("udp", tcp.Addr().String())
		if err == nil {
			break
		}
		_ = tcp.Close()
	}
	if err != nil {
		t.Fatalf("no port free for a slow DNS server over both TCP and UDP: %v", err)
	}
	stop := make(chan struct{})
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		select {
		case <-time.After(delay):
		case <-stop:
		}
		m := new(dns.Msg)
		m.SetReply(r)
		m.Authoritative = true
		for _, q := range r.Question {
			if q.Qtype == dns.TypeA {
				m.Answer = append(m.Answer, &dns.A{
					Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 1},
					A:   net.IPv4(127, 0, 0, 1),
				})
			}
		}
		_ = w.WriteMsg(m)
	})
	servers := []*dns.Server{{Listener: tcp, Handler: handler}, {PacketConn: udp, Handler: handler}}
	for _, s := range servers {
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		go func() { _ = s.ActivateAndServe() }()
		select {
		case <-started:
		case <-time.After(10 * time.Second):
			t.Fatal("the slow DNS server did not start")
		}
	}
	t.Cleanup(func() {
		close(stop)
		for _, s := range servers {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = s.ShutdownContext(ctx)
			cancel()
		}
	})
	return tcp.Addr().String()
}
