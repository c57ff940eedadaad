package solvers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"
)

func TestTokenKey(t *testing.T) {
	const prefix = "acme/" + testIssuerKey + "/challenge_tokens/"
	tests := []struct {
		name      string
		issuerKey string
		chal      acme.Challenge
		want      string
	}{
		{"http-01 dns", testIssuerKey, chal("http-01", "dns", "example.com"), prefix + "example.com.json"},
		{"tls-alpn-01 dns", testIssuerKey, chal("tls-alpn-01", "dns", "example.com"), prefix + "example.com.json"},
		{"upper case is folded", testIssuerKey, chal("http-01", "dns", "WWW.Example.COM"), prefix + "www.example.com.json"},
		{"subdomain with underscore", testIssuerKey, chal("http-01", "dns", "a_b.example.com"), prefix + "a_b.example.com.json"},
		{"wildcard spelled out", testIssuerKey, chal("dns-01", "dns", "*.example.com"), prefix + "wildcard_.example.com.json"},
		{"http-01 ipv4", testIssuerKey, chal("http-01", "ip", "192.0.2.1"), prefix + "192.0.2.1.json"},
		{"http-01 ipv6", testIssuerKey, chal("http-01", "ip", "2001:db8::1"), prefix + "2001-db8--1.json"},
		{"tls-alpn-01 ipv4 is reverse dns", testIssuerKey, chal("tls-alpn-01", "ip", "192.0.2.1"), prefix + "1.2.0.192.in-addr.arpa.json"},
		{
			"tls-alpn-01 ipv6 is reverse dns", testIssuerKey, chal("tls-alpn-01", "ip", "2001:db8::1"),
			prefix + "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.json",
		},
		{"tls-alpn-01 bad ip falls back to the value", testIssuerKey, chal("tls-alpn-01", "ip", "not-an-ip"), prefix + "not-an-ip.json"},
		{"issuer key with port and path", "localhost:14000-dir", chal("http-01", "dns", "example.com"), "acme/localhost-14000-dir/challenge_tokens/example.com.json"},
		{"traversal in identifier", testIssuerKey, chal("http-01", "dns", "../../x"), prefix + "x.json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := TokenKey(tt.issuerKey, tt.chal); got != tt.want {
				t.Errorf("TokenKey = %q, want %q", got, tt.want)
			}
		})
	}
}

func chal(typ, idType, value string) acme.Challenge {
	return acme.Challenge{Type: typ, Token: "tok", KeyAuthorization: "tok.x", Identifier: acme.Identifier{Type: idType, Value: value}}
}

// TestTokenServedByCertmagic checks the layout against certmagic itself:
// what Present stores is what certmagic's distributed HTTP-01 handler serves.
// (TLS-ALPN-01 is checked end to end in TestTLSALPN01ServedByCertmagic.)
func TestTokenServedByCertmagic(t *testing.T) {
	tests := []struct {
		name, idType, value, host string
	}{
		{"dns name", "dns", "example.com", "example.com"},
		{"dns name, host in other case", "dns", "example.com", "EXAMPLE.com:8080"},
		{"ipv4", "ip", "192.0.2.1", "192.0.2.1"},
		{"ipv6", "ip", "2001:db8::1", "[2001:db8::1]:80"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			storage := &certmagic.FileStorage{Path: t.TempDir()}
			magic := newMagic(t, storage, testIssuerKey)
			am := certmagic.NewACMEIssuer(magic, certmagic.ACMEIssuer{CA: "https://ca.invalid/directory", Logger: zap.NewNop()})

			c := newChallenge(t, acme.ChallengeTypeHTTP01, tt.idType, tt.value)
			ts := TokenStore{Storage: storage, IssuerKey: testIssuerKey}
			if err := ts.Present(context.Background(), c); err != nil {
				t.Fatal(err)
			}

			req := httptest.NewRequest(http.MethodGet, "http://placeholder"+c.HTTP01ResourcePath(), nil)
			req.Host = tt.host
			rec := httptest.NewRecorder()
			if !am.HandleHTTPChallenge(rec, req) {
				t.Fatalf("certmagic did not find the token at %s", ts.Key(c))
			}
			if got := rec.Body.String(); got != c.KeyAuthorization {
				t.Fatalf("certmagic served %q, want the key authorization", got)
			}

			if err := ts.CleanUp(context.Background(), c); err != nil {
				t.Fatal(err)
			}
			if am.HandleHTTPChallenge(httptest.NewRecorder(), req) {
				t.Fatal("certmagic still serves the token after CleanUp")
			}
		})
	}
}

func TestTokenStorePresent(t *testing.T) {
	ctx := context.Background()
	storage := &certmagic.FileStorage{Path: t.TempDir()}
	ts := TokenStore{Storage: storage, IssuerKey: testIssuerKey}
	c := newChallenge(t, acme.ChallengeTypeHTTP01, "dns", "example.com")
	c.URL = "https://ca.invalid/chal/1"

	var first []byte
	for i := range 3 {
		if err := ts.Present(ctx, c); err != nil {
			t.Fatalf("Present #%d: %v", i+1, err)
		}
		b, err := storage.Load(ctx, ts.Key(c))
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = b
		} else if !bytes.Equal(b, first) {
			t.Fatalf("Present #%d stored %s, first stored %s", i+1, b, first)
		}
	}

	var fields map[string]json.RawMessage
	if err := json.Unmarshal(first, &fields); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"type", "token", "keyAuthorization", "identifier"} {
		if _, ok := fields[f]; !ok {
			t.Errorf("stored JSON lacks %q: %s", f, first)
		}
	}
	var stored acme.Challenge
	if err := json.Unmarshal(first, &stored); err != nil {
		t.Fatal(err)
	}
	if stored.Token != c.Token || stored.KeyAuthorization != c.KeyAuthorization || stored.Identifier != c.Identifier {
		t.Errorf("stored %+v, want %+v", stored, c)
	}
}

