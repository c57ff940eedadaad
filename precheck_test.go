package certflow

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
)

// TestPreCheckRefusesWhatAPublicCANeverIssues: as the stock acme issuer,
// certflow refuses up front, for good, internal names and private or
// loopback addresses when the CA is a well-known public one, and IP
// addresses from a public CA that issues none; a private CA gets them all.
func TestPreCheckRefusesWhatAPublicCANeverIssues(t *testing.T) {
	for _, tc := range []struct {
		ca, name, want string
	}{
		{"", "127.0.0.1", "never issues"}, // the default CA is Let's Encrypt
		{"https://acme-v02.api.letsencrypt.org/directory", "10.0.0.7", "never issues"},
		{"https://acme-v02.api.letsencrypt.org/directory", "203.0.113.7", ""},
		{"https://acme.zerossl.com/v2/DV90", "203.0.113.7", "does not issue certificates for IP addresses"},
		{"https://ca.internal.example/directory", "127.0.0.1", ""},
	} {
		iss := &Issuer{CA: tc.ca}
		err := iss.PreCheck(context.Background(), []string{tc.name}, false)
		if tc.want == "" {
			if err != nil {
				t.Errorf("%s from %q: %v", tc.name, tc.ca, err)
			}
			continue
		}
		var noRetry certmagic.ErrNoRetry
		if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.As(err, &noRetry) {
			t.Errorf("%s from %q: got %v, want a final refusal containing %q", tc.name, tc.ca, err, tc.want)
		}
		// the permission module's question gets the same answer, from memory
		if r, refused := iss.refusal(tc.name, time.Now()); !refused || !strings.Contains(r.Reason, tc.want) {
			t.Errorf("%s from %q: admission answered %v %q", tc.name, tc.ca, refused, r.Reason)
		}
	}
}
