package solvers

import (
	"crypto/rand"
	"encoding/base64"
	"strings"
	"testing"

	"github.com/mholt/acmez/v3/acme"
)

const testIssuerKey = "acme-v02.api.letsencrypt.org-directory"

// newChallenge returns a challenge filled in by hand the way
// acme.Client.GetAuthorization fills it in.
func newChallenge(t *testing.T, typ, idType, value string) acme.Challenge {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	token := base64.RawURLEncoding.EncodeToString(b)
	return acme.Challenge{
		Type:             typ,
		Token:            token,
		KeyAuthorization: token + ".thumbprint-" + token[:8],
		Identifier:       acme.Identifier{Type: idType, Value: value},
	}
}

// assertNoSecret fails if err's text contains the key authorization.
func assertNoSecret(t *testing.T, err error, chal acme.Challenge) {
	t.Helper()
	if err != nil && strings.Contains(err.Error(), chal.KeyAuthorization) {
		t.Errorf("error contains the key authorization: %v", err)
	}
}

func wantErr(t *testing.T, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Fatalf("unexpected error: %v", err)
	case want != "" && err == nil:
		t.Fatalf("no error, want one containing %q", want)
	case want != "" && !strings.Contains(err.Error(), want):
		t.Fatalf("error %q does not contain %q", err, want)
	}
}
