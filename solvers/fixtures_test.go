package solvers

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"
	"github.com/miekg/dns"
	"go.uber.org/zap"
)

const testIssuerKey = "acme-v02.api.letsencrypt.org-directory"

// newChallenge returns a challenge filled in by hand the way
// acme.Client.GetAuthorization fills it in.
func newChallenge(t *testing.T, typ, idType, value string) acme.Challenge {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	token := base64.RawURLEncoding.EncodeToString(b)
	return acme.Challenge{
		Type:             typ,
		Token:            token,
		KeyAuthorization: token + ".thumbprint-" + token[:8],
		Identifier:       acme.Identifier{Type: idType, Value: value},
	}
}

// assertNoSecret fails if err's text contains the key authorization.
func assertNoSecret(t *testing.T, err error, chal acme.Challenge) {
	t.Helper()
	if err != nil && strings.Contains(err.Error(), chal.KeyAuthorization) {
		t.Errorf("error contains the key authorization: %v", err)
	}
}

func wantErr(t *testing.T, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Fatalf("unexpected error: %v", err)
	case want != "" && err == nil:
		t.Fatalf("no error, want one containing %q", want)
	case want != "" && !strings.Contains(err.Error(), want):
		t.Fatalf("error %q does not contain %q", err, want)
	}
}

// testDNS is a DNS server on 127.0.0.1 answering A 127.0.0.1 for any name,
// no AAAA, and NXDOMAIN for names starting with "nx.".
type testDNS struct {
	addr    string
	queries atomic.Int64
}

func startDNS(t *testing.T) *testDNS {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := &testDNS{addr: pc.LocalAddr().String()}
	started := make(chan struct{})
	srv := &dns.Server{
		PacketConn:        pc,
		NotifyStartedFunc: func() { close(started) },
		Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
			d.queries.Add(1)
			m := new(dns.Msg)
			m.SetReply(r)
			m.Authoritative = true
			for _, q := range r.Question {
				if strings.HasPrefix(q.Name, "nx.") {
					m.SetRcode(r, dns.RcodeNameError)
					continue
				}
				if q.Qtype == dns.TypeA {
					m.Answer = append(m.Answer, &dns.A{
						Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
						A:   net.IPv4(127, 0, 0, 1),
					})
				}
			}
			_ = w.WriteMsg(m)
		}),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.ActivateAndServe()
	}()
	<-started
	t.Cleanup(func() {
		_ = srv.Shutdown()
		<-done
	})
	return d
}

// deadUDPAddr returns a 127.0.0.1 UDP address nothing listens on, so a
// query to it is refused at once.
func deadUDPAddr(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	return addr
}

// closedPort returns a 127.0.0.1 TCP port nothing listens on.
func closedPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	return port
}

func portOf(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// serveTLS serves TLS on 127.0.0.1 with conf until the test ends, and
// returns the port. Every connection is handshaken and closed.
func serveTLS(t *testing.T, conf *tls.Config) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_ = tls.Server(c, conf).HandshakeContext(context.Background())
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().(*net.TCPAddr).Port
}

// fakeIssuer stands for our issuer in certmagic's config: certmagic finds
// challenge tokens under the IssuerKey of every issuer of the policy.
type fakeIssuer struct{ key string }

func (f fakeIssuer) Issue(context.Context, *x509.CertificateRequest) (*certmagic.IssuedCertificate, error) {
	return nil, errors.New("fake issuer never issues")
}

func (f fakeIssuer) IssuerKey() string { return f.key }

// newMagic returns a certmagic config over storage whose only issuer has
// issuerKey, as a Caddy policy with our issuer has.
func newMagic(t *testing.T, storage certmagic.Storage, issuerKey string) *certmagic.Config {
	t.Helper()
	var cfg *certmagic.Config
	cache := certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) { return cfg, nil },
		Logger:           zap.NewNop(),
	})
	t.Cleanup(cache.Stop)
	cfg = certmagic.New(cache, certmagic.Config{
		Storage: storage,
		Issuers: []certmagic.Issuer{fakeIssuer{key: issuerKey}},
		Logger:  zap.NewNop(),
	})
	return cfg
}
