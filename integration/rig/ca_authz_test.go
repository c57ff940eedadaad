package rig

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"net/http"
	"net/url"
	"path"
	"sync"
	"testing"
	"time"

	"github.com/mholt/acmez/v3/acme"
)

// TestCAAuthzStatus: the fault hook sees which authorization a request is
// for (AuthzID), and AuthzStatus reads Pebble's status of it.
func TestCAAuthzStatus(t *testing.T) {
	c := startTestCA(t, CAOptions{HTTPPort: 1, TLSPort: 2})
	var mu sync.Mutex
	var seen []string
	c.SetFault(func(r *http.Request) (int, http.Header, string, bool) {
		if id := AuthzID(r); id != "" {
			mu.Lock()
			seen = append(seen, id)
			mu.Unlock()
		}
		return 0, nil, "", false
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := &acme.Client{Directory: c.DirectoryURL, HTTPClient: c.HTTPClient()}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	acct, err := client.NewAccount(ctx, acme.Account{Contact: []string{"mailto:rig@example.com"}, TermsOfServiceAgreed: true, PrivateKey: key})
	if err != nil {
		t.Fatal(err)
	}
	order, err := client.NewOrder(ctx, acct, acme.Order{Identifiers: []acme.Identifier{{Type: "dns", Value: "authz.test"}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.GetAuthorization(ctx, acct, order.Authorizations[0]); err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(order.Authorizations[0])
	if err != nil {
		t.Fatal(err)
	}
	id := path.Base(u.Path)
	mu.Lock()
	if len(seen) != 1 || seen[0] != id {
		t.Errorf("AuthzID of the requests the CA received: %v, want [%s]", seen, id)
	}
	mu.Unlock()
	if got := c.AuthzStatus(id); got != acme.StatusPending {
		t.Errorf("AuthzStatus(%s) = %q, want pending", id, got)
	}
	if got := c.AuthzStatus("no-such-authz"); got != "" {
		t.Errorf("AuthzStatus of an unknown ID = %q, want empty", got)
	}
}
