package integration

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"

	"github.com/certflow/certflow/issuer"
	"github.com/certflow/certflow/solvers"
)

// TestEngineWithoutCaddy drives the workflow engine directly (no Caddy):
// TLS-ALPN-01 answers come from a tiny TLS server serving the tokens the
// solver wrote, the chain is for the CSR's key, and Revoke works.
func TestEngineWithoutCaddy(t *testing.T) {
	e := newEnv(t, envOptions{})
	storage := &certmagic.FileStorage{Path: e.storage}
	t.Cleanup(func() { issuer.FlushIndex(30 * time.Second) }) // before the storage goes
	const issuerKey = "certflow-engine-test"
	serveTLSALPNFromStorage(t, storage, issuerKey, e.httpsPort)

	eng, err := issuer.NewEngine(issuer.AccountConfig{
		CA:                   e.ca.DirectoryURL,
		Email:                "engine@example.com",
		TrustedRootsPEMFiles: []string{e.ca.ServerRootsFile},
	}, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = eng.Destruct() })

	cfg := solvers.Config{Storage: storage, IssuerKey: issuerKey, Resolvers: []string{e.dns.Addr}, TLSALPNPort: e.httpsPort}
	opts := &issuer.Options{
		Storage:        storage,
		IssuerKey:      issuerKey,
		ChallengeTypes: []string{acme.ChallengeTypeTLSALPN01},
		Solvers:        map[string]solvers.Solver{acme.ChallengeTypeTLSALPN01: solvers.NewTLSALPN01(cfg)},
	}
	opts.SetDefaults()

	certKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{DNSNames: []string{"engine.test"}}, certKey)
	if err != nil {
		t.Fatal(err)
	}
	csr, _ := x509.ParseCertificateRequest(csrDER)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	issued, err := eng.Issue(ctx, issuer.Request{CSR: csr, OnDemand: true, Options: opts})
	if err != nil {
		t.Fatalf("Issue: %v", err)
	}
	block, _ := pem.Decode(issued.Certificate)
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if !leaf.PublicKey.(*ecdsa.PublicKey).Equal(&certKey.PublicKey) {
		t.Fatal("issued leaf is not for the CSR's key")
	}
	if _, ok := issued.Metadata.(acme.Certificate); !ok {
		t.Fatalf("metadata is %T, want acme.Certificate (for ARI)", issued.Metadata)
	}

	keyPEM, _ := certmagic.PEMEncodePrivateKey(certKey)
	if err := eng.Revoke(ctx, opts, issued.Certificate, keyPEM, acme.ReasonKeyCompromise); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	if n := e.ca.Count("revoke"); n != 1 {
		t.Fatalf("CA saw %d revocations, want 1", n)
	}

	// a CSR without names is refused for good, before any CA call
	empty, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, certKey)
	emptyCSR, _ := x509.ParseCertificateRequest(empty)
	_, err = eng.Issue(ctx, issuer.Request{CSR: emptyCSR, Options: opts})
	var noRetry certmagic.ErrNoRetry
	if !errors.As(err, &noRetry) {
		t.Fatalf("CSR without names: err = %v, want ErrNoRetry", err)
	}
}
