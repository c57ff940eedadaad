package solvers

import (
	"context"
	"crypto/x509"
	"errors"
	"testing"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

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
