package certflow

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// The Caddyfile subdirectives of certflow's limits: the scheduler, the
// challenge deadline, the failure backoff, the order rate limit and the
// retention of finished resources (see UnmarshalCaddyfile for the
// grammar).

func (iss *Issuer) parseMaxConcurrent(d *caddyfile.Dispenser) error {
	n, err := countArg(d, "max_concurrent_challenges")
	iss.MaxConcurrentChallenges = n
	return err
}

func (iss *Issuer) parseMaxQueued(d *caddyfile.Dispenser) error {
	n, err := countArg(d, "max_queued_challenges")
	iss.MaxQueuedChallenges = n
	return err
}

func (iss *Issuer) parseChallengeTimeout(d *caddyfile.Dispenser) error {
	dur, err := durationArg(d, "challenge_timeout")
	iss.ChallengeTimeout = dur
	return err
}

// parseFailureBackoff parses the arguments of
//
//	failure_backoff <initial> [<max>]
func (iss *Issuer) parseFailureBackoff(d *caddyfile.Dispenser) error {
	args := d.RemainingArgs()
	if len(args) < 1 || len(args) > 2 {
		return d.ArgErr()
	}
	initial, err := parseDuration(d, "failure_backoff initial", args[0])
	if err != nil {
		return err
	}
	backoff := &BackoffConfig{Initial: initial}
	if len(args) == 2 {
		if backoff.Max, err = parseDuration(d, "failure_backoff max", args[1]); err != nil {
			return err
		}
		if backoff.Max < backoff.Initial {
			return d.Errf("failure_backoff max %s is shorter than its initial wait %s",
				args[1], args[0])
		}
	}
	iss.FailureBackoff = backoff
	return nil
}

// parseOrderRateLimit parses the arguments of
//
//	order_rate_limit <orders> <window> | off
func (iss *Issuer) parseOrderRateLimit(d *caddyfile.Dispenser) error {
	args := d.RemainingArgs()
	if len(args) == 1 && args[0] == "off" {
		iss.OrderRateLimit = &OrderRateLimitConfig{Disabled: true}
		return nil
	}
	if len(args) != 2 {
		return d.ArgErr()
	}
	orders, err := parseCount(d, "order_rate_limit orders", args[0])
	if err != nil {
		return err
	}
	window, err := parseDuration(d, "order_rate_limit window", args[1])
	if err != nil {
		return err
	}
	iss.OrderRateLimit = &OrderRateLimitConfig{Orders: orders, Window: window}
	return nil
}

// parseRetention parses the arguments of
//
//	retention <max_count> [<max_age>]
func (iss *Issuer) parseRetention(d *caddyfile.Dispenser) error {
	args := d.RemainingArgs()
	if len(args) < 1 || len(args) > 2 {
		return d.ArgErr()
	}
	count, err := parseCount(d, "retention max_count", args[0])
	if err != nil {
		return err
	}
	retention := &RetentionConfig{MaxCount: count}
	if len(args) == 2 {
		if retention.MaxAge, err = parseDuration(d, "retention max_age", args[1]); err != nil {
			return err
		}
	}
	iss.Retention = retention
	return nil
}
