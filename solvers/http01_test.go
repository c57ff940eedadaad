package solvers

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"
)

// http01Server answers the challenge path according to mode and records
// the Host headers it saw.
type http01Server struct {
	*httptest.Server
	mu    sync.Mutex
	hosts []string
}

func startHTTP01(t *testing.T, c acme.Challenge, mode string) *http01Server {
	t.Helper()
	s := new(http01Server)
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.hosts = append(s.hosts, r.Host)
		s.mu.Unlock()
		port := strconv.Itoa(portOf(t, s.Listener.Addr().String()))
		switch {
		case r.URL.Path == "/answer":
			fmt.Fprint(w, c.KeyAuthorization)
		case r.URL.Path == "/loop":
			http.Redirect(w, r, "/loop", http.StatusFound)
		case r.URL.Path != c.HTTP01ResourcePath():
			http.NotFound(w, r)
		case mode == "ok":
			fmt.Fprint(w, c.KeyAuthorization)
		case mode == "whitespace":
			fmt.Fprint(w, "\r\n  "+c.KeyAuthorization+"\n\n")
		case mode == "404":
			http.NotFound(w, r)
		case mode == "wrong body":
			fmt.Fprint(w, "hello world")
		case mode == "other account":
			fmt.Fprint(w, c.Token+".someone-else")
		case mode == "relative redirect":
			http.Redirect(w, r, "/answer", http.StatusFound)
		case mode == "absolute redirect without port":
			// Port 80 stands for the configured HTTP port.
			http.Redirect(w, r, "http://example.test/answer", http.StatusMovedPermanently)
		case mode == "absolute redirect with port":
			http.Redirect(w, r, "http://example.test:"+port+"/answer", http.StatusTemporaryRedirect)
		case mode == "redirect loop":
			http.Redirect(w, r, "/loop", http.StatusFound)
		case mode == "redirect to other port":
			http.Redirect(w, r, "http://example.test:8443/answer", http.StatusFound)
		case mode == "redirect to ftp":
			http.Redirect(w, r, "ftp://example.test/answer", http.StatusFound)
		case mode == "hang":
			<-r.Context().Done()
		default:
			t.Errorf("unknown mode %q", mode)
		}
	}))
	t.Cleanup(s.Close)
	return s
}

