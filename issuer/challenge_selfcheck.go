package issuer

import (
	"context"
	"fmt"
	"strings"

	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"

	"github.com/certflow/certflow/solvers"
)

// SelfCheckTurn is how many failed self-checks a challenge type gets
// before the next enabled HTTP-01/TLS-ALPN-01 type the CA offered is
// presented and checked instead. The CA has not been asked yet, so trying
// another type costs nothing at the CA (stock Caddy reaches the next type
// only after the CA failed the first, a failed validation counted against
// the account).
const SelfCheckTurn = 3

// presentAndCheck presents the challenge and checks it the way the CA
// will, until a check passes. When the challenge's type keeps failing (for
// SelfCheckTurn checks), the other enabled HTTP-01/TLS-ALPN-01 types the
// authorization offers take turns with it (a site whose port 80 is closed
// gets its certificate over TLS-ALPN-01); the first type that passes is
// the one the CA is asked to validate. When every type keeps failing until
// the self-check timeout, the challenge fails with every type's reason, a
// failure of the name. With self_check advisory, a single round of turns
// that all fail ends in the first type being presented again and accepted
// anyway (for servers that cannot reach their own public address).
func (c *challengeRun) presentAndCheck(ctx context.Context) error {
	if err := c.present(ctx); err != nil {
		return err
	}
	tuning := c.selfCheckTuning()
	if tuning.Delay > 0 {
		c.logger.Info("waiting before the self-check", zap.Duration("delay", tuning.Delay))
		if err := sleepCtx(ctx, tuning.Delay); err != nil {
			return c.end(ctx, ChallengeErrored, cutOff(ctx, PartyNobody, fmt.Errorf("waiting %s before the self-check: %w", tuning.Delay, err)))
		}
	}
	if tuning.Skip {
		c.advance(ChallengeSelfChecked, "")
		return nil
	}

	types := c.rotation()
	advisory := c.r.w.opts.SelfCheckAdvisory
	checkCtx, cancel := context.WithTimeout(ctx, tuning.Timeout)
	defer cancel()
	for turn := 0; ; turn++ {
		if turn == 1 && len(types) > 1 {
			types = c.offered(ctx, types)
		}
		if typ := types[turn%len(types)]; typ != c.ch.Type {
			if err := c.switchType(ctx, typ); err != nil {
				return err
			}
		}
		budget := 0 // unlimited: one type alone keeps trying until the timeout
		if len(types) > 1 || advisory {
			budget = SelfCheckTurn
		}
		passed, err := c.checkTurn(checkCtx, tuning, budget)
		if err != nil {
			return c.end(ctx, ChallengeErrored, err) // a commit failed
		}
		if passed {
			c.advance(ChallengeSelfChecked, "")
			return nil
		}
		lastTurn := turn+1 >= len(types)
		if checkCtx.Err() != nil || (advisory && lastTurn) || turn >= maxSelfCheckTurns {
			break
		}
	}
	reasons := c.selfCheckReasons(types)
	if advisory && ctx.Err() == nil {
		if types[0] != c.ch.Type {
			if err := c.switchType(ctx, types[0]); err != nil {
				return err
			}
		}
		c.logger.Warn("self-check failed for every challenge type; asking the CA anyway (self_check advisory)", zapReason(reasons))
		c.advance(ChallengeSelfChecked, "self-check failed, asked the CA anyway (advisory): "+reasons)
		return nil
	}
	var err error
	switch {
	case ctx.Err() != nil:
		// the request's or the challenge's own deadline cut it off: the
		// name's, since its self-check was failing; a shutdown is nobody's
		err = cutOff(ctx, PartyName, fmt.Errorf("self-check interrupted: %w; last reasons: %s", ctx.Err(), reasons))
	default:
		err = charge(PartyName, fmt.Errorf("self-check did not pass within %s: %s", tuning.Timeout, reasons))
	}
	return c.end(ctx, ChallengeErrored, err)
}

// maxSelfCheckTurns bounds the turns; the self-check timeout ends them
// long before.
const maxSelfCheckTurns = 10000

