package solvers

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/mholt/acmez/v3/acme"
)

const (
	// maxRedirects is how many redirects the self-check follows, as
	// Let's Encrypt's validation authority does.
	maxRedirects = 10

	// maxHTTP01Body bounds how much of the response is read; a key
	// authorization is under 200 bytes.
	maxHTTP01Body = 8 << 10

	selfCheckUserAgent = "certflow self-check (+https://github.com/certflow/certflow)"
)

// HTTP01 solves http-01 challenges. Caddy serves the key authorization from
// storage (through the issuer's GetACMEIssuer), on any instance sharing it.
type HTTP01 struct {
	cfg    Config
	tokens TokenStore
	client *http.Client
}

var (
	_ Solver      = (*HTTP01)(nil)
	_ TokenKeeper = (*HTTP01)(nil)
)

// NewHTTP01 returns an HTTP-01 solver for cfg. Its HTTP client is reused by
// every self-check; keep-alives are off so that each check, like the CA's,
// resolves the name and opens a fresh connection, and no sockets linger.
func NewHTTP01(cfg Config) *HTTP01 {
	s := &HTTP01{
		cfg:    cfg,
		tokens: TokenStore{Storage: cfg.Storage, IssuerKey: cfg.IssuerKey},
	}
	s.client = &http.Client{
		Transport: &http.Transport{
			Proxy:             nil, // the CA connects directly, whatever HTTP_PROXY says
			DialContext:       newDialer(cfg.Resolvers).DialContext,
			DisableKeepAlives: true,
			// The CA follows redirects to HTTPS without validating the
			// certificate (RFC 8555 §8.3 leaves it to the server; Let's
			// Encrypt does not validate).
			TLSClientConfig:        &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // see above
			DisableCompression:     true,
			MaxResponseHeaderBytes: 64 << 10,
		},
		CheckRedirect: s.checkRedirect,
	}
	return s
}

// Present writes the challenge token to storage. It returns no memo:
// CleanUp needs only the challenge.
func (s *HTTP01) Present(ctx context.Context, chal acme.Challenge) (json.RawMessage, error) {
	return nil, s.tokens.Present(ctx, chal)
}

// CleanUp deletes the token if it is still this challenge's.
func (s *HTTP01) CleanUp(ctx context.Context, chal acme.Challenge, _ json.RawMessage) error {
	return s.tokens.CleanUp(ctx, chal)
}

// CleanUpOwned deletes the token without reading it (TokenKeeper).
func (s *HTTP01) CleanUpOwned(ctx context.Context, chal acme.Challenge) error {
	return s.tokens.CleanUpOwned(ctx, chal)
}

// RemoveStale deletes the identifier's token file (TokenKeeper).
func (s *HTTP01) RemoveStale(ctx context.Context, id acme.Identifier) error {
	return s.tokens.RemoveStale(ctx, acme.Challenge{Type: acme.ChallengeTypeHTTP01, Identifier: id, Token: "stale"})
}

// TokenDir is the folder of the token files (TokenKeeper).
func (s *HTTP01) TokenDir() string { return s.tokens.Dir() }

// SelfCheck fetches http://<name>:<port>/.well-known/acme-challenge/<token>
// as the CA will and compares the body, trimmed of white space, with the key
// authorization. The error never contains the key authorization.
func (s *HTTP01) SelfCheck(ctx context.Context, chal acme.Challenge) error {
	host, err := http01Host(chal)
	if err != nil {
		return fmt.Errorf("http-01 self-check: %w", err)
	}
	port := s.cfg.httpPort()
	target := "http://" + net.JoinHostPort(host, strconv.Itoa(port)) + chal.HTTP01ResourcePath()
	fail := func(final string, err error) error {
		err = stableError(err)
		if final != "" && final != target {
			return fmt.Errorf("http-01 self-check: GET %s (redirected to %s): %w", target, final, err)
		}
		return fmt.Errorf("http-01 self-check: GET %s: %w", target, err)
	}

	ctx, cancel := context.WithTimeout(ctx, s.cfg.attemptTimeout())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return fail("", err)
	}
	// Send the Host header the CA sends: no port for port 80, and the
	// port otherwise (as Pebble does on its test ports).
	if port == defaultHTTPPort {
		req.Host = hostHeader(host)
	}
	req.Header.Set("User-Agent", selfCheckUserAgent)
	req.Header.Set("Accept", "*/*")

	resp, err := s.client.Do(req)
	if err != nil {
		var urlErr *url.Error
		var redirErr redirectError
		switch {
		case errors.As(err, &redirErr):
			return fail("", redirErr)
		case errors.As(err, &urlErr):
			return fail(urlErr.URL, urlErr.Err)
		}
		return fail("", err)
	}
	defer resp.Body.Close()
	final := resp.Request.URL.String()
	if resp.StatusCode != http.StatusOK {
		return fail(final, fmt.Errorf("status %d", resp.StatusCode))
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxHTTP01Body+1))
	if err != nil {
		return fail(final, fmt.Errorf("reading body: %w", err))
	}
	got := strings.TrimSpace(string(body))
	if got != chal.KeyAuthorization {
		if strings.HasPrefix(got, chal.Token+".") {
			return fail(final, errors.New("body does not match the key authorization (right token, other account key)"))
		}
		return fail(final, errors.New("body does not match the key authorization"))
	}
	return nil
}

