package solvers

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"
)

// challengeServer returns a TLS config that serves cert only to a
// handshake offering exactly acme-tls/1 with SNI wantSNI, as the CA sends.
func challengeServer(t *testing.T, wantSNI string, cert *tls.Certificate, nextProtos []string) *tls.Config {
	t.Helper()
	return &tls.Config{
		NextProtos: nextProtos,
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			if hello.ServerName != wantSNI {
				t.Errorf("SNI %q, want %q", hello.ServerName, wantSNI)
			}
			if !slices.Equal(hello.SupportedProtos, []string{acmez.ACMETLS1Protocol}) {
				t.Errorf("ALPN %q, want only %s", hello.SupportedProtos, acmez.ACMETLS1Protocol)
			}
			return cert, nil
		},
	}
}

func acmeCert(t *testing.T, c acme.Challenge) *tls.Certificate {
	t.Helper()
	cert, err := acmez.TLSALPN01ChallengeCert(c)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// craftCert makes a self-signed certificate for the names with the given
// extensions, for the cases acmez never produces.
func craftCert(t *testing.T, dnsNames []string, ips []net.IP, exts []pkix.Extension) *tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:    big.NewInt(1),
		NotBefore:       time.Now().Add(-time.Hour),
		NotAfter:        time.Now().Add(time.Hour),
		DNSNames:        dnsNames,
		IPAddresses:     ips,
		ExtraExtensions: exts,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func acmeExt(t *testing.T, keyAuth string, critical bool) pkix.Extension {
	t.Helper()
	sum := sha256.Sum256([]byte(keyAuth))
	v, err := asn1.Marshal(sum[:])
	if err != nil {
		t.Fatal(err)
	}
	return pkix.Extension{Id: oidACMEIdentifier, Critical: critical, Value: v}
}

func TestTLSALPN01SelfCheck(t *testing.T) {
	dns := startDNS(t)
	acmeTLS := []string{acmez.ACMETLS1Protocol}
	tests := []struct {
		name      string
		idType    string
		id        string
		sni       string // what the server must see; default: id
		cert      func(t *testing.T, c acme.Challenge) *tls.Certificate
		protos    []string // server's ALPN; default acme-tls/1
		noServer  bool
		resolvers bool
		want      string
	}{
		{name: "pass, name through resolver", id: "example.test", resolvers: true, cert: acmeCert},
		{name: "pass, ip identifier with reverse-dns SNI", idType: "ip", id: "127.0.0.1", sni: "1.0.0.127.in-addr.arpa", cert: acmeCert},
		{name: "pass, localhost through system resolver", id: "localhost", cert: acmeCert},
		{
			name: "nothing listens", idType: "ip", id: "127.0.0.1", noServer: true,
			want: "tls-alpn-01 self-check: 127.0.0.1:PORT (SNI 1.0.0.127.in-addr.arpa): dial tcp 127.0.0.1:PORT: connect: connection refused",
		},
		{
			name: "nothing listens, name through resolver", id: "example.test", resolvers: true, noServer: true,
			want: "tls-alpn-01 self-check: example.test:PORT: dial tcp 127.0.0.1:PORT: connect: connection refused",
		},
		{
			name: "wrong digest", id: "example.test", resolvers: true,
			cert: func(t *testing.T, c acme.Challenge) *tls.Certificate {
				c.KeyAuthorization = c.Token + ".another-account"
				return acmeCert(t, c)
			},
			want: "tls-alpn-01 self-check: example.test:PORT: acmeIdentifier digest does not match the key authorization",
		},
		{
			name: "acme-tls/1 not negotiated", id: "example.test", resolvers: true, cert: acmeCert, protos: []string{},
			want: "server did not negotiate acme-tls/1",
		},
		{
			name: "server refuses acme-tls/1", id: "example.test", resolvers: true, cert: acmeCert, protos: []string{"h2"},
			want: "handshake: remote error: tls: no application protocol",
		},
		{
			name: "certificate for another name", id: "example.test", resolvers: true,
			cert: func(t *testing.T, c acme.Challenge) *tls.Certificate {
				c.Identifier.Value = "other.test"
				return acmeCert(t, c)
			},
			want: "certificate names [other.test], want exactly example.test",
		},
		{
			name: "certificate with an extra name", id: "example.test", resolvers: true,
			cert: func(t *testing.T, c acme.Challenge) *tls.Certificate {
				return craftCert(t, []string{"example.test", "www.example.test"}, nil, []pkix.Extension{acmeExt(t, c.KeyAuthorization, true)})
			},
			want: "certificate names [example.test www.example.test], want exactly example.test",
		},
		{
			name: "ip certificate with a dns name", idType: "ip", id: "127.0.0.1", sni: "1.0.0.127.in-addr.arpa",
			cert: func(t *testing.T, c acme.Challenge) *tls.Certificate {
				return craftCert(t, []string{"1.0.0.127.in-addr.arpa"}, nil, []pkix.Extension{acmeExt(t, c.KeyAuthorization, true)})
			},
			want: "certificate names [1.0.0.127.in-addr.arpa], want exactly 127.0.0.1",
		},
		{
			name: "no acmeIdentifier extension", id: "example.test", resolvers: true,
			cert: func(t *testing.T, c acme.Challenge) *tls.Certificate {
				return craftCert(t, []string{"example.test"}, nil, nil)
			},
			want: "certificate has no acmeIdentifier extension",
		},
		{
			name: "extension not critical", id: "example.test", resolvers: true,
			cert: func(t *testing.T, c acme.Challenge) *tls.Certificate {
				return craftCert(t, []string{"example.test"}, nil, []pkix.Extension{acmeExt(t, c.KeyAuthorization, false)})
			},
			want: "acmeIdentifier extension is not critical",
		},
		{
			name: "extension holds the raw digest", id: "example.test", resolvers: true,
			cert: func(t *testing.T, c acme.Challenge) *tls.Certificate {
				sum := sha256.Sum256([]byte(c.KeyAuthorization))
				return craftCert(t, []string{"example.test"}, nil, []pkix.Extension{{Id: oidACMEIdentifier, Critical: true, Value: sum[:]}})
			},
			want: "acmeIdentifier extension is not an OCTET STRING",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			idType := tt.idType
			if idType == "" {
				idType = "dns"
			}
			c := newChallenge(t, acme.ChallengeTypeTLSALPN01, idType, tt.id)
			var port int
			if tt.noServer {
				port = closedPort(t)
			} else {
				sni := tt.sni
				if sni == "" {
					sni = tt.id
				}
				protos := tt.protos
				if protos == nil {
					protos = acmeTLS
				}
				port = serveTLS(t, challengeServer(t, sni, tt.cert(t, c), protos))
			}
			cfg := Config{TLSALPNPort: port, AttemptTimeout: 5 * time.Second}
			if tt.resolvers {
				cfg.Resolvers = []string{dns.addr}
			}

			err := NewTLSALPN01(cfg).SelfCheck(context.Background(), c)
			if err != nil {
				t.Logf("reason: %v", err)
			}
			assertNoSecret(t, err, c)
			wantErr(t, err, strings.ReplaceAll(tt.want, "PORT", strconv.Itoa(port)))
		})
	}
}

