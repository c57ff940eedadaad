package issuer

import (
	"context"

	"github.com/mholt/acmez/v3/acme"
)

// OrderCA is the CA's order resource.
type OrderCA interface {
	// NewOrder creates an order for order.Identifiers (with its profile,
	// notAfter and replaces, when set). The returned order MUST carry its
	// Location.
	NewOrder(ctx context.Context, acct acme.Account, order acme.Order) (acme.Order, error)
	// GetOrder reads the order at order.Location.
	GetOrder(ctx context.Context, acct acme.Account, order acme.Order) (acme.Order, error)
	// FinalizeOrder sends the CSR and waits until the order is no longer
	// processing (or ctx ends). The caller may end that wait by cancelling
	// ctx once the finalize request itself has been answered.
	FinalizeOrder(ctx context.Context, acct acme.Account, order acme.Order, csrDER []byte) (acme.Order, error)
}

func (c *acmeCA) NewOrder(ctx context.Context, acct acme.Account, order acme.Order) (acme.Order, error) {
	return c.client.NewOrder(ctx, acct, order)
}

func (c *acmeCA) GetOrder(ctx context.Context, acct acme.Account, order acme.Order) (acme.Order, error) {
	return c.client.GetOrder(ctx, acct, order)
}

func (c *acmeCA) FinalizeOrder(ctx context.Context, acct acme.Account, order acme.Order, csrDER []byte) (acme.Order, error) {
	return c.client.FinalizeOrder(ctx, acct, order, csrDER)
}
