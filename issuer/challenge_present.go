package issuer

import (
	"bytes"
	"context"
	"fmt"

	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"

	"github.com/certflow/certflow/solvers"
)

// present publishes the challenge's answer (c.chal). When the answer is
// outside storage (DNS-01: the TXT record, which the solver plans), the
// challenge is written as presented first, with the plan, so that a crash
// or a failed write never leaves an answer nobody can find and clean up;
// after Present, the record as the provider returned it is written too.
// An answer in storage (HTTP-01, TLS-ALPN-01: certmagic's token file) is
// written without that first write: a token a crash leaves behind is
// found in storage and removed by maintenance (tokensweep.go), or by the
// next request for the name (order_resume.go).
func (c *challengeRun) present(ctx context.Context) error {
	c.ch.Presented = nil
	c.ch.CleanedUp = false
	if p, ok := c.solver.(solvers.Planner); ok {
		plan, err := p.Plan(c.chal)
		if err != nil {
			return c.end(ctx, ChallengeErrored, charge(PartyName, fmt.Errorf("planning what to present: %w", err)))
		}
		c.ch.Presented = plan
		c.advance(ChallengePresented, "")
		if err := c.commit(ctx); err != nil {
			return c.end(ctx, ChallengeErrored, err) // nothing is published yet
		}
	} else {
		c.advance(ChallengePresented, "")
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
		if err := c.cleanUp(ctx); err != nil {
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
