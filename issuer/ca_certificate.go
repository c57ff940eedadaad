package issuer

import (
	"context"
	"crypto"
	"crypto/x509"

	"github.com/mholt/acmez/v3/acme"
)

// CertificateCA is the CA's certificate resource.
type CertificateCA interface {
	// GetCertificateChain downloads the chains at certURL, the default one
	// first, then the alternates the CA links to.
	GetCertificateChain(ctx context.Context, acct acme.Account, certURL string) ([]acme.Certificate, error)
	// RevokeCertificate revokes cert, signing with the account.
	RevokeCertificate(ctx context.Context, acct acme.Account, cert *x509.Certificate, certKey crypto.Signer, reason int) error
}

func (c *acmeCA) GetCertificateChain(ctx context.Context, acct acme.Account, certURL string) ([]acme.Certificate, error) {
	return c.client.GetCertificateChain(ctx, acct, certURL)
}

func (c *acmeCA) RevokeCertificate(ctx context.Context, acct acme.Account, cert *x509.Certificate, certKey crypto.Signer, reason int) error {
	return c.client.RevokeCertificate(ctx, acct, cert, certKey, reason)
}
