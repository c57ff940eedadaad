package solvers

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/mholt/acmez/v3"
	"github.com/mholt/acmez/v3/acme"
	"github.com/miekg/dns"
)

// oidACMEIdentifier is id-pe-acmeIdentifier, the extension carrying the key
// authorization digest (RFC 8737 §3).
var oidACMEIdentifier = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 1, 31}

// TLSALPN01 solves tls-alpn-01 challenges. certmagic's GetCertificate (in
// every Caddy instance sharing the storage) builds the challenge certificate
// from the stored token when a handshake offers only acme-tls/1.
type TLSALPN01 struct {
	cfg    Config
	tokens TokenStore
	dialer *dialer
}

var (
	_ Solver      = (*TLSALPN01)(nil)
	_ TokenKeeper = (*TLSALPN01)(nil)
)

// NewTLSALPN01 returns a TLS-ALPN-01 solver for cfg.
func NewTLSALPN01(cfg Config) *TLSALPN01 {
	return &TLSALPN01{
		cfg:    cfg,
		tokens: TokenStore{Storage: cfg.Storage, IssuerKey: cfg.IssuerKey},
		dialer: newDialer(cfg.Resolvers),
	}
}

// Present writes the challenge token to storage. It returns no memo.
func (s *TLSALPN01) Present(ctx context.Context, chal acme.Challenge) (json.RawMessage, error) {
	return nil, s.tokens.Present(ctx, chal)
}

// CleanUp deletes the token if it is still this challenge's.
func (s *TLSALPN01) CleanUp(ctx context.Context, chal acme.Challenge, _ json.RawMessage) error {
	return s.tokens.CleanUp(ctx, chal)
}

// CleanUpOwned deletes the token without reading it (TokenKeeper).
func (s *TLSALPN01) CleanUpOwned(ctx context.Context, chal acme.Challenge) error {
	return s.tokens.CleanUpOwned(ctx, chal)
}

// RemoveStale deletes the identifier's token file (TokenKeeper).
func (s *TLSALPN01) RemoveStale(ctx context.Context, id acme.Identifier) error {
	return s.tokens.RemoveStale(ctx, acme.Challenge{Type: acme.ChallengeTypeTLSALPN01, Identifier: id, Token: "stale"})
}

// TokenDir is the folder of the token files (TokenKeeper).
func (s *TLSALPN01) TokenDir() string { return s.tokens.Dir() }

// SelfCheck does the handshake the CA will do: to <name>:<port> with SNI
// <name> (for an IP address: to the address, with its reverse-DNS name as
// SNI, RFC 8738 §6, which is also the name certmagic looks the token up by),
// offering only acme-tls/1. It passes when acme-tls/1 is negotiated and the
// certificate names exactly the identifier and carries the critical
// acmeIdentifier extension with SHA-256 of the key authorization.
func (s *TLSALPN01) SelfCheck(ctx context.Context, chal acme.Challenge) error {
	host, sni, err := tlsALPNTarget(chal)
	if err != nil {
		return fmt.Errorf("tls-alpn-01 self-check: %w", err)
	}
	addr := net.JoinHostPort(host, strconv.Itoa(s.cfg.tlsALPNPort()))
	where := addr
	if sni != host {
		where += " (SNI " + sni + ")"
	}
	fail := func(err error) error {
		return fmt.Errorf("tls-alpn-01 self-check: %s: %w", where, stableError(err))
	}

	ctx, cancel := context.WithTimeout(ctx, s.cfg.attemptTimeout())
	defer cancel()
	raw, err := s.dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fail(err)
	}
	conn := tls.Client(raw, &tls.Config{
		ServerName: sni,
		NextProtos: []string{acmez.ACMETLS1Protocol},
		// The challenge certificate is self-signed by design; what makes
		// it right is checked below.
		InsecureSkipVerify: true, //nolint:gosec
		// RFC 8737 §4: TLS 1.2 or higher.
		MinVersion: tls.VersionTLS12,
	})
	defer conn.Close()
	if err := conn.HandshakeContext(ctx); err != nil {
		return fail(fmt.Errorf("handshake: %w", err))
	}
	cs := conn.ConnectionState()
	if cs.NegotiatedProtocol != acmez.ACMETLS1Protocol {
		if cs.NegotiatedProtocol == "" {
			return fail(fmt.Errorf("server did not negotiate %s", acmez.ACMETLS1Protocol))
		}
		return fail(fmt.Errorf("server negotiated %q, not %s", cs.NegotiatedProtocol, acmez.ACMETLS1Protocol))
	}
	if len(cs.PeerCertificates) == 0 {
		return fail(errors.New("server sent no certificate"))
	}
	if err := checkChallengeCert(cs.PeerCertificates[0], chal); err != nil {
		return fail(err)
	}
	return nil
}

