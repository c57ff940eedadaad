package integration

import (
	"encoding/binary"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// updateProxy is a DNS server in front of BIND for the rfc2136 provider's
// dynamic updates (DNS over TCP, signed with TSIG, forwarded unchanged): it
// counts the updates that add and delete records, and while refuseDeletes
// is set it drops those that delete (the provider sees an error).
type updateProxy struct {
	addr          string
	upstream      string
	refuseDeletes atomic.Bool
	adds, deletes atomic.Int64
	refused       atomic.Int64
	ln            net.Listener
	wg            sync.WaitGroup
}

func startUpdateProxy(t *testing.T, upstream string) *updateProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &updateProxy{addr: ln.Addr().String(), upstream: upstream, ln: ln}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				p.serve(c)
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		p.wg.Wait()
	})
	return p
}

// serve relays the DNS messages of one TCP connection, one at a time.
func (p *updateProxy) serve(c net.Conn) {
	defer c.Close()
	for range 100 {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		req, err := readTCPMsg(c)
		if err != nil {
			return
		}
		var m dns.Msg
		if m.Unpack(req) == nil && m.Opcode == dns.OpcodeUpdate {
			deletes := false
			for _, rr := range m.Ns {
				if cl := rr.Header().Class; cl == dns.ClassNONE || cl == dns.ClassANY {
					deletes = true
				}
			}
			if deletes {
				if p.refuseDeletes.Load() {
					p.refused.Add(1)
					return // the provider gets no answer
				}
				p.deletes.Add(1)
			} else {
				p.adds.Add(1)
			}
		}
		resp, err := p.forward(req)
		if err != nil {
			return
		}
		if err := writeTCPMsg(c, resp); err != nil {
			return
		}
	}
}

func (p *updateProxy) forward(req []byte) ([]byte, error) {
	u, err := net.DialTimeout("tcp", p.upstream, 5*time.Second)
	if err != nil {
		return nil, err
	}
	defer u.Close()
	_ = u.SetDeadline(time.Now().Add(10 * time.Second))
	if err := writeTCPMsg(u, req); err != nil {
		return nil, err
	}
	return readTCPMsg(u)
}

func readTCPMsg(r io.Reader) ([]byte, error) {
	var n uint16
	if err := binary.Read(r, binary.BigEndian, &n); err != nil {
		return nil, err
	}
	b := make([]byte, n)
	_, err := io.ReadFull(r, b)
	return b, err
}

func writeTCPMsg(w io.Writer, b []byte) error {
	out := make([]byte, 2+len(b))
	binary.BigEndian.PutUint16(out, uint16(len(b)))
	copy(out[2:], b)
	_, err := w.Write(out)
	return err
}
