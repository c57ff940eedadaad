package issuer

import (
	"context"

	"github.com/mholt/acmez/v3/acme"
)

// ChallengeCA is the CA's challenge resource.
type ChallengeCA interface {
	// InitiateChallenge asks the CA to validate the challenge. Its state
	// is then read through the authorization (a POST to the challenge URL
	// is "accept" for some CAs, so it is never used to read).
	InitiateChallenge(ctx context.Context, acct acme.Account, chal acme.Challenge) (acme.Challenge, error)
}

func (c *acmeCA) InitiateChallenge(ctx context.Context, acct acme.Account, chal acme.Challenge) (acme.Challenge, error) {
	return c.client.InitiateChallenge(ctx, acct, chal)
}