func TestTLSALPN01SelfCheckTimeout(t *testing.T) {
	// A listener that accepts but never answers the ClientHello.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c := newChallenge(t, acme.ChallengeTypeTLSALPN01, "ip", "127.0.0.1")
	s := NewTLSALPN01(Config{TLSALPNPort: portOf(t, ln.Addr().String()), AttemptTimeout: 200 * time.Millisecond})
	start := time.Now()
	err = s.SelfCheck(context.Background(), c)
	wantErr(t, err, "handshake: ")
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("SelfCheck took %v with a 200ms attempt timeout", d)
	}
}

func TestTLSALPN01BadInput(t *testing.T) {
	good := newChallenge(t, acme.ChallengeTypeTLSALPN01, "dns", "example.test")
	tests := []struct {
		name string
		edit func(*acme.Challenge)
		want string
	}{
		{"no key authorization", func(c *acme.Challenge) { c.KeyAuthorization = "" }, "challenge has no key authorization"},
		{"name with a colon", func(c *acme.Challenge) { c.Identifier.Value = "example.test:1" }, "invalid dns identifier"},
		{"empty name", func(c *acme.Challenge) { c.Identifier.Value = "" }, "invalid dns identifier"},
		{"bad ip", func(c *acme.Challenge) { c.Identifier = acme.Identifier{Type: "ip", Value: "::g"} }, "invalid ip identifier"},
		{"unknown identifier type", func(c *acme.Challenge) { c.Identifier.Type = "permanent-identifier" }, "unsupported identifier type"},
	}
	s := NewTLSALPN01(Config{TLSALPNPort: closedPort(t)})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := good
			tt.edit(&c)
			err := s.SelfCheck(context.Background(), c)
			wantErr(t, err, "tls-alpn-01 self-check: "+tt.want)
			assertNoSecret(t, err, good)
		})
	}
}

// TestTLSALPN01ServedByCertmagic runs the whole path through certmagic's
// own TLS config (as Caddy's listeners use it): Present, SelfCheck against
// the certificate certmagic builds from storage, CleanUp, SelfCheck fails.
func TestTLSALPN01ServedByCertmagic(t *testing.T) {
	ctx := context.Background()
	dns := startDNS(t)
	storage := &certmagic.FileStorage{Path: t.TempDir()}
	magic := newMagic(t, storage, testIssuerKey)
	port := serveTLS(t, magic.TLSConfig())

	s := NewTLSALPN01(Config{
		Storage:     storage,
		IssuerKey:   testIssuerKey,
		Resolvers:   []string{dns.addr},
		TLSALPNPort: port,
	})
	for _, id := range []acme.Identifier{{Type: "dns", Value: "example.test"}, {Type: "ip", Value: "127.0.0.1"}} {
		t.Run(id.Value, func(t *testing.T) {
			c := newChallenge(t, acme.ChallengeTypeTLSALPN01, id.Type, id.Value)
			memo, err := s.Present(ctx, c)
			if err != nil || memo != nil {
				t.Fatalf("Present = %s, %v; want nil, nil", memo, err)
			}
			if err := s.SelfCheck(ctx, c); err != nil {
				t.Fatalf("SelfCheck after Present: %v", err)
			}
			if err := s.CleanUp(ctx, c, memo); err != nil {
				t.Fatal(err)
			}
			err = s.SelfCheck(ctx, c)
			wantErr(t, err, "handshake: ")
			t.Logf("after CleanUp: %v", err)
		})
	}
}
