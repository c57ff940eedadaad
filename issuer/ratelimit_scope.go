package issuer

import (
	"crypto/sha256"
	"encoding/hex"
	"net"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/certmagic"
	"golang.org/x/net/publicsuffix"
)

// ACME problem documents carry no scope: a 429 does not say whether the CA
// limited the account, a registered domain or these exact names. The scope
// comes from the CA's own wording, for the limits of Let's Encrypt that
// certflow recognises (Boulder's messages, ratelimits/limiter.go), listed
// here in one place. Anything not recognised, and any IP address, wildcard
// or public-suffix name, is held at the scope of the order's own names; the
// account is held only for an account-wide limit, or when most recent
// new-orders meet 429s of unrecognised scope (accountWatch, holds.go).

// Scope kinds.
const (
	ScopeAccount = "account"
	ScopeDomain  = "domain" // a registered domain (eTLD+1, by the Public Suffix List)
	ScopeNames   = "names"  // an exact set of names
)

// HoldScope is what a hold stops new orders for.
type HoldScope struct {
	Kind string `json:"kind"`
	// Value is the account's user (email or EAB key ID), the registered
	// domain, or the names joined by commas, sorted.
	Value string `json:"value"`
}

// Key is the storage key base of holds of this scope: one-to-one over the
// scopes certflow makes (names are validated, so their storage form is).
func (s HoldScope) Key() string {
	switch s.Kind {
	case ScopeNames:
		names := strings.Split(s.Value, ",")
		if len(names) == 1 {
			return "names-" + certmagic.StorageKeys.Safe(names[0])
		}
		sum := sha256.Sum256([]byte(s.Value))
		return "names-" + certmagic.StorageKeys.Safe(names[0]) + "-and-" + hex.EncodeToString(sum[:6])
	case ScopeDomain:
		return "domain-" + certmagic.StorageKeys.Safe(s.Value)
	}
	return "account-" + certmagic.StorageKeys.Safe(s.Value)
}

func (s HoldScope) String() string {
	switch s.Kind {
	case ScopeNames:
		return "names " + s.Value
	case ScopeDomain:
		return "registered domain " + s.Value
	}
	return "the account " + s.Value
}

// knownLimit is a rate limit recognised by the CA's wording.
type knownLimit struct {
	// Name is the limit as the CA documents it.
	Name string
	// phrase is matched case-insensitively in the problem's detail.
	phrase string
	// scope is what it limits: ScopeAccount, ScopeDomain or ScopeNames.
	scope string
}

// knownLimits are Let's Encrypt's documented limits, most specific first
// ("exact set" and "failed authorizations" before the per-domain one, whose
// phrase is a prefix of the exact-set one).
var knownLimits = []knownLimit{
	{Name: "new orders per account", phrase: "too many new orders", scope: ScopeAccount},
	{Name: "new registrations per IP address", phrase: "too many new registrations", scope: ScopeAccount},
	{Name: "certificates per exact set of identifiers", phrase: "already issued for this exact set of", scope: ScopeNames},
	{Name: "failed authorizations per identifier", phrase: "too many failed authorizations", scope: ScopeNames},
	{Name: "certificates per registered domain", phrase: "too many certificates", scope: ScopeDomain},
}

// unrecognisedLimit names a 429 whose wording certflow does not know.
const unrecognisedLimit = "unrecognised"

// limitScope decides what a 429 on new-order for names holds: the limit
// it recognises (or unrecognisedLimit) and the scope. account is the
// account's user.
func limitScope(detail string, names []string, account string) (limit string, scope HoldScope) {
	own := namesScope(names)
	d := strings.ToLower(detail)
	for _, l := range knownLimits {
		if !strings.Contains(d, l.phrase) {
			continue
		}
		switch l.scope {
		case ScopeAccount:
			return l.Name, HoldScope{Kind: ScopeAccount, Value: account}
		case ScopeDomain:
			if rd, ok := registeredDomain(names); ok {
				return l.Name, HoldScope{Kind: ScopeDomain, Value: rd}
			}
			return l.Name, own
		default:
			return l.Name, own
		}
	}
	return unrecognisedLimit, own
}

// registeredDomain is the registered domain (eTLD+1) all names share, by
// the Public Suffix List; false for an IP address, a wildcard, a public
// suffix itself, or names of several registered domains.
func registeredDomain(names []string) (string, bool) {
	var rd string
	for _, n := range names {
		if net.ParseIP(n) != nil || strings.Contains(n, "*") {
			return "", false
		}
		d, err := publicsuffix.EffectiveTLDPlusOne(n)
		if err != nil || (rd != "" && d != rd) {
			return "", false
		}
		rd = d
	}
	return rd, rd != ""
}

// retryAfterRE finds Boulder's "retry after 2006-01-02 15:04:05 UTC".
var retryAfterRE = regexp.MustCompile(`retry after (\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}) UTC`)

// retryAfterInDetail reads the time a 429's detail says to retry after,
// for a CA that sends no Retry-After header; 0 when there is none.
func retryAfterInDetail(detail string, now time.Time) time.Duration {
	m := retryAfterRE.FindStringSubmatch(detail)
	if m == nil {
		return 0
	}
	t, err := time.Parse(time.DateTime, m[1])
	if err != nil || !t.After(now) {
		return 0
	}
	return min(t.Sub(now), MaxRetryAfter)
}

// namesScope is the scope of exactly these names.
func namesScope(names []string) HoldScope {
	sorted := slices.Clone(names)
	slices.Sort(sorted)
	return HoldScope{Kind: ScopeNames, Value: strings.Join(sorted, ",")}
}
