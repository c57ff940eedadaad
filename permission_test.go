package certflow

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
)

func TestClientKeyOf(t *testing.T) {
	for _, tc := range []struct{ addr, want string }{
		{"192.0.2.7", "192.0.2.7"},
		{"::ffff:192.0.2.7", "192.0.2.7"},
		{"2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"},
		{"2001:db8:1:2::1", "2001:db8:1:2::/64"},
		{"2001:db8:1:3::1", "2001:db8:1:3::/64"},
		{"::1", "::/64"},
	} {
		if got := clientKeyOf(netip.MustParseAddr(tc.addr)); got != tc.want {
			t.Errorf("clientKeyOf(%s) = %q, want %q", tc.addr, got, tc.want)
		}
	}
	if got := clientKeyOf(netip.Addr{}); got != "" {
		t.Errorf("clientKeyOf(invalid) = %q, want empty", got)
	}
}

// TestClientBudget walks one client's window: names counted up to the
// limit, a repeat not counted again, the first refusal flagged once, a new
// window after the old one ends, and other clients unaffected.
func TestClientBudget(t *testing.T) {
	b := newClientBudget(3, time.Minute)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	type step struct {
		client, name string
		at           time.Duration
		counted      bool
		first        bool
	}
	for i, s := range []step{
		{"a", "n1", 0, true, false},
		{"a", "n2", time.Second, true, false},
		{"a", "n1", 2 * time.Second, true, false}, // already counted
		{"a", "n3", 3 * time.Second, true, false},
		{"a", "n4", 4 * time.Second, false, true},
		{"a", "n5", 5 * time.Second, false, false}, // refused again, not first
		{"a", "n2", 6 * time.Second, true, false},  // counted earlier in the window
		{"b", "n4", 7 * time.Second, true, false},  // another client
		{"a", "n4", time.Minute, true, false},      // a new window
		{"a", "n5", time.Minute + time.Second, true, false},
		{"a", "n6", time.Minute + 2*time.Second, true, false},
		{"a", "n7", time.Minute + 3*time.Second, false, true}, // warned again in the new window
	} {
		v := b.spend(s.client, s.name, t0.Add(s.at))
		if v.counted != s.counted || v.first != s.first {
			t.Fatalf("step %d (%s %s at +%s): counted %v first %v, want %v %v", i, s.client, s.name, s.at, v.counted, v.first, s.counted, s.first)
		}
	}
}

func TestDecisionCache(t *testing.T) {
	c := newDecisionCache(2, 10*time.Second, time.Second)
	t0 := time.Now()
	c.put("allowed.test", true, t0)
	c.put("denied.test", false, t0)
	if d, ok := c.get("allowed.test", t0.Add(9*time.Second)); !ok || !d.allowed {
		t.Fatalf("allowed answer within its duration: %+v %v", d, ok)
	}
	if _, ok := c.get("denied.test", t0.Add(time.Second)); ok {
		t.Fatal("a denied answer outlived its duration")
	}
	if _, ok := c.get("allowed.test", t0.Add(10*time.Second)); ok {
		t.Fatal("an allowed answer outlived its duration")
	}
	// bounded: a third name pushes out the least recently used
	c.put("a.test", true, t0)
	c.put("b.test", true, t0)
	c.put("c.test", true, t0)
	if n := c.len(); n != 2 {
		t.Fatalf("cache of size 2 holds %d entries", n)
	}
	if _, ok := c.get("a.test", t0); ok {
		t.Fatal("the least recently used entry was kept past the cache size")
	}
}

// TestHTTPAskerAnswers: which answers of an endpoint are decisions and
// which are failures.
func TestHTTPAskerAnswers(t *testing.T) {
	for _, tc := range []struct {
		status      int
		wantAllowed bool
		wantErr     string
	}{
		{http.StatusOK, true, ""},
		{http.StatusNoContent, true, ""},
		{http.StatusForbidden, false, ""},
		{http.StatusNotFound, false, ""},
		{http.StatusInternalServerError, false, "500"},
		{http.StatusServiceUnavailable, false, "503"},
		{http.StatusFound, false, "redirects are not followed"},
	} {
		t.Run(fmt.Sprint(tc.status), func(t *testing.T) {
			var gotDomain atomic.Value
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				gotDomain.Store(r.URL.Query().Get("domain"))
				if tc.status == http.StatusFound {
					w.Header().Set("Location", "/elsewhere")
				}
				w.WriteHeader(tc.status)
			}))
			defer srv.Close()
			a, err := newHTTPAsker(srv.URL+"/ask?token=x", 4)
			if err != nil {
				t.Fatal(err)
			}
			allowed, err := a.ask(context.Background(), "a.test")
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || allowed != tc.wantAllowed {
				t.Fatalf("allowed %v err %v, want %v", allowed, err, tc.wantAllowed)
			}
			if d, _ := gotDomain.Load().(string); d != "a.test" {
				t.Fatalf("the endpoint got domain=%q", d)
			}
		})
	}
	if _, err := newHTTPAsker("localhost:9123/ask", 1); err == nil {
		t.Error("an ask without a scheme was accepted")
	}
}

// fakePermission is a wrapped tls.permission module.
type fakePermission struct {
	calls atomic.Int64
	err   error
	block chan struct{}
}

func (f *fakePermission) CertificateAllowed(ctx context.Context, name string) error {
	f.calls.Add(1)
	if f.block != nil {
		<-f.block // ignores ctx, as Caddy's http module does
	}
	return f.err
}

