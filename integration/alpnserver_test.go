package integration

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"testing"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"

	"github.com/certflow/certflow/solvers"
)

// serveTLSALPNFromStorage answers TLS-ALPN-01 on 127.0.0.1:port from the
// tokens in storage, the way Caddy does, for tests without Caddy.
func serveTLSALPNFromStorage(t testing.TB, storage certmagic.Storage, issuerKey string, port int) {
	t.Helper()
	cfg := &tls.Config{
		NextProtos: []string{acmez.ACMETLS1Protocol},
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			chal := acme.Challenge{Type: acme.ChallengeTypeTLSALPN01, Identifier: acme.Identifier{Type: "dns", Value: hello.ServerName}}
			b, err := storage.Load(hello.Context(), solvers.TokenKey(issuerKey, chal))
			if err != nil {
				return nil, fmt.Errorf("no token for %s: %w", hello.ServerName, err)
			}
			if err := json.Unmarshal(b, &chal); err != nil {
				return nil, err
			}
			return acmez.TLSALPN01ChallengeCert(chal)
		},
	}
	ln, err := tls.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer c.Close()
				_ = c.(*tls.Conn).Handshake()
			}(conn)
		}
	}()
}
