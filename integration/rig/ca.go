package rig

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/letsencrypt/pebble/v2/ca"
	"github.com/letsencrypt/pebble/v2/db"
	"github.com/letsencrypt/pebble/v2/va"
	"github.com/letsencrypt/pebble/v2/wfe"
)

// File names written into CAOptions.Dir.
const (
	// ServerRootsFileName holds the certificate of the CA's HTTPS server.
	ServerRootsFileName = "pebble-server-roots.pem"
	// IssuerRootsFileName holds the root certificate issued chains lead to.
	IssuerRootsFileName = "pebble-issuer-roots.pem"
)

// Pebble's environment knobs, read in its constructors.
const (
	envVANoSleep      = "PEBBLE_VA_NOSLEEP"
	envVAAlwaysValid  = "PEBBLE_VA_ALWAYS_VALID"
	envNonceReject    = "PEBBLE_WFE_NONCEREJECT"
	envAuthzReuse     = "PEBBLE_AUTHZREUSE"
	pebbleCAAIdentity = "pebble.letsencrypt.org"
)

// pebbleEnvMu serializes StartCA, which sets process environment variables
// for the duration of Pebble's constructors.
var pebbleEnvMu sync.Mutex

// CAOptions configures StartCA.
type CAOptions struct {
	// HTTPPort is the port Pebble's validator connects to for HTTP-01
	// challenges (Caddy's HTTP port in the rig). Required.
	HTTPPort int
	// TLSPort is the port Pebble's validator connects to for TLS-ALPN-01
	// challenges (Caddy's HTTPS port in the rig). Required.
	TLSPort int
	// DNSAddr is the DNS server ("127.0.0.1:<port>", spoken to over TCP)
	// Pebble resolves challenge names with, normally DNS.Addr. Empty means
	// the system resolver.
	DNSAddr string
	// AuthzReuse is the percentage (0–100) of new orders for which Pebble
	// reuses a still valid authorization of the same account and
	// identifier. Default 0, so every order needs fresh challenges.
	AuthzReuse int
	// AlwaysValid makes Pebble's validator accept every challenge without
	// contacting anything.
	AlwaysValid bool
	// CertValidity is the lifetime of issued certificates, rounded down to
	// whole seconds. Zero means Pebble's default.
	CertValidity time.Duration
	// Profiles, when set, replace the single "default" profile: each ACME
	// profile the directory offers, with the validity of the certificates
	// it issues (rounded down to whole seconds; zero means Pebble's
	// default, 90 days). Pebble gives an order that names no profile a
	// random one of them. CertValidity must then be zero.
	Profiles map[string]time.Duration
	// AlternateRoots is how many more roots Pebble makes, each with its own
	// chain to the same issuing key: the certificate of an order is offered
	// with one chain per root, the first as the default and the others as
	// "alternate" links.
	AlternateRoots int
	// ChainLength is the number of intermediates in each chain, at least
	// one (the default).
	ChainLength int
	// RetryAfterAuthz and RetryAfterOrder, when non-zero, make Pebble send
	// a Retry-After header with authorizations whose challenge is being
	// processed and with processing orders (wfe.New's arguments).
	RetryAfterAuthz, RetryAfterOrder int
	// Dir is where ServerRootsFile and IssuerRootsFile are written. Empty
	// means a new temporary directory that Close removes.
	Dir string
	// Log receives Pebble's log. Nil discards it.
	Log io.Writer
}

// CA is an in-process Pebble ACME CA served over HTTPS on 127.0.0.1. Every
// request passes a middleware that counts it (see Count, NewOrders and
// Requests) and may answer it with an injected fault (see SetFault).
type CA struct {
	// DirectoryURL is the URL of the ACME directory.
	DirectoryURL string
	// ServerRootsFile is a PEM file with the certificate of the CA's HTTPS
	// server, for an ACME client's trusted_roots_pem_files.
	ServerRootsFile string
	// IssuerRootsFile is a PEM file with the root certificate that issued
	// chains lead to (the same as IssuerRoots), e.g. for curl --cacert.
	IssuerRootsFile string

	srv         *httptest.Server
	store       *db.MemoryStore
	issuerRoots []*x509.Certificate // the default chain's first
	tempDir     string              // removed on Close; empty when CAOptions.Dir was set

	requests requestLog

	// pebbleOrderLock keeps new-order requests apart from authorization
	// requests (see serveHTTP).
	pebbleOrderLock sync.RWMutex

	closeOnce sync.Once
	closeErr  error
}