// newTestPermission provisions nothing of Caddy: it wires a module around
// an asker, as Provision would.
func newTestPermission(t *testing.T, a asker, cfg Permission) *Permission {
	t.Helper()
	p := &cfg
	p.asker = a
	p.setDefaults()
	p.state = newAdmissionState(p)
	return p
}

// TestDecideCoalescesAndCaches: concurrent callers for one name share one
// ask, the answer is cached, a denial is cached for its own duration, and
// a failure is never cached.
func TestDecideCoalescesAndCaches(t *testing.T) {
	f := &fakePermission{block: make(chan struct{})}
	p := newTestPermission(t, &moduleAsker{perm: f, id: "tls.permission.fake"}, Permission{})
	errs := make(chan error, 50)
	for range 50 {
		go func() { errs <- p.CertificateAllowed(context.Background(), "Shared.Test") }()
	}
	deadline := time.Now().Add(5 * time.Second)
	for f.calls.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond) // let the others join the flight
	close(f.block)
	for range 50 {
		if err := <-errs; err != nil {
			t.Fatalf("allowed name: %v", err)
		}
	}
	if n := f.calls.Load(); n != 1 {
		t.Fatalf("50 concurrent callers made %d asks, want 1", n)
	}
	if err := p.CertificateAllowed(context.Background(), "shared.test"); err != nil || f.calls.Load() != 1 {
		t.Fatalf("cached answer: err %v, asks %d", err, f.calls.Load())
	}

	f.err = fmt.Errorf("no: %w", caddytls.ErrPermissionDenied)
	f.block = nil
	err := p.CertificateAllowed(context.Background(), "denied.test")
	if !errors.Is(err, caddytls.ErrPermissionDenied) || !strings.Contains(err.Error(), "tls.permission.fake") {
		t.Fatalf("denial: %v", err)
	}
	_ = p.CertificateAllowed(context.Background(), "denied.test")
	if n := f.calls.Load(); n != 2 {
		t.Fatalf("a cached denial was asked again (%d asks)", n)
	}

	f.err = errors.New("database down")
	for range 2 {
		err = p.CertificateAllowed(context.Background(), "failing.test")
		if err == nil || errors.Is(err, caddytls.ErrPermissionDenied) || !strings.Contains(err.Error(), "database down") {
			t.Fatalf("failure: %v", err)
		}
	}
	if n := f.calls.Load(); n != 4 {
		t.Fatalf("a failure was cached (%d asks, want 4)", n)
	}
}

// TestAskTimeoutHoldsSlot: a wrapped module that ignores its context is
// abandoned at ask_timeout, but keeps its slot until it returns, so no
// more than max_concurrent_asks calls are ever running; a caller that finds
// every slot taken fails after ask_queue_timeout.
func TestAskTimeoutHoldsSlot(t *testing.T) {
	f := &fakePermission{block: make(chan struct{})}
	defer close(f.block)
	p := newTestPermission(t, &moduleAsker{perm: f, id: "tls.permission.stuck"}, Permission{
		MaxConcurrentAsks: 2,
		AskTimeout:        caddy.Duration(200 * time.Millisecond),
		AskQueueTimeout:   caddy.Duration(50 * time.Millisecond),
	})
	for i := range 2 {
		start := time.Now()
		err := p.CertificateAllowed(context.Background(), fmt.Sprintf("stuck-%d.test", i))
		took := time.Since(start)
		if err == nil || !strings.Contains(err.Error(), "no answer within ask_timeout") || !strings.Contains(err.Error(), "tls.permission.stuck") {
			t.Fatalf("stuck ask: %v", err)
		}
		if took < 150*time.Millisecond || took > 2*time.Second {
			t.Fatalf("stuck ask failed after %s, want about the 200ms ask_timeout", took)
		}
	}
	start := time.Now()
	err := p.CertificateAllowed(context.Background(), "third.test")
	if !errors.Is(err, errAskBusy) {
		t.Fatalf("with every slot held: %v", err)
	}
	if took := time.Since(start); took > time.Second {
		t.Fatalf("waiting for a slot took %s, want about the 50ms ask_queue_timeout", took)
	}
	if n := f.calls.Load(); n != 2 {
		t.Fatalf("%d calls reached the stuck module, want 2 (max_concurrent_asks)", n)
	}
	if n := p.state.cache.len(); n != 0 {
		t.Fatalf("failures were cached: %d entries", n)
	}
}

func TestPermissionCheckConfig(t *testing.T) {
	for _, tc := range []struct {
		p    Permission
		want string
	}{
		{Permission{}, "set ask"},
		{Permission{Ask: "http://x/ask", PermissionRaw: []byte(`{"module":"http"}`)}, "not both"},
		{Permission{PermissionRaw: []byte(`{"module":"certflow"}`)}, "cannot be certflow"},
		{Permission{Ask: "http://x/ask", AskTimeout: caddy.Duration(time.Second), AskQueueTimeout: caddy.Duration(2 * time.Second)}, "longer than ask_timeout"},
		{Permission{Ask: "http://x/ask", CacheSize: -1}, "cache_size"},
		{Permission{Ask: "http://x/ask", ClientNewNames: &ClientBudgetConfig{Names: -1}}, "client_new_names"},
	} {
		err := tc.p.checkConfig()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: err %v, want one containing %q", tc.p, err, tc.want)
		}
	}
	if err := (&Permission{Ask: "http://x/ask"}).checkConfig(); err != nil {
		t.Errorf("a plain ask: %v", err)
	}
}
