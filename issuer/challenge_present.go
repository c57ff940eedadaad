package issuer

import (
	"bytes"
	"context"
	"fmt"

	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"

	"github.com/certflow/certflow/solvers"
)

// present publishes the challenge's answer (c.chal). The challenge is
// committed as presented first, with what the solver plans to publish when
// it says (DNS-01: the TXT record), so that a crash or a failed write never
// leaves an answer nobody can find and clean up; after Present, the
// record as the provider returned it is committed too.
func (c *challengeRun) present(ctx context.Context) error {
	c.ch.Presented = nil
	if p, ok := c.solver.(solvers.Planner); ok {
		plan, err := p.Plan(c.chal)
		if err != nil {
			return c.end(ctx, ChallengeErrored, charge(PartyName, fmt.Errorf("planning what to present: %w", err)))
		}
		c.ch.Presented = plan
	}
	c.ch.CleanedUp = false
	if err := c.reach(ctx, ChallengePresented, ""); err != nil {
		return c.end(ctx, ChallengeErrored, err) // nothing is published yet
	}
	c.presented = true
	memo, err := c.solver.Present(ctx, c.chal)
	if err != nil {
		return c.end(ctx, ChallengeErrored, c.presentFault(fmt.Errorf("presenting: %w", err)))
	}
	if memo != nil && !bytes.Equal(memo, c.ch.Presented) {
		c.ch.Presented = memo
		if err := c.commit(ctx); err != nil {
			// the plan stored before is enough to clean up
			return c.end(ctx, ChallengeErrored, err)
		}
	}
	return nil
}

// presentFault charges a failure to present: a DNS provider refusing the
// record is the name's (its zone, its provider); a token that cannot be
// written is the storage's.
func (c *challengeRun) presentFault(err error) error {
	if c.ch.Type == acme.ChallengeTypeDNS01 {
		return charge(PartyName, err)
	}
	return charge(PartyStorage, err)
}

// switchType takes down what is presented for the current type and
// presents the challenge of typ from the same authorization instead
// (HTTP-01 and TLS-ALPN-01 answers share one token file per name in
// certmagic's layout, so only one is presented at a time).
func (c *challengeRun) switchType(ctx context.Context, typ string) error {
	chal, ok := findChallenge(c.authz, typ)
	if !ok {
		return c.end(ctx, ChallengeErrored, charge(PartyName, fmt.Errorf("the authorization does not offer %s", typ)))
	}
	if c.presented {
		if err := c.solver.CleanUp(ctx, c.chal, c.ch.Presented); err != nil {
			c.logger.Warn("taking down the previous challenge type", zap.Error(err))
		}
		c.presented = false
	}
	c.logger.Info("self-check keeps failing; trying the next challenge type", zap.String("next_type", typ))
	c.ch.Type, c.ch.Token, c.ch.URL = typ, chal.Token, chal.URL
	c.solver = c.r.w.opts.Solvers[typ]
	c.chal = chal
	c.logger = c.r.w.logger.With(zapOrder(c.r.order.ID), zapChallenge(c.ch.ID), zap.String("type", typ))
	return c.present(ctx)
}
