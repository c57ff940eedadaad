package issuer

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"
)

// reportingTransport sends the HTTP requests of a CA call unless the
// circuit breaker refuses them, and reports every response (or its
// absence) to the call: acmez retries inside one call (bad nonces, network
// errors, a 5xx) and drops the responses' status and Retry-After, which the
// workflow needs.
type reportingTransport struct{ next http.RoundTripper }

func (t reportingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	if err := refusedByBreaker(ctx); err != nil {
		return nil, err
	}
	start := time.Now()
	resp, err := t.next.RoundTrip(req)
	var status int
	var header http.Header
	if resp != nil {
		status, header = resp.StatusCode, resp.Header
	}
	reportResponse(ctx, req.URL.String(), status, header, err, time.Since(start))
	return resp, err
}

// refusedByBreaker returns the breaker's refusal when ctx's CA call may not
// send a request now (the circuit opened and it is not the probe).
func refusedByBreaker(ctx context.Context) error {
	call := callOf(ctx)
	if call == nil || call.breaker == nil || call.breaker.allows(call.probe) {
		return nil
	}
	_, err := call.breaker.admit() // the refusal, with the breaker's state
	if err == nil {
		// the circuit half-opened meanwhile and this call became its
		// probe: let it go
		call.probe = true
		return nil
	}
	return err
}

// reportResponse tells ctx's CA call about one HTTP response: its status
// and header (status 0 and err when none came). Implementations of CA call
// it for every request.
func reportResponse(ctx context.Context, url string, status int, header http.Header, err error, took time.Duration) {
	call := callOf(ctx)
	if call == nil {
		return
	}
	if call.observer != nil {
		call.observer.CAResponded(status, took)
	}
	if err != nil {
		if ctx.Err() != nil || errors.Is(err, ErrCircuitOpen) {
			return // cut off by its caller, or never sent: says nothing of the CA
		}
		if call.breaker != nil {
			call.breaker.failed(err.Error(), 0)
		}
		return
	}
	retryAfter := parseRetryAfter(header.Get("Retry-After"), time.Now())
	call.noteResponse(url, status, retryAfter)
	if call.breaker == nil {
		return
	}
	if status >= 500 {
		call.breaker.failed("HTTP "+strconv.Itoa(status)+" from "+url, retryAfter)
	} else {
		call.breaker.succeeded()
	}
}

// MaxRetryAfter caps the Retry-After certflow honours, for a value too large
// to represent or a date decades away: a hold still ends.
const MaxRetryAfter = 7 * 24 * time.Hour

// parseRetryAfter reads a Retry-After value: seconds or an HTTP date. A
// number too large to represent is MaxRetryAfter, not zero: a rate limit
// with an absurd Retry-After is still a rate limit.
func parseRetryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if isDigits(v) {
		secs, err := strconv.ParseInt(v, 10, 64)
		if err != nil || secs > int64(MaxRetryAfter/time.Second) {
			return MaxRetryAfter
		}
		return time.Duration(secs) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return min(t.Sub(now), MaxRetryAfter)
	}
	return 0
}

func isDigits(s string) bool {
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return s != ""
}
