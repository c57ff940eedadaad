package issuer

import (
	"strings"
	"testing"
)

func TestCanIssueFrom(t *testing.T) {
	const (
		le      = "https://acme-v02.api.letsencrypt.org/directory"
		leStage = "https://acme-staging-v02.api.letsencrypt.org/directory"
		zerossl = "https://acme.zerossl.com/v2/DV90"
		google  = "https://dv.acme-v02.api.pki.goog/directory"
		private = "https://ca.internal.example/acme/directory"
	)
	for _, tc := range []struct {
		ca, name string
		want     string // "" = allowed
	}{
		{le, "example.com", ""},
		{le, "203.0.113.7", ""},
		{le, "2001:db8::7", ""},
		{le, "127.0.0.1", "never issues"},
		{le, "::1", "never issues"},
		{le, "10.1.2.3", "never issues"},
		{le, "192.168.0.1", "never issues"},
		{le, "172.16.5.4", "never issues"},
		{le, "169.254.1.1", "never issues"},
		{le, "fe80::1", "never issues"},
		{le, "fd00::1", "never issues"},
		{le, "localhost", "never issues"},
		{le, "printer.local", "never issues"},
		{le, "db.internal", "never issues"},
		{le, "nas.home.arpa", "never issues"},
		{leStage, "127.0.0.1", "never issues"},
		{google, "203.0.113.7", ""},
		{zerossl, "example.com", ""},
		{zerossl, "203.0.113.7", "does not issue certificates for IP addresses"},
		{zerossl, "localhost", "never issues"},
		{"https://api.buypass.com/acme/directory", "203.0.113.7", "does not issue certificates for IP addresses"},
		{"https://acme.ssl.com/sslcom-dv-rsa", "203.0.113.7", "does not issue certificates for IP addresses"},
		// a private or test CA decides for itself
		{private, "127.0.0.1", ""},
		{private, "localhost", ""},
		{private, "10.1.2.3", ""},
		{"https://127.0.0.1:14000/dir", "127.0.0.1", ""},
	} {
		err := CanIssueFrom(tc.ca, tc.name)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s from %s: refused: %v", tc.name, tc.ca, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s from %s: got %v, want an error containing %q", tc.name, tc.ca, err, tc.want)
		case err != nil && !strings.HasPrefix(err.Error(), tc.name+":"):
			t.Errorf("the refusal does not start with the name: %v", err)
		}
	}
}
