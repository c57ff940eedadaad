package issuer

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/mholt/acmez/v3/acme"
)

// TestClassify: whose fault a failed CA call is, decided from what the
// call did and what the CA answered.
func TestClassify(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	prob := func(status int, typ, detail string) error {
		return fmt.Errorf("attempt 1: %w", acme.Problem{Status: status, Type: acme.ProblemTypeNamespace + typ, Detail: detail})
	}
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		desc       string
		ctx        context.Context
		op         caOp
		err        error
		status     int
		retryAfter time.Duration
		want       Party
		wantUntil  time.Time
	}{
		{"rejected identifier", nil, opNewOrder, prob(400, "rejectedIdentifier", ""), 400, 0, PartyName, time.Time{}},
		{"CAA", nil, opFinalize, prob(403, "caa", ""), 403, 0, PartyName, time.Time{}},
		{"unauthorized for the name", nil, opNewOrder, prob(403, "unauthorized", "cannot issue for this name"), 403, 0, PartyName, time.Time{}},
		{"unauthorized on an account request", nil, opAccount, prob(403, "unauthorized", "key mismatch"), 403, 0, PartyAccount, time.Time{}},
		{"unauthorized naming a deactivated account", nil, opNewOrder, prob(403, "unauthorized", `Account is not valid, has status "deactivated"`), 403, 0, PartyAccount, time.Time{}},
		{"accountDoesNotExist", nil, opOrder, prob(400, "accountDoesNotExist", ""), 400, 0, PartyAccount, time.Time{}},
		{"userActionRequired", nil, opNewOrder, prob(403, "userActionRequired", "new terms"), 403, 0, PartyAccount, time.Time{}},
		{"bad nonce", nil, opNewOrder, prob(400, "badNonce", ""), 400, 0, PartyCA, time.Time{}},
		{"server error", nil, opAuthorization, prob(500, "serverInternal", ""), 500, 0, PartyCA, time.Time{}},
		{"a proxy's 502 page", nil, opAuthorization, errors.New("HTTP 502: <html>bad gateway</html>"), 502, 0, PartyCA, time.Time{}},
		{"connection refused", nil, opNewOrder, errors.New("dial tcp 127.0.0.1:1: connection refused"), 0, 0, PartyCA, time.Time{}},
		{"open circuit", nil, opNewOrder, fmt.Errorf("wrapped: %w", ErrCircuitOpen), 0, 0, PartyCA, time.Time{}},
		{"shutdown", canceled, opAuthorization, context.Canceled, 0, 0, PartyNobody, time.Time{}},
		{"429 with Retry-After", nil, opNewOrder, prob(429, "rateLimited", "slow down"), 429, time.Hour, PartyHold, now.Add(time.Hour)},
		{"429 without a problem document", nil, opNewOrder, errors.New("HTTP 429: Too Many Requests"), 429, 10 * time.Second, PartyHold, now.Add(10 * time.Second)},
		{"429 with the time only in its detail", nil, opNewOrder, prob(429, "rateLimited", "too many new orders (300) from this account in the last 3h0m0s, retry after 2026-12-06 14:00:00 UTC"), 429, 0, PartyHold, now.Add(2 * time.Hour)},
		{"429 saying nothing of when", nil, opNewOrder, prob(429, "rateLimited", ""), 429, 0, PartyHold, now.Add(defaultRateLimitWait)},
	}
	for _, tt := range tests {
		ctx := tt.ctx
		if ctx == nil {
			ctx = context.Background()
		}
		got := classify(ctx, tt.op, tt.err, tt.status, tt.retryAfter, now)
		party, until := chargedTo(got)
		if party != tt.want || !until.Equal(tt.wantUntil) {
			t.Errorf("%s: charged to %q until %s, want %q until %s", tt.desc, party, until, tt.want, tt.wantUntil)
		}
		if !errors.Is(got, tt.err) && !errors.Is(tt.err, context.Canceled) {
			t.Errorf("%s: the CA's error is not kept: %v", tt.desc, got)
		}
	}
}

// TestChargedToDecidesByWhatTheErrorIs: an error no call site charged.
func TestChargedToDecidesByWhatTheErrorIs(t *testing.T) {
	until := time.Now().Add(time.Minute)
	for _, tt := range []struct {
		err  error
		want Party
	}{
		{fmt.Errorf("x: %w", ErrStorage), PartyStorage},
		{fmt.Errorf("x: %w", ErrQueueFull), PartyProcess},
		{fmt.Errorf("x: %w", context.Canceled), PartyNobody},
		{&HeldBackError{Until: until}, PartyHold},
		{errors.New("anything else"), PartyName},
		{charge(PartyCA, charge(PartyName, errors.New("inner decides"))), PartyName},
		{recharge(PartyNobody, charge(PartyName, errors.New("outer decides"))), PartyNobody},
	} {
		if got, _ := chargedTo(tt.err); got != tt.want {
			t.Errorf("%v: charged to %q, want %q", tt.err, got, tt.want)
		}
	}
}

func TestIsRefusal(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want bool
	}{
		{acme.Problem{Status: 400, Type: acme.ProblemTypeRejectedIdentifier}, true},
		{acme.Problem{Status: http.StatusTooManyRequests, Type: acme.ProblemTypeRateLimited}, false},
		{acme.Problem{Status: 400, Type: acme.ProblemTypeBadNonce}, false},
		{acme.Problem{Status: 503, Type: acme.ProblemTypeServerInternal}, false},
		{errors.New("network"), false},
	} {
		if got := isRefusal(tt.err); got != tt.want {
			t.Errorf("isRefusal(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}
