package issuer

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/mholt/acmez/v3/acme"
)

// CA is the ACME server as the workflow uses it: one method per request
// the workflow makes, grouped by the ACME resource each concerns, one file
// per resource (ca_account.go, ca_order.go, ca_authorization.go,
// ca_challenge.go, ca_certificate.go, ca_renewalinfo.go). acmeCA, over
// acmez's low-level client, is the implementation certflow runs with;
// tests of the workflow's branches use a fake.
//
// Every method:
//   - MUST return once ctx is done;
//   - MUST return a refusal of the CA as an error for which
//     errors.As(err, new(acme.Problem)) holds, with the HTTP status in
//     Problem.Status;
//   - SHOULD report every HTTP response it gets (and every request that
//     got none) with reportResponse(ctx, …), so the call learns the status
//     and Retry-After (acmez drops both) and the circuit breaker sees the
//     CA's health;
//   - MUST NOT send a request while ctx's call is refused by the circuit
//     breaker (refusedByBreaker(ctx) reports it).
type CA interface {
	// Directory returns the CA's directory (its profiles, whether it
	// offers renewal information).
	Directory(ctx context.Context) (acme.Directory, error)

	AccountCA
	OrderCA
	AuthorizationCA
	ChallengeCA
	CertificateCA
	RenewalInfoCA
}

// acmeCA is the CA reached with acmez's low-level client: one HTTP
// transport (connections and the nonce pool are shared by every request of
// the account) and the transport of ca_transport.go, which reports every
// response to its call. acmez's own fixed-interval finalize polling is only
// a fallback (see finalizeAndWait).
type acmeCA struct {
	client *acme.Client
}

// newACMECA builds the client for cfg's CA.
func newACMECA(cfg AccountConfig) (*acmeCA, error) {
	tlsConfig := &tls.Config{MinVersion: tls.VersionTLS12}
	if len(cfg.TrustedRootsPEMFiles) > 0 {
		pool := x509.NewCertPool()
		for _, f := range cfg.TrustedRootsPEMFiles {
			pem, err := os.ReadFile(f)
			if err != nil {
				return nil, fmt.Errorf("reading trusted roots %s: %w", f, err)
			}
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("trusted roots %s: no PEM certificate found", f)
			}
		}
		tlsConfig.RootCAs = pool
	}
	timeout := cfg.RequestTimeout
	if timeout <= 0 {
		timeout = DefaultRequestTimeout
	}
	proxy := cfg.Proxy
	if proxy == nil {
		proxy = http.ProxyFromEnvironment
	}
	transport := &http.Transport{
		Proxy:                 proxy,
		DialContext:           (&net.Dialer{Timeout: 15 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:       tlsConfig,
		TLSHandshakeTimeout:   15 * time.Second,
		ResponseHeaderTimeout: timeout,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		ForceAttemptHTTP2:     true,
	}
	return &acmeCA{client: &acme.Client{
		Directory:  cfg.CA,
		HTTPClient: &http.Client{Transport: reportingTransport{transport}, Timeout: timeout},
		UserAgent:  "certflow",
		// acmez's own fixed-interval polling of a processing order is
		// only the polite fallback: finalizeAndWait polls faster, with
		// backoff, and ends acmez's wait
		PollInterval: time.Second,
		PollTimeout:  2 * time.Minute,
	}}, nil
}

// DefaultRequestTimeout bounds each HTTP request to the CA.
const DefaultRequestTimeout = 30 * time.Second

func (c *acmeCA) Directory(ctx context.Context) (acme.Directory, error) {
	return c.client.GetDirectory(ctx)
}

var _ CA = (*acmeCA)(nil)
