package certflow

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
)

// asker gets one answer from the permission endpoint or module.
type asker interface {
	// ask returns whether name is allowed; an error is a failure to get an
	// answer (never a denial). It should return when ctx is done.
	ask(ctx context.Context, name string) (allowed bool, err error)
	// source names the endpoint or module, for errors and status.
	source() string
}

// httpAsker asks an endpoint the way Caddy's `http` permission module
// does, with a context, so an abandoned ask is cancelled.
type httpAsker struct {
	endpoint *url.URL
	client   *http.Client
}

func newHTTPAsker(endpoint string, maxConcurrent int) (*httpAsker, error) {
	u, err := url.Parse(endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("certflow permission: ask %q is not an http(s) URL", endpoint)
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConnsPerHost = maxConcurrent
	return &httpAsker{
		endpoint: u,
		client: &http.Client{
			Transport: transport,
			// a redirect is a misconfigured endpoint, not an answer
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}, nil
}

func (a *httpAsker) source() string { return a.endpoint.String() }

func (a *httpAsker) ask(ctx context.Context, name string) (bool, error) {
	u := *a.endpoint
	q := u.Query()
	q.Set("domain", name)
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return false, err
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return false, err
	}
	// drain a little so the connection can be reused
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return true, nil
	case resp.StatusCode >= 500:
		return false, fmt.Errorf("the endpoint answered %s", resp.Status)
	case resp.StatusCode >= 300 && resp.StatusCode < 400:
		return false, fmt.Errorf("the endpoint answered %s (redirects are not followed)", resp.Status)
	}
	return false, nil
}

// moduleAsker asks a wrapped tls.permission module.
type moduleAsker struct {
	perm caddytls.OnDemandPermission
	id   string
}

func (a *moduleAsker) source() string { return "module " + a.id }

func (a *moduleAsker) ask(ctx context.Context, name string) (bool, error) {
	err := a.perm.CertificateAllowed(ctx, name)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, caddytls.ErrPermissionDenied):
		return false, nil
	}
	return false, err
}

// wrapPermission returns the asker for a loaded tls.permission module. The
// stock `http` module is asked directly: it cannot be cancelled and reads
// a 5xx as a denial.
func wrapPermission(val any, maxConcurrent int) (asker, error) {
	if h, ok := val.(*caddytls.PermissionByHTTP); ok {
		endpoint, err := caddy.NewReplacer().ReplaceOrErr(h.Endpoint, true, true)
		if err != nil {
			return nil, fmt.Errorf("expanding placeholders in the http permission endpoint %q: %w", h.Endpoint, err)
		}
		return newHTTPAsker(endpoint, maxConcurrent)
	}
	perm, ok := val.(caddytls.OnDemandPermission)
	if !ok {
		return nil, fmt.Errorf("certflow permission: the wrapped module %T is not a tls.permission module", val)
	}
	id := fmt.Sprintf("%T", val)
	if m, ok := val.(caddy.Module); ok {
		id = string(m.CaddyModule().ID)
	}
	return &moduleAsker{perm: perm, id: id}, nil
}

// askError is a failure to get an answer: never cached, never a denial.
type askError struct {
	source, name string
	err          error
}

func (e *askError) Error() string {
	return fmt.Sprintf("asking %s whether %s may have a certificate: %v", e.source, e.name, e.err)
}

func (e *askError) Unwrap() error { return e.err }

// errAskBusy is the cause when no ask slot freed up in time.
var errAskBusy = errors.New("every ask slot is taken")