// StartCA starts an in-process Pebble with one ECDSA root, one intermediate
// and a single "default" profile, unless opts ask for more roots, longer
// chains or other profiles. Validation runs without Pebble's random
// sleeps, no good nonce is rejected and authorizations are reused only as
// opts.AuthzReuse says. Pebble's knobs are process environment variables
// read while it is constructed: StartCA sets them and restores their previous
// values before it returns, and calls to StartCA are serialized, but nothing
// else may change those variables concurrently.
//
// Pebble's validator keeps a background goroutine that cannot be stopped;
// Close stops everything else.
func StartCA(opts CAOptions) (*CA, error) {
	if opts.HTTPPort <= 0 || opts.TLSPort <= 0 {
		return nil, fmt.Errorf("starting Pebble: HTTPPort (%d) and TLSPort (%d) must be set", opts.HTTPPort, opts.TLSPort)
	}
	if opts.AuthzReuse < 0 || opts.AuthzReuse > 100 {
		return nil, fmt.Errorf("starting Pebble: AuthzReuse %d is not a percentage", opts.AuthzReuse)
	}
	if len(opts.Profiles) > 0 && opts.CertValidity != 0 {
		return nil, errors.New("starting Pebble: CertValidity and Profiles are exclusive: give each profile its validity")
	}
	if opts.AlternateRoots < 0 || opts.ChainLength < 0 {
		return nil, fmt.Errorf("starting Pebble: AlternateRoots (%d) and ChainLength (%d) must not be negative",
			opts.AlternateRoots, opts.ChainLength)
	}
	logOut := opts.Log
	if logOut == nil {
		logOut = io.Discard
	}
	logger := log.New(logOut, "pebble ", log.LstdFlags)

	c := &CA{store: db.NewMemoryStore()}
	dir := opts.Dir
	if dir == "" {
		tmp, err := os.MkdirTemp("", "certflow-rig-pebble-")
		if err != nil {
			return nil, fmt.Errorf("starting Pebble: creating a directory for its roots: %w", err)
		}
		dir, c.tempDir = tmp, tmp
	}

	handler, pebbleCA, err := newPebble(logger, c.store, opts)
	if err != nil {
		return nil, errors.Join(err, c.removeTempDir())
	}
	for i := range pebbleCA.GetNumberOfRootCerts() {
		root := pebbleCA.GetRootCert(i)
		if root == nil || root.Cert == nil {
			return nil, errors.Join(fmt.Errorf("starting Pebble: it has no root certificate %d", i), c.removeTempDir())
		}
		c.issuerRoots = append(c.issuerRoots, root.Cert)
	}
	if len(c.issuerRoots) == 0 {
		return nil, errors.Join(errors.New("starting Pebble: it has no root certificate"), c.removeTempDir())
	}

	// The listener is bound here rather than by httptest, which panics when
	// it cannot listen.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, errors.Join(fmt.Errorf("starting Pebble: listening on 127.0.0.1:0: %w", err), c.removeTempDir())
	}
	c.srv = &httptest.Server{
		Listener: ln,
		Config: &http.Server{
			Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				c.serveHTTP(handler, w, r)
			}),
			ReadHeaderTimeout: 10 * time.Second,
			ErrorLog:          log.New(logOut, "pebble-https ", log.LstdFlags),
		},
	}
	// HTTP/2 as the pebble command serves it (http.Server.ListenAndServeTLS
	// offers h2): clients multiplex their requests on one connection
	c.srv.EnableHTTP2 = true
	c.srv.StartTLS()
	c.DirectoryURL = c.srv.URL + wfe.DirectoryPath

	c.ServerRootsFile = filepath.Join(dir, ServerRootsFileName)
	c.IssuerRootsFile = filepath.Join(dir, IssuerRootsFileName)
	if err := writeCertPEM(c.ServerRootsFile, c.srv.Certificate()); err != nil {
		return nil, errors.Join(err, c.Close())
	}
	if err := writeCertPEM(c.IssuerRootsFile, c.issuerRoots...); err != nil {
		return nil, errors.Join(err, c.Close())
	}
	return c, nil
}

// newPebble constructs Pebble's CA, VA and WFE with the environment knobs
// of opts set, and returns the WFE's ACME handler and the CA.
func newPebble(logger *log.Logger, store *db.MemoryStore, opts CAOptions) (http.Handler, *ca.CAImpl, error) {
	alwaysValid := "0"
	if opts.AlwaysValid {
		alwaysValid = "1"
	}
	pebbleEnvMu.Lock()
	defer pebbleEnvMu.Unlock()
	restore, err := setEnv(map[string]string{
		envVANoSleep:     "1",
		envVAAlwaysValid: alwaysValid,
		envNonceReject:   "0",
		envAuthzReuse:    strconv.Itoa(opts.AuthzReuse),
	})
	if err != nil {
		return nil, nil, fmt.Errorf("starting Pebble: %w", err)
	}
	defer restore()

	profiles := map[string]ca.Profile{"default": {Description: "default", ValidityPeriod: validitySeconds(opts.CertValidity)}}
	if len(opts.Profiles) > 0 {
		profiles = make(map[string]ca.Profile, len(opts.Profiles))
		for name, validity := range opts.Profiles {
			profiles[name] = ca.Profile{Description: name, ValidityPeriod: validitySeconds(validity)}
		}
	}
	pebbleCA := ca.New(logger, store, "", "ecdsa", opts.AlternateRoots, max(opts.ChainLength, 1), profiles)
	pebbleVA := va.New(logger, opts.HTTPPort, opts.TLSPort, false, opts.DNSAddr, store)
	frontEnd := wfe.New(logger, store, pebbleVA, pebbleCA, []string{pebbleCAAIdentity},
		false, false, opts.RetryAfterAuthz, opts.RetryAfterOrder)
	return frontEnd.Handler(), pebbleCA, nil
}