// checkRedirect follows at most maxRedirects redirects, to http or https on
// port 80 or 443 only, as the CA does. Those ports are mapped to the
// configured ones, which stand for them (a port forward, a test CA).
func (s *HTTP01) checkRedirect(req *http.Request, via []*http.Request) error {
	u := req.URL
	if len(via) >= maxRedirects {
		return redirectError{fmt.Errorf("stopped after %d redirects (the last to %s)", maxRedirects, u.Redacted())}
	}
	httpPort, tlsPort := strconv.Itoa(s.cfg.httpPort()), strconv.Itoa(s.cfg.tlsALPNPort())
	var port string
	switch p := u.Port(); {
	case u.Scheme != "http" && u.Scheme != "https":
		return redirectError{fmt.Errorf("redirect to %s: scheme %q is not http or https", u.Redacted(), u.Scheme)}
	case u.Hostname() == "":
		return redirectError{fmt.Errorf("redirect to %s: no host", u.Redacted())}
	case p == "" && u.Scheme == "http", p == "80":
		port = httpPort
	case p == "" && u.Scheme == "https", p == "443":
		port = tlsPort
	case p == httpPort || p == tlsPort:
		// A relative redirect keeps the configured port of the request.
		port = p
	default:
		return redirectError{fmt.Errorf("redirect to %s: port %s is not 80 or 443", u.Redacted(), p)}
	}
	// The Host header the CA would send: the redirect's host, without a
	// default port.
	req.Host = u.Host
	if p := u.Port(); (u.Scheme == "http" && p == "80") || (u.Scheme == "https" && p == "443") {
		req.Host = hostHeader(u.Hostname())
	}
	u.Host = net.JoinHostPort(u.Hostname(), port)
	return nil
}

// redirectError is a redirect the self-check refused; its text names the
// redirect's target already.
type redirectError struct{ err error }

func (e redirectError) Error() string { return e.err.Error() }
func (e redirectError) Unwrap() error { return e.err }

// http01Host returns the host to put in the URL, refusing identifiers that
// could change the URL's meaning.
func http01Host(chal acme.Challenge) (string, error) {
	if chal.KeyAuthorization == "" {
		return "", errors.New("challenge has no key authorization")
	}
	if !isBase64URL(chal.Token) {
		return "", errors.New("challenge token is empty or not base64url")
	}
	name := chal.Identifier.Value
	switch chal.Identifier.Type {
	case "ip":
		ip := net.ParseIP(name)
		if ip == nil {
			return "", fmt.Errorf("invalid ip identifier %q", name)
		}
		return ip.String(), nil
	case "dns", "":
		if !isHostname(name) {
			return "", fmt.Errorf("invalid dns identifier %q", name)
		}
		return name, nil
	default:
		return "", fmt.Errorf("unsupported identifier type %q", chal.Identifier.Type)
	}
}

// hostHeader brackets an IPv6 address, as a Host header requires.
func hostHeader(host string) string {
	if strings.Contains(host, ":") {
		return "[" + host + "]"
	}
	return host
}

// isHostname reports whether name is a plausible DNS name (ASCII; the CA
// sends IDNs in punycode).
func isHostname(name string) bool {
	if name == "" || len(name) > 253 {
		return false
	}
	for _, c := range name {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '.', c == '_':
		default:
			return false
		}
	}
	return true
}

// isBase64URL reports whether s is non-empty and uses only the base64url
// alphabet, as RFC 8555 §8.1 requires of tokens.
func isBase64URL(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
		default:
			return false
		}
	}
	return true
}
