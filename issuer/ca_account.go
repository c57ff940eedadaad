package issuer

import (
	"context"

	"github.com/mholt/acmez/v3/acme"
)

// AccountCA is the CA's account resource.
type AccountCA interface {
	// NewAccount registers the account (or finds the one its key already
	// has).
	NewAccount(ctx context.Context, acct acme.Account) (acme.Account, error)
	// GetAccount looks the account up by its key. A CA that does not know
	// the key MUST answer accountDoesNotExist.
	GetAccount(ctx context.Context, acct acme.Account) (acme.Account, error)
	// BindExternalAccount adds an external account binding for eab to
	// acct before it is registered.
	BindExternalAccount(ctx context.Context, acct *acme.Account, eab acme.EAB) error
}

func (c *acmeCA) NewAccount(ctx context.Context, acct acme.Account) (acme.Account, error) {
	return c.client.NewAccount(ctx, acct)
}

func (c *acmeCA) GetAccount(ctx context.Context, acct acme.Account) (acme.Account, error) {
	return c.client.GetAccount(ctx, acct)
}

func (c *acmeCA) BindExternalAccount(ctx context.Context, acct *acme.Account, eab acme.EAB) error {
	return acct.SetExternalAccountBinding(ctx, c.client, eab)
}