// validitySeconds is a profile's validity as Pebble takes it: whole
// seconds, zero for its default.
func validitySeconds(d time.Duration) uint64 {
	if d <= 0 {
		return 0
	}
	return uint64(d / time.Second)
}

// setEnv sets the variables in vars and returns a function restoring their
// previous values.
func setEnv(vars map[string]string) (restore func(), err error) {
	type prior struct {
		value string
		set   bool
	}
	saved := make(map[string]prior, len(vars))
	restore = func() {
		for k, p := range saved {
			if p.set {
				_ = os.Setenv(k, p.value)
			} else {
				_ = os.Unsetenv(k)
			}
		}
	}
	for k, v := range vars {
		old, set := os.LookupEnv(k)
		saved[k] = prior{old, set}
		if err := os.Setenv(k, v); err != nil {
			restore()
			return nil, fmt.Errorf("setting %s: %w", k, err)
		}
	}
	return restore, nil
}

// writeCertPEM writes certs as a PEM file at path.
func writeCertPEM(path string, certs ...*x509.Certificate) error {
	var data []byte
	for _, cert := range certs {
		data = append(data, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})...)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return fmt.Errorf("writing certificate %s: %w", path, err)
	}
	return nil
}

// IssuerRoots returns a pool holding Pebble's issuing roots (one, unless
// CAOptions.AlternateRoots asked for more), to verify the chains of
// certificates it issued.
func (c *CA) IssuerRoots() *x509.CertPool {
	pool := x509.NewCertPool()
	for _, root := range c.issuerRoots {
		pool.AddCert(root)
	}
	return pool
}

// Roots returns Pebble's root certificates: the default chain's first, then
// one per alternate root.
func (c *CA) Roots() []*x509.Certificate {
	return append([]*x509.Certificate(nil), c.issuerRoots...)
}

// OfferedChains returns the chains (PEM, leaf first, without the root) with
// which Pebble offers the certificate whose leaf is leaf: the default chain
// first, then the alternates, in the order of Roots.
func (c *CA) OfferedChains(leaf *x509.Certificate) ([][]byte, error) {
	cert := c.store.GetCertificateByDER(leaf.Raw)
	if cert == nil {
		return nil, fmt.Errorf("Pebble did not issue the certificate with serial %s", leaf.SerialNumber)
	}
	chains := make([][]byte, len(cert.IssuerChains))
	for i := range chains {
		chains[i] = cert.Chain(i)
	}
	return chains, nil
}

// ServerRoots returns a pool holding the certificate of the CA's HTTPS
// server, to talk to the ACME API directly.
func (c *CA) ServerRoots() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(c.srv.Certificate())
	return pool
}

// HTTPClient returns an HTTP client that trusts the CA's HTTPS server.
func (c *CA) HTTPClient() *http.Client {
	return c.srv.Client()
}

// BlockDomain makes Pebble refuse orders for name and its subdomains.
func (c *CA) BlockDomain(name string) error {
	if err := c.store.AddBlockedDomain(name); err != nil {
		return fmt.Errorf("blocking domain %q in Pebble: %w", name, err)
	}
	return nil
}

// AuthzStatus returns the status Pebble holds for the authorization with
// the given ID ("pending", "valid", "invalid", ...), "" when it has none:
// "pending" becomes another once its validator has recorded a result.
func (c *CA) AuthzStatus(id string) string {
	authz := c.store.GetAuthorizationByID(id)
	if authz == nil {
		return ""
	}
	authz.RLock()
	defer authz.RUnlock()
	return authz.Status
}

// Close stops the CA's HTTPS server (waiting for requests in flight) and
// removes the temporary directory it created, if any. Calling it again is a
// no-op returning the first call's result.
func (c *CA) Close() error {
	c.closeOnce.Do(func() {
		c.srv.Close()
		c.closeErr = c.removeTempDir()
	})
	return c.closeErr
}

// removeTempDir removes the directory StartCA created for the PEM files.
func (c *CA) removeTempDir() error {
	if c.tempDir == "" {
		return nil
	}
	if err := os.RemoveAll(c.tempDir); err != nil {
		return fmt.Errorf("removing Pebble's directory %s: %w", c.tempDir, err)
	}
	return nil
}
