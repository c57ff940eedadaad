package issuer

import (
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/mholt/acmez/v3/acme"
)

func TestBackoffFor(t *testing.T) {
	tests := []struct {
		n    int
		want time.Duration
	}{
		{1, time.Minute}, {2, 2 * time.Minute}, {3, 4 * time.Minute}, {9, 256 * time.Minute}, {10, 6 * time.Hour}, {100, 6 * time.Hour},
	}
	for _, tt := range tests {
		if got := backoffFor(tt.n, time.Minute, 6*time.Hour); got != tt.want {
			t.Errorf("backoffFor(%d) = %s, want %s", tt.n, got, tt.want)
		}
	}
}

func TestIsFinalError(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"rejected identifier", acme.Problem{Status: 400, Type: acme.ProblemTypeRejectedIdentifier}, true},
		{"unauthorized", acme.Problem{Status: 403, Type: acme.ProblemTypeUnauthorized}, true},
		{"rate limited", acme.Problem{Status: 429, Type: acme.ProblemTypeRateLimited}, false},
		{"bad nonce", acme.Problem{Status: 400, Type: acme.ProblemTypeBadNonce}, false},
		{"server error", acme.Problem{Status: 500, Type: acme.ProblemTypeServerInternal}, false},
		{"network", errors.New("dial tcp: connection refused"), false},
	}
	for _, tt := range tests {
		if got := isRefusal(tt.err); got != tt.want {
			t.Errorf("%s: isRefusal = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"", 0}, {"7", 7 * time.Second}, {"-1", 0}, {"junk", 0},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0},
		// too large to represent: still a wait, the longest certflow honours
		{"99999999999999999999999", MaxRetryAfter}, {"9223372036854775807", MaxRetryAfter},
		{now.Add(100 * 365 * 24 * time.Hour).Format(http.TimeFormat), MaxRetryAfter},
	}
	for _, tt := range tests {
		if got := parseRetryAfter(tt.in, now); got != tt.want {
			t.Errorf("parseRetryAfter(%q) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

func TestCanIssue(t *testing.T) {
	httpOnly := []string{acme.ChallengeTypeHTTP01}
	dnsOnly := []string{acme.ChallengeTypeDNS01}
	tests := []struct {
		name  string
		types []string
		ok    bool
	}{
		{"example.com", httpOnly, true},
		{"*.example.com", httpOnly, false},
		{"*.example.com", dnsOnly, true},
		{"a.*.example.com", dnsOnly, false},
		{"192.0.2.1", httpOnly, true},
		{"192.0.2.1", dnsOnly, false},
		{"2001:db8::1", []string{acme.ChallengeTypeTLSALPN01}, true},
		{"bad..name", httpOnly, false},
		{"", httpOnly, false},
	}
	for _, tt := range tests {
		err := CanIssue(tt.name, tt.types)
		if (err == nil) != tt.ok {
			t.Errorf("CanIssue(%q, %v) = %v, want ok=%v", tt.name, tt.types, err, tt.ok)
		}
	}
}

func TestCAKey(t *testing.T) {
	tests := map[string]string{
		"https://acme-v02.api.letsencrypt.org/directory": "acme-v02.api.letsencrypt.org-directory",
		"https://127.0.0.1:14000/dir":                    "127.0.0.1:14000-dir",
		"https://ca.example/":                            "ca.example",
	}
	for in, want := range tests {
		if got := CAKey(in); got != want {
			t.Errorf("CAKey(%q) = %q, want %q", in, got, want)
		}
	}
}
