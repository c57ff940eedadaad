package issuer

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/mholt/acmez/v3/acme"
)

// newACMEClient builds the low-level acmez client shared by every request to
// one CA with one account: one HTTP transport (connections and the nonce pool
// are reused) and the CA's Retry-After captured per call. acmez's own
// fixed-interval finalize polling is only a fallback (see finalizeAndWait).
func newACMEClient(cfg AccountConfig) (*acme.Client, error) {
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
		timeout = 30 * time.Second
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
	return &acme.Client{
		Directory:  cfg.CA,
		HTTPClient: &http.Client{Transport: retryAfterTransport{transport}, Timeout: timeout},
		UserAgent:  "certflow",
		// acmez's own fixed-interval polling of a processing order is
		// only the polite fallback: finalizeAndWait polls faster, with
		// backoff, and ends acmez's wait
		PollInterval: time.Second,
		PollTimeout:  2 * time.Minute,
	}, nil
}

// responseNote carries what acmez drops from a CA response: the Retry-After
// header. It rides in the request's context.
type responseNote struct {
	mu         sync.Mutex
	retryAfter time.Duration
	status     int
}

type responseNoteKey struct{}

// answered is closed when the CA has answered a request to url; it rides
// in the request's context. finalizeAndWait uses it to poll the order only
// once the finalize request has been answered.
type answered struct {
	url  string
	ch   chan struct{}
	once sync.Once
}

type answeredKey struct{}

// observerKey carries the request's Observer to the transport, which is
// shared by every policy using the account.
type observerKey struct{}

func withResponseNote(ctx context.Context) (context.Context, *responseNote) {
	n := new(responseNote)
	return context.WithValue(ctx, responseNoteKey{}, n), n
}

func (n *responseNote) get() (time.Duration, int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.retryAfter, n.status
}

// retryAfterTransport records the Retry-After of every CA response into the
// responseNote of the request's context, if there is one.
type retryAfterTransport struct{ next http.RoundTripper }

func (t retryAfterTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	start := time.Now()
	resp, err := t.next.RoundTrip(req)
	if obs, ok := req.Context().Value(observerKey{}).(Observer); ok {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		obs.CAResponded(status, time.Since(start))
	}
	if err != nil {
		return resp, err
	}
	if a, ok := req.Context().Value(answeredKey{}).(*answered); ok && req.URL.String() == a.url {
		a.once.Do(func() { close(a.ch) })
	}
	if n, ok := req.Context().Value(responseNoteKey{}).(*responseNote); ok {
		d := parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
		n.mu.Lock()
		n.retryAfter, n.status = d, resp.StatusCode
		n.mu.Unlock()
	}
	return resp, nil
}

// parseRetryAfter reads a Retry-After value: seconds or an HTTP date.
func parseRetryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if secs, err := strconv.Atoi(v); err == nil && secs >= 0 {
		return time.Duration(secs) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// isFinalError decides "fail for good" versus "retry later" for an error of
// a CA call: the CA refusing the request (a 4xx problem other than rate
// limiting and bad nonces) is final; network errors, 5xx, 429 and timeouts
// of one request are transient.
func isFinalError(err error) bool {
	var prob acme.Problem
	if errors.As(err, &prob) {
		switch {
		case prob.Status == http.StatusTooManyRequests, prob.Type == acme.ProblemTypeRateLimited:
			return false
		case prob.Type == acme.ProblemTypeBadNonce:
			return false
		case prob.Status >= 500:
			return false
		case prob.Status >= 400:
			return true
		}
	}
	return false
}

// problemDetail is the CA's own words for an error, if it is an ACME problem.
func problemDetail(err error) string {
	var prob acme.Problem
	if errors.As(err, &prob) {
		if prob.Detail != "" {
			return prob.Detail
		}
		return prob.Type
	}
	return err.Error()
}

// RateLimitedError is a 429 from the CA, with the time it said to wait for.
type RateLimitedError struct {
	Until time.Time
	Err   error
}

func (e *RateLimitedError) Error() string {
	return fmt.Sprintf("rate limited by the CA until %s: %v", e.Until.UTC().Format(time.RFC3339), e.Err)
}

func (e *RateLimitedError) Unwrap() error { return e.Err }

// defaultRateLimitWait is assumed when a 429 carries no Retry-After.
const defaultRateLimitWait = time.Minute

func isRateLimited(err error) bool {
	var prob acme.Problem
	return errors.As(err, &prob) && (prob.Status == http.StatusTooManyRequests || prob.Type == acme.ProblemTypeRateLimited)
}

// callCA runs one CA request, retrying transient failures with capped,
// jittered exponential backoff (or the CA's Retry-After when it gives one),
// at most 4 times and never past ctx.
func callCA(ctx context.Context, step string, fn func(ctx context.Context) error) error {
	return callCAWith(ctx, step, true, fn)
}

// callCANoWaitOn429 is callCA, except that a 429 is returned at once as a
// *RateLimitedError, so the caller can hold back every request of its kind.
func callCANoWaitOn429(ctx context.Context, step string, fn func(ctx context.Context) error) error {
	return callCAWith(ctx, step, false, fn)
}

func callCAWith(ctx context.Context, step string, wait429 bool, fn func(ctx context.Context) error) error {
	const attempts = 4
	wait := 100 * time.Millisecond
	var err error
	for i := 0; i < attempts; i++ {
		callCtx, note := withResponseNote(ctx)
		if err = fn(callCtx); err == nil {
			return nil
		}
		retryAfter, _ := note.get()
		if isRateLimited(err) && !wait429 {
			if retryAfter <= 0 {
				retryAfter = defaultRateLimitWait
			}
			return fmt.Errorf("%s: %w", step, &RateLimitedError{Until: time.Now().Add(retryAfter), Err: err})
		}
		if isFinalError(err) || ctx.Err() != nil || i == attempts-1 {
			break
		}
		d := wait + rand.N(wait/2)
		if retryAfter > 0 {
			d = retryAfter
		}
		if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) < d {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w (while waiting to retry after: %w)", step, ctx.Err(), err)
		case <-time.After(d):
		}
		wait = min(wait*2, 5*time.Second)
	}
	return fmt.Errorf("%s: %w", step, err)
}

// pollWait returns how long to wait before poll number n (0-based): start
// within milliseconds and double up to a cap, unless the CA said otherwise.
func pollWait(n int, retryAfter time.Duration) time.Duration {
	return pollWaitFrom(minPollStep, n, retryAfter)
}

// minPollStep is the first gap between polls.
const minPollStep = 2 * time.Millisecond

// pollWaitFrom is pollWait with a first gap of step.
func pollWaitFrom(step time.Duration, n int, retryAfter time.Duration) time.Duration {
	if retryAfter > 0 {
		return retryAfter
	}
	d := max(step, minPollStep) << min(n, 10)
	return min(d, time.Second)
}