func TestHTTP01SelfCheck(t *testing.T) {
	dns := startDNS(t)
	tests := []struct {
		name      string
		idType    string
		id        string
		mode      string
		resolvers func() []string
		port      func(srv int) int // default: the server's port
		timeout   time.Duration
		want      string // "" means pass; else a substring of the error
		wantHost  string // Host header the server must see ("" = not checked); PORT is replaced
	}{
		{name: "pass, ip identifier", idType: "ip", id: "127.0.0.1", mode: "ok", wantHost: "127.0.0.1:PORT"},
		{name: "pass, name through resolver", id: "example.test", mode: "ok", resolvers: oneResolver(dns), wantHost: "example.test:PORT"},
		{name: "pass, localhost through system resolver", id: "localhost", mode: "ok"},
		{name: "pass, body with white space", idType: "ip", id: "127.0.0.1", mode: "whitespace"},
		{name: "pass, relative redirect", id: "example.test", mode: "relative redirect", resolvers: oneResolver(dns)},
		{name: "pass, redirect to port 80 maps to http port", id: "example.test", mode: "absolute redirect without port", resolvers: oneResolver(dns)},
		{name: "pass, redirect to the http port", id: "example.test", mode: "absolute redirect with port", resolvers: oneResolver(dns)},
		{
			name: "pass, dead resolver then a good one", id: "example.test", mode: "ok",
			resolvers: func() []string { return []string{deadUDPAddr(t), dns.addr} },
		},
		{
			name: "404", idType: "ip", id: "127.0.0.1", mode: "404",
			want: "http-01 self-check: GET http://127.0.0.1:PORT/.well-known/acme-challenge/TOKEN: status 404",
		},
		{
			name: "wrong body", idType: "ip", id: "127.0.0.1", mode: "wrong body",
			want: "GET http://127.0.0.1:PORT/.well-known/acme-challenge/TOKEN: body does not match the key authorization",
		},
		{name: "answer for another account", idType: "ip", id: "127.0.0.1", mode: "other account", want: "right token, other account key"},
		{
			name: "connection refused", idType: "ip", id: "127.0.0.1", mode: "ok",
			port: func(int) int { return closedPort(t) },
			want: "dial tcp 127.0.0.1:PORT: connect: connection refused",
		},
		{
			name: "connection refused, name through resolver", id: "example.test", mode: "ok", resolvers: oneResolver(dns),
			port: func(int) int { return closedPort(t) },
			want: "GET http://example.test:PORT/.well-known/acme-challenge/TOKEN: dial tcp 127.0.0.1:PORT: connect: connection refused",
		},
		{
			name: "too many redirects", id: "example.test", mode: "redirect loop", resolvers: oneResolver(dns),
			want: "GET http://example.test:PORT/.well-known/acme-challenge/TOKEN: stopped after 10 redirects (the last to http://example.test:PORT/loop)",
		},
		{name: "redirect to a port the CA refuses", id: "example.test", mode: "redirect to other port", resolvers: oneResolver(dns), want: "port 8443 is not 80 or 443"},
		{name: "redirect to another scheme", id: "example.test", mode: "redirect to ftp", resolvers: oneResolver(dns), want: `scheme "ftp" is not http or https`},
		{
			name: "no such host", id: "nx.example.test", mode: "ok", resolvers: oneResolver(dns),
			want: "lookup nx.example.test via " + dns.addr + ": no such host",
		},
		{
			name: "every resolver fails", id: "example.test", mode: "ok",
			resolvers: func() []string { return []string{deadUDPAddr(t), deadUDPAddr(t)} },
			want:      "lookup example.test via 127.0.0.1:",
		},
		{name: "attempt timeout", idType: "ip", id: "127.0.0.1", mode: "hang", timeout: 200 * time.Millisecond, want: "context deadline exceeded"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			idType := tt.idType
			if idType == "" {
				idType = "dns"
			}
			c := newChallenge(t, acme.ChallengeTypeHTTP01, idType, tt.id)
			srv := startHTTP01(t, c, tt.mode)
			port := portOf(t, srv.Listener.Addr().String())
			if tt.port != nil {
				port = tt.port(port)
			}
			cfg := Config{HTTPPort: port, AttemptTimeout: tt.timeout}
			if tt.resolvers != nil {
				cfg.Resolvers = tt.resolvers()
			}
			if cfg.AttemptTimeout == 0 {
				cfg.AttemptTimeout = 5 * time.Second
			}

			err := NewHTTP01(cfg).SelfCheck(context.Background(), c)
			if err != nil {
				t.Logf("reason: %v", err)
			}
			assertNoSecret(t, err, c)
			want := strings.NewReplacer("PORT", strconv.Itoa(port), "TOKEN", c.Token).Replace(tt.want)
			wantErr(t, err, want)
			if tt.wantHost != "" {
				wantHost := strings.ReplaceAll(tt.wantHost, "PORT", strconv.Itoa(port))
				srv.mu.Lock()
				defer srv.mu.Unlock()
				if len(srv.hosts) == 0 || srv.hosts[0] != wantHost {
					t.Errorf("server saw Host %q, want %q", srv.hosts, wantHost)
				}
			}
		})
	}
	t.Cleanup(func() {
		if dns.queries.Load() == 0 {
			t.Error("the configured resolver was never asked")
		}
	})
}

func oneResolver(d *testDNS) func() []string {
	return func() []string { return []string{d.addr} }
}

// TestHTTP01IgnoresProxyEnv checks that the self-check connects directly,
// like the CA, even when the environment names a proxy.
func TestHTTP01IgnoresProxyEnv(t *testing.T) {
	dead := "http://127.0.0.1:" + strconv.Itoa(closedPort(t))
	t.Setenv("HTTP_PROXY", dead)
	t.Setenv("http_proxy", dead)
	t.Setenv("NO_PROXY", "")
	t.Setenv("no_proxy", "")
	dns := startDNS(t)
	c := newChallenge(t, acme.ChallengeTypeHTTP01, "dns", "example.test")
	srv := startHTTP01(t, c, "ok")
	s := NewHTTP01(Config{Resolvers: []string{dns.addr}, HTTPPort: portOf(t, srv.Listener.Addr().String())})
	if err := s.SelfCheck(context.Background(), c); err != nil {
		t.Fatal(err)
	}
}