func TestTokenStoreCleanUp(t *testing.T) {
	ctx := context.Background()
	ts := TokenStore{Storage: &certmagic.FileStorage{Path: t.TempDir()}, IssuerKey: testIssuerKey}
	mine := newChallenge(t, acme.ChallengeTypeHTTP01, "dns", "example.com")
	theirs := newChallenge(t, acme.ChallengeTypeTLSALPN01, "dns", "example.com") // same file

	// Nothing stored: nothing to do.
	if err := ts.CleanUp(ctx, mine); err != nil {
		t.Fatalf("CleanUp with nothing stored: %v", err)
	}

	// A later challenge for the same name replaced ours: its answer stays.
	if err := ts.Present(ctx, mine); err != nil {
		t.Fatal(err)
	}
	if err := ts.Present(ctx, theirs); err != nil {
		t.Fatal(err)
	}
	if err := ts.CleanUp(ctx, mine); err != nil {
		t.Fatal(err)
	}
	b, err := ts.Storage.Load(ctx, ts.Key(theirs))
	if err != nil {
		t.Fatalf("the other challenge's token was removed: %v", err)
	}
	var stored acme.Challenge
	if err := json.Unmarshal(b, &stored); err != nil || stored.Token != theirs.Token {
		t.Fatalf("stored token changed: %s (%v)", b, err)
	}

	// Its own CleanUp removes it, and a second one is a no-op.
	for i := range 2 {
		if err := ts.CleanUp(ctx, theirs); err != nil {
			t.Fatalf("CleanUp #%d: %v", i+1, err)
		}
	}
	if ts.Storage.Exists(ctx, ts.Key(theirs)) {
		t.Fatal("token still stored after CleanUp")
	}

	// A file that is not a challenge is not ours to delete.
	if err := ts.Storage.Store(ctx, ts.Key(mine), []byte("not json")); err != nil {
		t.Fatal(err)
	}
	if err := ts.CleanUp(ctx, mine); err != nil {
		t.Fatal(err)
	}
	if !ts.Storage.Exists(ctx, ts.Key(mine)) {
		t.Fatal("CleanUp deleted a file that was not this challenge's")
	}
}

// flakyStorage fails Load or Delete with err.
type flakyStorage struct {
	*certmagic.FileStorage
	loadErr, deleteErr error
}

func (s flakyStorage) Load(ctx context.Context, key string) ([]byte, error) {
	if s.loadErr != nil {
		return nil, s.loadErr
	}
	return s.FileStorage.Load(ctx, key)
}

func (s flakyStorage) Delete(ctx context.Context, key string) error {
	if s.deleteErr != nil {
		return s.deleteErr
	}
	return s.FileStorage.Delete(ctx, key)
}

func TestTokenStoreErrors(t *testing.T) {
	ctx := context.Background()
	good := newChallenge(t, acme.ChallengeTypeHTTP01, "dns", "example.com")
	tests := []struct {
		name       string
		storage    func(fstore *certmagic.FileStorage) certmagic.Storage
		chal       func(acme.Challenge) acme.Challenge
		presentErr string
		cleanUpErr string
	}{
		{
			name:       "no storage",
			storage:    func(*certmagic.FileStorage) certmagic.Storage { return nil },
			presentErr: "no storage configured",
			cleanUpErr: "no storage configured",
		},
		{
			name:       "no token",
			chal:       func(c acme.Challenge) acme.Challenge { c.Token = ""; return c },
			presentErr: "no token",
			cleanUpErr: "no token",
		},
		{
			name:       "no identifier",
			chal:       func(c acme.Challenge) acme.Challenge { c.Identifier = acme.Identifier{}; return c },
			presentErr: "no identifier",
			cleanUpErr: "no identifier",
		},
		{
			name:       "no key authorization",
			chal:       func(c acme.Challenge) acme.Challenge { c.KeyAuthorization = ""; return c },
			presentErr: "no key authorization",
		},
		{
			name: "load fails",
			storage: func(fstore *certmagic.FileStorage) certmagic.Storage {
				return flakyStorage{FileStorage: fstore, loadErr: errors.New("backend down")}
			},
			cleanUpErr: "backend down",
		},
		{
			name: "load says not found",
			storage: func(fstore *certmagic.FileStorage) certmagic.Storage {
				return flakyStorage{FileStorage: fstore, loadErr: fs.ErrNotExist}
			},
		},
		{
			name: "delete fails",
			storage: func(fstore *certmagic.FileStorage) certmagic.Storage {
				return flakyStorage{FileStorage: fstore, deleteErr: io.ErrUnexpectedEOF}
			},
			cleanUpErr: "deleting acme/",
		},
		{
			name: "deleted meanwhile",
			storage: func(fstore *certmagic.FileStorage) certmagic.Storage {
				return flakyStorage{FileStorage: fstore, deleteErr: fs.ErrNotExist}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fstore := &certmagic.FileStorage{Path: t.TempDir()}
			var storage certmagic.Storage = fstore
			if tt.storage != nil {
				storage = tt.storage(fstore)
			}
			c := good
			if tt.chal != nil {
				c = tt.chal(c)
			}
			ts := TokenStore{Storage: storage, IssuerKey: testIssuerKey}
			wantErr(t, ts.Present(ctx, c), tt.presentErr)
			wantErr(t, ts.CleanUp(ctx, c), tt.cleanUpErr)
		})
	}
}
