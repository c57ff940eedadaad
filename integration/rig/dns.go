package rig

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// dnsTTL is the TTL of every answer; short, so overrides take effect at once
// for resolvers that cache.
const dnsTTL = 1

// maxTXTChunk is the longest RFC 1035 <character-string>; longer TXT values
// are split into several strings of one record.
const maxTXTChunk = 255

// DNS is a small authoritative DNS server on 127.0.0.1, answering over both
// TCP and UDP on the same port. By default every name has the A record
// 127.0.0.1 and no AAAA record (NOERROR, empty answer), which is what
// Pebble's validator needs: it queries AAAA first and dials the first address
// found. Every other query gets an empty NOERROR answer unless a record was
// set with SetTXT or SetAddrs.
type DNS struct {
	// Addr is the server's address, "127.0.0.1:<port>", for both TCP and UDP.
	Addr string

	tcp, udp *dns.Server

	closeOnce sync.Once
	closeErr  error

	mu    sync.RWMutex
	addrs map[string][]netip.Addr // fqdn → A/AAAA override
	txt   map[string][]string     // fqdn → TXT values
}

// StartDNS starts a DNS server on a free 127.0.0.1 port, over TCP and UDP.
// It uses its own dns.ServeMux, never miekg/dns's global one. Close it when
// done.
func StartDNS() (*DNS, error) {
	ln, pc, err := listenTCPAndUDP()
	if err != nil {
		return nil, err
	}
	d := &DNS{
		Addr:  ln.Addr().String(),
		addrs: make(map[string][]netip.Addr),
		txt:   make(map[string][]string),
	}
	mux := dns.NewServeMux()
	mux.HandleFunc(".", d.serveDNS)
	d.tcp = &dns.Server{Listener: ln, Handler: mux}
	d.udp = &dns.Server{PacketConn: pc, Handler: mux}

	if err := startDNSServer(d.tcp); err != nil {
		_ = ln.Close()
		_ = pc.Close()
		return nil, fmt.Errorf("starting DNS server over TCP on %s: %w", d.Addr, err)
	}
	if err := startDNSServer(d.udp); err != nil {
		_ = d.tcp.Shutdown()
		_ = pc.Close()
		return nil, fmt.Errorf("starting DNS server over UDP on %s: %w", d.Addr, err)
	}
	return d, nil
}

// listenTCPAndUDP binds a TCP listener on 127.0.0.1:0 and a UDP socket on the
// same port, retrying a few times when the UDP port happens to be taken.
func listenTCPAndUDP() (net.Listener, net.PacketConn, error) {
	const attempts = 20
	var lastErr error
	for range attempts {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, nil, fmt.Errorf("listening on 127.0.0.1:0/tcp: %w", err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err == nil {
			return ln, pc, nil
		}
		lastErr = err
		_ = ln.Close()
	}
	return nil, nil, fmt.Errorf("no port free for both TCP and UDP on 127.0.0.1 after %d attempts: %w", attempts, lastErr)
}

// startDNSServer runs srv in the background and waits until it serves or
// fails to start.
func startDNSServer(srv *dns.Server) error {
	started := make(chan struct{})
	failed := make(chan error, 1)
	srv.NotifyStartedFunc = func() { close(started) }
	go func() {
		if err := srv.ActivateAndServe(); err != nil {
			failed <- err
		}
	}()
	select {
	case <-started:
		return nil
	case err := <-failed:
		return err
	case <-time.After(10 * time.Second):
		return errors.New("timed out waiting for the DNS server to start")
	}
}

// SetTXT sets the TXT records of name (e.g. "_acme-challenge.a.test") to
// values, one record per value; no values removes them.
func (d *DNS) SetTXT(name string, values ...string) {
	key := dnsKey(name)
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(values) == 0 {
		delete(d.txt, key)
		return
	}
	d.txt[key] = append([]string(nil), values...)
}

// SetAddrs overrides the addresses of name: IPv4 addresses are answered as A
// records, IPv6 addresses as AAAA records. No addresses makes the name have
// neither A nor AAAA records. ResetAddrs restores the default.
func (d *DNS) SetAddrs(name string, addrs ...netip.Addr) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.addrs[dnsKey(name)] = append([]netip.Addr{}, addrs...)
}

// ResetAddrs restores the default addresses of name: A 127.0.0.1, no AAAA.
func (d *DNS) ResetAddrs(name string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.addrs, dnsKey(name))
}

// Close stops the server on both TCP and UDP. Calling it again is a no-op
// returning the first call's result.
func (d *DNS) Close() error {
	d.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var errs []error
		if err := d.tcp.ShutdownContext(ctx); err != nil {
			errs = append(errs, fmt.Errorf("stopping DNS server over TCP on %s: %w", d.Addr, err))
		}
		if err := d.udp.ShutdownContext(ctx); err != nil {
			errs = append(errs, fmt.Errorf("stopping DNS server over UDP on %s: %w", d.Addr, err))
		}
		d.closeErr = errors.Join(errs...)
	})
	return d.closeErr
}

// dnsKey is the lookup key of a name: lower case, fully qualified.
func dnsKey(name string) string {
	return dns.Fqdn(strings.ToLower(name))
}

// defaultAddr is the answer for names without an override.
var defaultAddr = netip.AddrFrom4([4]byte{127, 0, 0, 1})

// serveDNS answers every question of r from the records of d.
func (d *DNS) serveDNS(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	for _, q := range r.Question {
		m.Answer = append(m.Answer, d.answer(q)...)
	}
	// A write error means the client went away; nothing to do about it.
	_ = w.WriteMsg(m)
}

// answer returns the records answering q.
func (d *DNS) answer(q dns.Question) []dns.RR {
	if q.Qclass != dns.ClassINET {
		return nil
	}
	key := dnsKey(q.Name)
	hdr := dns.RR_Header{Name: q.Name, Rrtype: q.Qtype, Class: dns.ClassINET, Ttl: dnsTTL}

	d.mu.RLock()
	defer d.mu.RUnlock()
	switch q.Qtype {
	case dns.TypeA, dns.TypeAAAA:
		addrs, ok := d.addrs[key]
		if !ok {
			addrs = []netip.Addr{defaultAddr}
		}
		var rrs []dns.RR
		for _, a := range addrs {
			switch {
			case q.Qtype == dns.TypeA && a.Is4():
				rrs = append(rrs, &dns.A{Hdr: hdr, A: a.AsSlice()})
			case q.Qtype == dns.TypeAAAA && a.Is6() && !a.Is4In6():
				rrs = append(rrs, &dns.AAAA{Hdr: hdr, AAAA: a.AsSlice()})
			}
		}
		return rrs
	case dns.TypeTXT:
		var rrs []dns.RR
		for _, v := range d.txt[key] {
			rrs = append(rrs, &dns.TXT{Hdr: hdr, Txt: splitTXT(v)})
		}
		return rrs
	default:
		return nil
	}
}

// splitTXT splits v into character-strings of at most 255 bytes.
func splitTXT(v string) []string {
	if v == "" {
		return []string{""}
	}
	var parts []string
	for len(v) > maxTXTChunk {
		parts = append(parts, v[:maxTXTChunk])
		v = v[maxTXTChunk:]
	}
	return append(parts, v)
}