func TestHTTP01SelfCheckContextCanceled(t *testing.T) {
	c := newChallenge(t, acme.ChallengeTypeHTTP01, "ip", "127.0.0.1")
	srv := startHTTP01(t, c, "hang")
	s := NewHTTP01(Config{HTTPPort: portOf(t, srv.Listener.Addr().String()), AttemptTimeout: time.Minute})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := s.SelfCheck(ctx, c)
	wantErr(t, err, "context deadline exceeded")
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("SelfCheck returned %v after ctx was done", d)
	}
}

func TestHTTP01BadInput(t *testing.T) {
	good := newChallenge(t, acme.ChallengeTypeHTTP01, "dns", "example.test")
	tests := []struct {
		name string
		edit func(*acme.Challenge)
		want string
	}{
		{"no key authorization", func(c *acme.Challenge) { c.KeyAuthorization = "" }, "no key authorization"},
		{"no token", func(c *acme.Challenge) { c.Token = "" }, "not base64url"},
		{"token with a path", func(c *acme.Challenge) { c.Token = "../../etc/passwd" }, "not base64url"},
		{"name with a slash", func(c *acme.Challenge) { c.Identifier.Value = "example.test/x" }, "invalid dns identifier"},
		{"name with userinfo", func(c *acme.Challenge) { c.Identifier.Value = "user@example.test" }, "invalid dns identifier"},
		{"empty name", func(c *acme.Challenge) { c.Identifier.Value = "" }, "invalid dns identifier"},
		{"bad ip", func(c *acme.Challenge) { c.Identifier = acme.Identifier{Type: "ip", Value: "300.1.1.1"} }, "invalid ip identifier"},
		{"unknown identifier type", func(c *acme.Challenge) { c.Identifier.Type = "email" }, `unsupported identifier type "email"`},
	}
	s := NewHTTP01(Config{HTTPPort: closedPort(t)})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := good
			tt.edit(&c)
			err := s.SelfCheck(context.Background(), c)
			wantErr(t, err, tt.want)
			if !strings.HasPrefix(err.Error(), "http-01 self-check: ") {
				t.Errorf("error %q lacks the step", err)
			}
			assertNoSecret(t, err, good)
		})
	}
}

// TestHTTP01ServedByCertmagic runs the whole path: Present writes the token,
// certmagic's distributed handler serves it, SelfCheck sees it, CleanUp
// removes it and SelfCheck then fails.
func TestHTTP01ServedByCertmagic(t *testing.T) {
	ctx := context.Background()
	dns := startDNS(t)
	storage := &certmagic.FileStorage{Path: t.TempDir()}
	magic := newMagic(t, storage, testIssuerKey)
	am := certmagic.NewACMEIssuer(magic, certmagic.ACMEIssuer{CA: "https://ca.invalid/directory", Logger: zap.NewNop()})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !am.HandleHTTPChallenge(w, r) {
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()

	s := NewHTTP01(Config{
		Storage:   storage,
		IssuerKey: testIssuerKey,
		Resolvers: []string{dns.addr},
		HTTPPort:  portOf(t, srv.Listener.Addr().String()),
	})
	for _, id := range []acme.Identifier{{Type: "dns", Value: "example.test"}, {Type: "ip", Value: "127.0.0.1"}} {
		t.Run(id.Value, func(t *testing.T) {
			c := newChallenge(t, acme.ChallengeTypeHTTP01, id.Type, id.Value)
			memo, err := s.Present(ctx, c)
			if err != nil || memo != nil {
				t.Fatalf("Present = %s, %v; want nil, nil", memo, err)
			}
			if err := s.SelfCheck(ctx, c); err != nil {
				t.Fatalf("SelfCheck after Present: %v", err)
			}
			if err := s.CleanUp(ctx, c, memo); err != nil {
				t.Fatal(err)
			}
			wantErr(t, s.SelfCheck(ctx, c), "status 404")
		})
	}
}
