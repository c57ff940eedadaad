package issuer

import (
	"fmt"
	"testing"
)

// TestLimitScope: what a 429 on new-order holds, by the CA's wording.
func TestLimitScope(t *testing.T) {
	const user = "ops@example.com"
	tests := []struct {
		detail    string
		names     []string
		wantLimit string
		want      HoldScope
	}{
		{"too many new orders (300) from this account in the last 3h0m0s, retry after 2030-01-01 00:00:00 UTC",
			[]string{"a.example.com"}, "new orders per account", HoldScope{ScopeAccount, user}},
		{"too many new registrations (10) from this IP address in the last 3h0m0s",
			[]string{"a.example.com"}, "new registrations per IP address", HoldScope{ScopeAccount, user}},
		{`too many certificates (50) already issued for "example.com" in the last 168h0m0s`,
			[]string{"shop.example.com"}, "certificates per registered domain", HoldScope{ScopeDomain, "example.com"}},
		{`too many certificates (50) already issued for "example.co.uk"`,
			[]string{"www.example.co.uk"}, "certificates per registered domain", HoldScope{ScopeDomain, "example.co.uk"}},
		{"too many certificates (5) already issued for this exact set of identifiers in the last 168h0m0s",
			[]string{"b.example.com", "a.example.com"}, "certificates per exact set of identifiers", HoldScope{ScopeNames, "a.example.com,b.example.com"}},
		{`too many failed authorizations (5) for "x.example.com" in the last 1h0m0s`,
			[]string{"x.example.com"}, "failed authorizations per identifier", HoldScope{ScopeNames, "x.example.com"}},
		{"Too Many Requests", []string{"x.example.com"}, unrecognisedLimit, HoldScope{ScopeNames, "x.example.com"}},
		// a per-domain limit on names without a registered domain of their
		// own is held at the names
		{`too many certificates (50) already issued for "192.0.2.0/24"`, []string{"192.0.2.1"}, "certificates per registered domain", HoldScope{ScopeNames, "192.0.2.1"}},
		{`too many certificates (50) already issued for "example.com"`, []string{"*.example.com"}, "certificates per registered domain", HoldScope{ScopeNames, "*.example.com"}},
		{`too many certificates (50) already issued for "co.uk"`, []string{"co.uk"}, "certificates per registered domain", HoldScope{ScopeNames, "co.uk"}},
	}
	for _, tt := range tests {
		limit, scope := limitScope(tt.detail, tt.names, user)
		if limit != tt.wantLimit || scope != tt.want {
			t.Errorf("%q for %v: %q, %+v; want %q, %+v", tt.detail, tt.names, limit, scope, tt.wantLimit, tt.want)
		}
	}
}

// TestHoldScopeKeys: every scope certflow makes has its own storage key.
func TestHoldScopeKeys(t *testing.T) {
	seen := map[string]HoldScope{}
	for _, s := range []HoldScope{
		{ScopeNames, "a.example.com"}, {ScopeNames, "a.example.com,b.example.com"}, {ScopeNames, "a.example.com,c.example.com"},
		{ScopeNames, "*.example.com"}, {ScopeNames, "example.com"}, {ScopeDomain, "example.com"}, {ScopeAccount, "ops@example.com"},
		{ScopeAccount, "eab-key"}, {ScopeNames, "2001:db8::1"},
	} {
		k := s.Key()
		if other, ok := seen[k]; ok {
			t.Errorf("%+v and %+v share the key %q", s, other, k)
		}
		seen[k] = s
	}
}

// TestAccountWatch: the account is held only when most recent new orders
// met 429s of unrecognised scope across several registered domains.
func TestAccountWatch(t *testing.T) {
	type outcome struct {
		unrecognised bool
		domain       string
	}
	many := func(n int, o func(i int) outcome) []outcome {
		var out []outcome
		for i := range n {
			out = append(out, o(i))
		}
		return out
	}
	unrec := func(i int) outcome { return outcome{true, fmt.Sprintf("d%d.example", i)} }
	ok := func(int) outcome { return outcome{} }
	tests := []struct {
		desc string
		seq  []outcome
		want bool
	}{
		{"a handful of stale domains", many(4, unrec), false},
		{"ten of the last twenty, across ten domains", append(many(10, ok), many(10, unrec)...), true},
		{"nine of the last twenty", append(many(11, ok), many(9, unrec)...), false},
		{"ten, but one registered domain", many(10, func(int) outcome { return outcome{true, "same.example"} }), false},
		{"ten, two domains", many(10, func(i int) outcome { return outcome{true, fmt.Sprintf("d%d.example", i%2)} }), false},
		{"old 429s pushed out of the window", append(many(9, unrec), append(many(20, ok), many(1, unrec)...)...), false},
	}
	for _, tt := range tests {
		var w accountWatch
		got := false
		for _, o := range tt.seq {
			got = w.record(o.unrecognised, o.domain)
		}
		if got != tt.want {
			t.Errorf("%s: hold the account = %v, want %v", tt.desc, got, tt.want)
		}
	}
}
