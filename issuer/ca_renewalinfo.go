package issuer

import (
	"context"
	"crypto/x509"

	"github.com/mholt/acmez/v3/acme"
)

// RenewalInfoCA is the CA's renewal information (ARI, RFC 9773).
type RenewalInfoCA interface {
	// GetRenewalInfo returns the CA's suggested renewal window for leaf.
	GetRenewalInfo(ctx context.Context, leaf *x509.Certificate) (acme.RenewalInfo, error)
}

func (c *acmeCA) GetRenewalInfo(ctx context.Context, leaf *x509.Certificate) (acme.RenewalInfo, error) {
	return c.client.GetRenewalInfo(ctx, leaf)
}
