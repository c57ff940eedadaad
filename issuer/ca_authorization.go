package issuer

import (
	"context"

	"github.com/mholt/acmez/v3/acme"
)

// AuthorizationCA is the CA's authorization resource.
type AuthorizationCA interface {
	// GetAuthorization reads an authorization. Its challenges MUST carry
	// the identifier, and the key authorization for acct.
	GetAuthorization(ctx context.Context, acct acme.Account, authzURL string) (acme.Authorization, error)
	// DeactivateAuthorization gives up a pending authorization, so it no
	// longer counts against the account's pending authorizations. Callers
	// MUST NOT deactivate a valid one: that would end its reuse.
	DeactivateAuthorization(ctx context.Context, acct acme.Account, authzURL string) (acme.Authorization, error)
}

func (c *acmeCA) GetAuthorization(ctx context.Context, acct acme.Account, authzURL string) (acme.Authorization, error) {
	return c.client.GetAuthorization(ctx, acct, authzURL)
}

func (c *acmeCA) DeactivateAuthorization(ctx context.Context, acct acme.Account, authzURL string) (acme.Authorization, error) {
	return c.client.DeactivateAuthorization(ctx, acct, authzURL)
}