// decide gets name's answer: one ask per name at a time in the process
// (concurrent callers share it), in one of the ask slots, all within
// ask_timeout of now. The answer is cached; a failure is not.
func (p *Permission) decide(ctx context.Context, name string, now time.Time) error {
	st := p.state
	deadline := now.Add(time.Duration(p.AskTimeout))
	// the shared ask must not end with its first caller's connection; it
	// keeps the caller's values (the ClientHello) for wrapped modules
	flightCtx := context.WithoutCancel(ctx)
	ch := st.flights.DoChan(name, func() (any, error) {
		return p.askBounded(flightCtx, name, deadline)
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			var ae *askError
			if errors.As(res.Err, &ae) && errors.Is(ae.err, errAskBusy) {
				permissionMetrics.refusals.WithLabelValues(refusedAskBusy).Inc()
			} else {
				permissionMetrics.refusals.WithLabelValues(refusedAskError).Inc()
			}
			return res.Err
		}
		d := res.Val.(decision)
		if !d.allowed {
			permissionMetrics.refusals.WithLabelValues(refusedDenied).Inc()
			return st.deniedError(name, d, time.Now())
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for %s's answer about %s: %w", st.source, name, ctx.Err())
	}
}

// askBounded waits for an ask slot (at most ask_queue_timeout, and never
// past deadline), then asks until deadline. The slot is held until the ask
// returns, even past deadline (a wrapped module that ignores its context
// keeps its request open), so at most max_concurrent_asks are ever in
// flight.
func (p *Permission) askBounded(ctx context.Context, name string, deadline time.Time) (decision, error) {
	st := p.state
	src := p.asker.source()
	waitUntil := time.Now().Add(time.Duration(p.AskQueueTimeout))
	if deadline.Before(waitUntil) {
		waitUntil = deadline
	}
	wait := time.Until(waitUntil).Round(time.Millisecond)
	waitCtx, cancelWait := context.WithDeadline(ctx, waitUntil)
	err := st.slots.Acquire(waitCtx, 1)
	cancelWait()
	if err != nil {
		return decision{}, &askError{source: src, name: name,
			err: fmt.Errorf("%w (%d asks in flight) and none freed up within %s", errAskBusy, p.MaxConcurrentAsks, wait)}
	}

	askCtx, cancelAsk := context.WithDeadline(ctx, deadline)
	// cancelled here, never by the asking goroutine: a cancel racing its
	// answer would turn an answer into a timeout
	defer cancelAsk()
	type answer struct {
		allowed  bool
		err      error
		timedOut bool
	}
	done := make(chan answer, 1)
	start := time.Now()
	permissionMetrics.inFlight.Inc()
	go func() {
		defer st.slots.Release(1)
		defer permissionMetrics.inFlight.Dec()
		allowed, err := p.asker.ask(askCtx, name)
		done <- answer{allowed, err, err != nil && askCtx.Err() != nil}
	}()

	select {
	case a := <-done:
		took := time.Since(start)
		if a.err != nil {
			permissionMetrics.asks.WithLabelValues(askOutcomeError).Inc()
			permissionMetrics.askDuration.WithLabelValues(askOutcomeError).Observe(took.Seconds())
			if a.timedOut {
				a.err = fmt.Errorf("no answer within ask_timeout %s: %w", time.Duration(p.AskTimeout), a.err)
			}
			return decision{}, &askError{source: src, name: name, err: a.err}
		}
		outcome := askOutcomeDenied
		if a.allowed {
			outcome = askOutcomeAllowed
		}
		permissionMetrics.asks.WithLabelValues(outcome).Inc()
		permissionMetrics.askDuration.WithLabelValues(outcome).Observe(took.Seconds())
		return st.cache.put(name, a.allowed, time.Now()), nil
	case <-askCtx.Done():
		permissionMetrics.asks.WithLabelValues(askOutcomeError).Inc()
		permissionMetrics.askDuration.WithLabelValues(askOutcomeError).Observe(time.Since(start).Seconds())
		return decision{}, &askError{source: src, name: name, err: fmt.Errorf("no answer within ask_timeout %s", time.Duration(p.AskTimeout))}
	}
}

// deniedError is the handshake's error for a denied name.
func (st *admissionState) deniedError(name string, d decision, now time.Time) error {
	return fmt.Errorf("%w: %s denied %s (answer from %s ago, kept until %s)", caddytls.ErrPermissionDenied,
		st.source, name, now.Sub(d.decided).Round(time.Millisecond), d.expires.UTC().Format(time.RFC3339))
}