// tlsALPNTarget returns the host to connect to and the SNI to send.
func tlsALPNTarget(chal acme.Challenge) (host, sni string, err error) {
	if chal.KeyAuthorization == "" {
		return "", "", errors.New("challenge has no key authorization")
	}
	name := chal.Identifier.Value
	switch chal.Identifier.Type {
	case "ip":
		ip := net.ParseIP(name)
		if ip == nil {
			return "", "", fmt.Errorf("invalid ip identifier %q", name)
		}
		rev, err := dns.ReverseAddr(ip.String())
		if err != nil {
			return "", "", fmt.Errorf("invalid ip identifier %q: %w", name, err)
		}
		return ip.String(), strings.TrimSuffix(rev, "."), nil
	case "dns", "":
		if !isHostname(name) {
			return "", "", fmt.Errorf("invalid dns identifier %q", name)
		}
		return name, name, nil
	default:
		return "", "", fmt.Errorf("unsupported identifier type %q", chal.Identifier.Type)
	}
}

// checkChallengeCert checks cert the way RFC 8737 §3 tells the CA to (and
// as acmez.TLSALPN01ChallengeCert builds it): exactly one SAN, the
// identifier; the acmeIdentifier extension critical, holding the ASN.1
// OCTET STRING of SHA-256(key authorization).
func checkChallengeCert(cert *x509.Certificate, chal acme.Challenge) error {
	if err := checkSAN(cert, chal.Identifier); err != nil {
		return err
	}
	var ext *pkix.Extension
	for i := range cert.Extensions {
		if cert.Extensions[i].Id.Equal(oidACMEIdentifier) {
			ext = &cert.Extensions[i]
			break
		}
	}
	if ext == nil {
		return errors.New("certificate has no acmeIdentifier extension")
	}
	if !ext.Critical {
		return errors.New("acmeIdentifier extension is not critical")
	}
	var digest []byte
	rest, err := asn1.Unmarshal(ext.Value, &digest)
	if err != nil || len(rest) != 0 {
		return errors.New("acmeIdentifier extension is not an OCTET STRING")
	}
	want := sha256.Sum256([]byte(chal.KeyAuthorization))
	if !bytes.Equal(digest, want[:]) {
		return errors.New("acmeIdentifier digest does not match the key authorization")
	}
	return nil
}

// checkSAN requires the certificate's only subject alternative name to be
// the identifier.
func checkSAN(cert *x509.Certificate, id acme.Identifier) error {
	var sans []string
	sans = append(sans, cert.DNSNames...)
	for _, ip := range cert.IPAddresses {
		sans = append(sans, ip.String())
	}
	sans = append(sans, cert.EmailAddresses...)
	for _, u := range cert.URIs {
		sans = append(sans, u.String())
	}
	ok := len(sans) == 1
	if ok {
		if id.Type == "ip" {
			ok = len(cert.IPAddresses) == 1 && cert.IPAddresses[0].Equal(net.ParseIP(id.Value))
		} else {
			ok = len(cert.DNSNames) == 1 && strings.EqualFold(cert.DNSNames[0], id.Value)
		}
	}
	if !ok {
		return fmt.Errorf("certificate names %s, want exactly %s", formatSANs(sans), id.Value)
	}
	return nil
}

func formatSANs(sans []string) string {
	if len(sans) == 0 {
		return "nothing"
	}
	return "[" + strings.Join(sans, " ") + "]"
}