// rotation lists the types that may take turns: the challenge's own type
// first, then (not for DNS-01) the other enabled HTTP-01/TLS-ALPN-01
// types, in preference order. Whether the CA offers them is checked when
// the first turn has failed (offered).
func (c *challengeRun) rotation() []string {
	types := []string{c.ch.Type}
	if c.ch.Type == acme.ChallengeTypeDNS01 {
		return types
	}
	for _, t := range c.r.w.opts.ChallengeTypes {
		if t == c.ch.Type || (t != acme.ChallengeTypeHTTP01 && t != acme.ChallengeTypeTLSALPN01) {
			continue
		}
		if _, ok := c.r.w.opts.Solvers[t]; ok {
			types = append(types, t)
		}
	}
	return types
}

// offered keeps of types those the authorization offers (the challenge's
// own first), reading the authorization again when the copy at hand was
// trimmed while the challenge waited in the queue (waitingAuthz).
func (c *challengeRun) offered(ctx context.Context, types []string) []string {
	if len(c.authz.Challenges) <= 1 {
		authz, err := c.readAuthorization(ctx, "re-reading")
		if err != nil {
			c.logger.Warn("reading the authorization for the other challenge types; staying with this one", zap.Error(err))
			return types[:1]
		}
		c.authz = authz
	}
	out := types[:1]
	for _, t := range types[1:] {
		if _, ok := findChallenge(c.authz, t); ok {
			out = append(out, t)
		}
	}
	return out
}

// checkTurn runs the solver's check at once and then on an interval, until
// it passes, budget checks have failed (0: no limit), or ctx ends. Every
// failure's reason is recorded on the challenge and committed. err is a
// failed commit.
func (c *challengeRun) checkTurn(ctx context.Context, tuning solvers.SelfCheckTuning, budget int) (passed bool, err error) {
	failed := 0
	for range maxSelfChecksPerTurn {
		checkErr := c.solver.SelfCheck(ctx, c.chal)
		if checkErr == nil {
			return true, nil
		}
		if ctx.Err() == nil || c.ch.SelfCheckFailures[c.ch.Type] == "" {
			// a check cut short by the deadline would only say so: the
			// previous reason is the real one
			failed++
			if err := c.noteFailure(ctx, checkErr); err != nil {
				return false, err
			}
		}
		if ctx.Err() != nil || (budget > 0 && failed >= budget) {
			return false, nil
		}
		if sleepCtx(ctx, tuning.Interval) != nil {
			return false, nil
		}
	}
	return false, nil
}

// maxSelfChecksPerTurn bounds one turn's checks; the self-check timeout
// ends them long before.
const maxSelfChecksPerTurn = 100000

// noteFailure records a failed self-check's reason for the current type,
// and commits it (a status view shows why the challenge waits).
func (c *challengeRun) noteFailure(ctx context.Context, checkErr error) error {
	reason := checkErr.Error()
	c.ch.SelfChecks++
	if c.ch.SelfCheckFailures == nil {
		c.ch.SelfCheckFailures = map[string]string{}
	}
	c.ch.SelfCheckFailures[c.ch.Type] = reason
	c.ch.Reason = "self-check failed: " + reason
	if c.ch.SelfChecks == 1 || c.ch.SelfChecks%10 == 0 {
		c.logger.Warn("self-check failed; retrying", zapState(c.ch.State), zapReason(reason),
			zap.Int("attempts", c.ch.SelfChecks))
	}
	saveCtx, cancel := detached(ctx)
	defer cancel()
	return c.commit(saveCtx)
}

// selfCheckReasons is every type's last failed self-check, in turn order.
func (c *challengeRun) selfCheckReasons(types []string) string {
	var parts []string
	for _, t := range types {
		if r, ok := c.ch.SelfCheckFailures[t]; ok {
			parts = append(parts, t+": "+r)
		}
	}
	if len(parts) == 0 {
		return "no check completed"
	}
	return strings.Join(parts, "; ")
}

// selfCheckTuning is the solver's own schedule where it has one (DNS-01),
// else the issuer's self_check settings.
func (c *challengeRun) selfCheckTuning() solvers.SelfCheckTuning {
	opts := c.r.w.opts
	t := solvers.SelfCheckTuning{Skip: opts.SelfCheckDisabled}
	if tuner, ok := c.solver.(solvers.SelfCheckTuner); ok {
		t = tuner.SelfCheckTuning()
	}
	if t.Interval <= 0 {
		t.Interval = opts.SelfCheckInterval
	}
	if t.Timeout <= 0 {
		t.Timeout = opts.SelfCheckTimeout
	}
	return t
}
