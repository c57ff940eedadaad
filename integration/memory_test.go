package integration

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/certflow/certflow/integration/rig"
	"github.com/certflow/certflow/internal/bench"
	"github.com/certflow/certflow/issuer"
	"github.com/certflow/certflow/solvers"
)

// memOrders is how many orders the memory measurements hold in flight.
const memOrders = 200

// memWorld is what the memory measurements need of an env: the DNS (to
// hold self-checks failing), the CA, the TLS-ALPN-01 port and the storage.
// The test takes it from newEnv; a benchmark, which has no *testing.T,
// builds the same with memWorldFor.
type memWorld struct {
	dns     *rig.DNS
	ca      *rig.CA
	tlsPort int
	storage string
}

// memWorldFor starts what newEnv starts that the engine needs (DNS, Pebble,
// ports, storage), for a benchmark.
func memWorldFor(tb testing.TB) memWorld {
	tb.Helper()
	w := memWorld{storage: tb.TempDir()}
	httpPort, err := rig.FreePort()
	if err != nil {
		tb.Fatal(err)
	}
	if w.tlsPort, err = rig.FreePort(); err != nil {
		tb.Fatal(err)
	}
	w.dns = startDNS(tb)
	w.ca = startCA(tb, rig.CAOptions{HTTPPort: httpPort, TLSPort: w.tlsPort, DNSAddr: w.dns.Addr})
	return w
}

// orderMemRig drives the real engine (no Caddy) against Pebble with
// TLS-ALPN-01, answered from storage on the world's TLS port, and the real
// solver whose self-check is held failing by pointing names nowhere.
type orderMemRig struct {
	w      memWorld
	eng    *issuer.Engine
	opts   *issuer.Options
	solver *countingSolver
	round  int
}

// countingSolver is the real TLS-ALPN-01 solver; it only notes which
// challenges have failed a self-check, to know when every live challenge
// is waiting in its self-check loop.
type countingSolver struct {
	solvers.Solver
	mu     sync.Mutex
	failed map[string]struct{} // by token
}

func (s *countingSolver) SelfCheck(ctx context.Context, chal acme.Challenge) error {
	err := s.Solver.SelfCheck(ctx, chal)
	if err != nil {
		s.mu.Lock()
		s.failed[chal.Token] = struct{}{}
		s.mu.Unlock()
	}
	return err
}

// reset forgets the failures seen, with room for n challenges made now,
// before a baseline, so the map's growth is not in a measurement.
func (s *countingSolver) reset(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failed = make(map[string]struct{}, n)
}

func (s *countingSolver) failures() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.failed)
}

// newOrderMemRig acquires an engine for the world's CA and issues one
// certificate, so the account, the CA's directory and connection, and the
// engine's background writers exist before anything is measured.
func newOrderMemRig(tb testing.TB, w memWorld) *orderMemRig {
	tb.Helper()
	storage := &certmagic.FileStorage{Path: w.storage}
	tb.Cleanup(func() { issuer.FlushIndex(30 * time.Second) }) // before the storage goes
	const issuerKey = "certflow-memory-test"
	serveTLSALPNFromStorage(tb, storage, issuerKey, w.tlsPort)

	eng, key, err := issuer.AcquireEngine(issuer.AccountConfig{
		CA:                   w.ca.DirectoryURL,
		Email:                "memory@example.com",
		TrustedRootsPEMFiles: []string{w.ca.ServerRootsFile},
	}, nil)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = issuer.ReleaseEngine(key) })

	cfg := solvers.Config{Storage: storage, IssuerKey: issuerKey, Resolvers: []string{w.dns.Addr}, TLSALPNPort: w.tlsPort}
	solver := &countingSolver{Solver: solvers.NewTLSALPN01(cfg)}
	solver.reset(1)
	// Logging as Caddy does by default (JSON at INFO), into io.Discard: a
	// logger with fields holds its encoded fields, and the workflow keeps
	// one per order and per challenge, so a no-op logger would hide them.
	logger := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(io.Discard), zap.InfoLevel))
	opts := &issuer.Options{
		Storage:        storage,
		IssuerKey:      issuerKey,
		ChallengeTypes: []string{acme.ChallengeTypeTLSALPN01},
		Solvers:        map[string]solvers.Solver{acme.ChallengeTypeTLSALPN01: solver},
		// a failing self-check is retried every 2 s (the default) for up
		// to a minute: orders pointed nowhere wait in it until unblocked
		SelfCheckInterval: 2 * time.Second,
		SelfCheckTimeout:  time.Minute,
		Logger:            logger,
	}
	opts.SetDefaults()
	r := &orderMemRig{w: w, eng: eng, opts: opts, solver: solver}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := eng.Issue(ctx, issuer.Request{CSR: newCSR(tb, "warmup.mem.test"), OnDemand: true, Options: opts}); err != nil {
		tb.Fatalf("warm-up issuance: %v", err)
	}
	return r
}

func newCSR(tb testing.TB, name string) *x509.CertificateRequest {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{DNSNames: []string{name}}, key)
	if err != nil {
		tb.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		tb.Fatal(err)
	}
	return csr
}

// memSnapshot is the live heap, stack and goroutines after a collection.
type memSnapshot struct {
	heap, stack uint64
	goroutines  int
}

func snapshot() memSnapshot {
	// twice: what the first collection's finalizers freed goes too
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memSnapshot{heap: ms.HeapAlloc, stack: ms.StackInuse, goroutines: runtime.NumGoroutine()}
}

// perOrder is what one in-flight order costs while it waits.
type perOrder struct {
	orders, live, queued int
	// heap is the live heap the process holds per order, the in-process
	// Pebble's record of each order included; ca is that record's share,
	// measured apart (caHeapPerOrder), so heap-ca is certflow's.
	heap, ca float64
	// stack is the goroutine stack memory per order: the caller's own
	// stack, grown by the workflow running on it.
	stack float64
	// goroutines per order, the caller's (the waiting handshake's)
	// included: 1 when the engine starts none of its own.
	goroutines float64
	// settled is how long the goroutines took to return to the baseline
	// once the orders ended.
	settled time.Duration
}

func (p perOrder) certflowHeap() float64 { return p.heap - p.ca }

func (p perOrder) String() string {
	return fmt.Sprintf("%d orders (%d live, %d queued): %.0f heap bytes/order held by certflow (%.0f with the in-process CA's %.0f), %.0f stack bytes/order, %.2f goroutines/order (the caller's included); goroutines back to the baseline %s after the orders ended",
		p.orders, p.live, p.queued, p.certflowHeap(), p.heap, p.ca, p.stack, p.goroutines, p.settled.Round(time.Millisecond))
}

// caHeapPerOrder measures what the in-process Pebble holds per pending
// order certflow leaves in it while its challenges wait (order,
// authorization, challenges): n orders made by a bare ACME client of its
// own, each with its authorization read, as the workflow does before its
// challenge waits. Subtracted from the process's heap per order, it leaves
// certflow's share.
func caHeapPerOrder(tb testing.TB, ca *rig.CA, n int) float64 {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := &acme.Client{Directory: ca.DirectoryURL, HTTPClient: ca.HTTPClient()}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	acct, err := client.NewAccount(ctx, acme.Account{Contact: []string{"mailto:control@example.com"}, TermsOfServiceAgreed: true, PrivateKey: key})
	if err != nil {
		tb.Fatalf("control account: %v", err)
	}
	ids := make([][]acme.Identifier, n)
	for i := range ids {
		ids[i] = []acme.Identifier{{Type: "dns", Value: fmt.Sprintf("control-%d.mem.test", i)}}
	}
	before := snapshot()
	const workers = 20
	errs := make(chan error, workers)
	for k := range workers {
		go func() {
			var err error
			for i := k; i < n && err == nil; i += workers {
				var o acme.Order
				if o, err = client.NewOrder(ctx, acct, acme.Order{Identifiers: ids[i]}); err == nil {
					_, err = client.GetAuthorization(ctx, acct, o.Authorizations[0])
				}
			}
			errs <- err
		}()
	}
	for range workers {
		if err := <-errs; err != nil {
			tb.Fatalf("control orders: %v", err)
		}
	}
	after := snapshot()
	return (float64(after.heap) - float64(before.heap)) / float64(n)
}

// holdOrders runs n on-demand issuances at once with the scheduler's
// MaxLive set to maxLive, every name pointed nowhere so that the live
// challenges keep failing their self-check and the others wait in the
// scheduler's queue. Once all are waiting it measures them; then it lets
// them finish (finish) or cancels them, checks the outcome, and waits
// (bounded) for the goroutines to return to the baseline.
func (r *orderMemRig) holdOrders(tb testing.TB, n, maxLive int, finish bool) perOrder {
	tb.Helper()
	r.round++
	sched := issuer.DefaultScheduler()
	// challenges of earlier tests must not count as these orders'
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(pollEvery) {
		if l, q := sched.Stats(); l == 0 && q == 0 {
			break
		}
		if time.Now().After(deadline) {
			tb.Fatal("the scheduler did not become idle within 30s")
		}
	}
	prior := sched.Limits()
	sched.Configure(issuer.SchedulerLimits{MaxLive: maxLive, MaxQueued: prior.MaxQueued})
	defer sched.Configure(prior)
	live, queued := min(n, maxLive), max(0, n-maxLive)

	names := make([]string, n)
	csrs := make([]*x509.CertificateRequest, n)
	for i := range names {
		names[i] = fmt.Sprintf("r%d-%d.mem.test", r.round, i)
		csrs[i] = newCSR(tb, names[i])
		r.w.dns.SetAddrs(names[i], unreachable) // self-check: connection refused
	}
	unblock := sync.OnceFunc(func() {
		for _, name := range names {
			r.w.dns.ResetAddrs(name)
		}
	})
	defer unblock()
	r.solver.reset(n)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	gate := make(chan struct{})
	results := make(chan error, n)
	g0 := runtime.NumGoroutine()
	// The callers stand for the handshakes waiting for their names: they
	// exist before the baseline, so what is measured is the engine's.
	for i := range n {
		go func() {
			<-gate
			_, err := r.eng.Issue(ctx, issuer.Request{CSR: csrs[i], OnDemand: true, Options: r.opts})
			results <- err
		}()
	}
	openGate := sync.OnceFunc(func() { close(gate) })
	defer openGate()
	// collect every result, however the measurement went
	got := make([]error, 0, n)
	collect := func(timeout time.Duration) {
		deadline := time.After(timeout)
		for len(got) < n {
			select {
			case err := <-results:
				got = append(got, err)
			case <-deadline:
				return
			}
		}
	}
	defer func() {
		openGate()
		cancel()
		unblock()
		collect(30 * time.Second)
	}()

	issuer.FlushIndex(10 * time.Second)
	base := snapshot()
	openGate()

	waiting := func() bool {
		l, q := sched.Stats()
		return l == live && q == queued && r.solver.failures() == live
	}
	deadline := time.Now().Add(30 * time.Second)
	for !waiting() {
		if time.Now().After(deadline) {
			l, q := sched.Stats()
			tb.Fatalf("%d orders not all waiting within 30s: scheduler %d live, %d queued (want %d, %d); %d self-checks failed",
				n, l, q, live, queued, r.solver.failures())
		}
		time.Sleep(pollEvery)
	}
	// the index markers of the orders' first states are held for up to 2 s
	// and then written: flush them so only what lasts as long as the wait
	// is measured
	issuer.FlushIndex(10 * time.Second)
	held := snapshot()
	if !waiting() {
		tb.Fatal("an order stopped waiting during the measurement")
	}
	p := perOrder{
		orders:     n,
		live:       live,
		queued:     queued,
		heap:       (float64(held.heap) - float64(base.heap)) / float64(n),
		stack:      (float64(held.stack) - float64(base.stack)) / float64(n),
		goroutines: float64(held.goroutines-g0) / float64(n),
	}

	ended := time.Now()
	if finish {
		unblock()
	} else {
		cancel()
	}
	collect(30 * time.Second)
	if len(got) < n {
		tb.Fatalf("only %d of %d issuances returned within 30s", len(got), n)
	}
	var failed int
	for _, err := range got {
		switch {
		case finish && err != nil:
			if failed++; failed <= 3 {
				tb.Errorf("issuance: %v", err)
			}
		case !finish && !canceled(err):
			if failed++; failed <= 3 {
				tb.Errorf("cancelled issuance: err = %v, want one saying it was cancelled", err)
			}
		}
	}
	if failed > 0 {
		tb.Fatalf("%d of %d issuances ended wrongly", failed, n)
	}
	if left := waitGoroutinesAtMost(g0, 10*time.Second); left > g0 {
		tb.Fatalf("goroutines did not return to the baseline within 10s: %d, want at most %d", left, g0)
	}
	p.settled = time.Since(ended)
	if l, q := sched.Stats(); l != 0 || q != 0 {
		tb.Fatalf("scheduler after the orders ended: %d live, %d queued", l, q)
	}
	return p
}

// canceled reports whether err tells that the issuance's context was
// cancelled. A challenge cancelled while live keeps the reason as text (it
// is its stored reason), so the error does not always wrap context.Canceled.
func canceled(err error) bool {
	return err != nil && (errors.Is(err, context.Canceled) || strings.Contains(err.Error(), context.Canceled.Error()))
}

// waitGoroutinesAtMost waits (bounded) until there are at most want
// goroutines, and returns the last count.
func waitGoroutinesAtMost(want int, timeout time.Duration) int {
	deadline := time.Now().Add(timeout)
	for {
		n := runtime.NumGoroutine()
		if n <= want || time.Now().After(deadline) {
			return n
		}
		time.Sleep(pollEvery)
	}
}

// Bounds per in-flight order, about 3–3.5× the highest of a dozen runs
// with 200 orders (Go 1.26, linux/amd64, 2 cores), so an unbounded buffer,
// a goroutine or a deep stack per order fails, not the noise:
//
//	                      heap held by certflow  stack      goroutines
//	all live               9.4–12.2 KB           18–33 KB   1.00
//	10 live, 190 queued    5.7–6.6 KB            12–21 KB   0.98–1.00
//	with -race             about the same        28–37 KB
//
// The in-process Pebble's own record of each order, 3.8–4.3 KB, is
// measured apart and not bounded. The goroutine is the caller's own: the
// engine starts none for a single-name order, live or queued. A leak shows
// as goroutines not returning to the baseline.
const (
	maxHeapPerLiveOrder   = 36 << 10
	maxHeapPerQueuedOrder = 22 << 10
	maxGoroutinesPerOrder = 1.5
)

// maxStackPerOrder bounds the stack per order; race instrumentation makes
// stacks larger.
func maxStackPerOrder() float64 {
	if bench.RaceEnabled {
		return 128 << 10
	}
	return 112 << 10
}

func checkPerOrder(tb testing.TB, what string, p perOrder, maxHeap float64) {
	tb.Helper()
	if h := p.certflowHeap(); h > maxHeap {
		tb.Errorf("%s: certflow holds %.0f heap bytes per order, bound %.0f", what, h, maxHeap)
	}
	if p.stack > maxStackPerOrder() {
		tb.Errorf("%s: %.0f stack bytes per order, bound %.0f", what, p.stack, maxStackPerOrder())
	}
	if p.goroutines > maxGoroutinesPerOrder {
		tb.Errorf("%s: %.2f goroutines per order (the caller's included), bound %.1f", what, p.goroutines, maxGoroutinesPerOrder)
	}
}

// TestOrderMemory holds 200 on-demand orders in flight at once against
// Pebble and measures what each costs while it waits: first all 200
// challenges live, failing their self-check (then unblocked: every
// certificate is issued), then 10 live and 190 in the scheduler's queue
// (then cancelled). Each time, the goroutines return to the baseline.
func TestOrderMemory(t *testing.T) {
	schedulerIdle(t)
	e := newEnv(t, envOptions{})
	r := newOrderMemRig(t, memWorld{dns: e.dns, ca: e.ca, tlsPort: e.httpsPort, storage: e.storage})
	ca := caHeapPerOrder(t, e.ca, memOrders)

	live := r.holdOrders(t, memOrders, memOrders, true)
	live.ca = ca
	t.Logf("all live:      %s", live)
	checkPerOrder(t, "all live", live, maxHeapPerLiveOrder)

	queued := r.holdOrders(t, memOrders, 10, false)
	queued.ca = ca
	t.Logf("mostly queued: %s", queued)
	checkPerOrder(t, "mostly queued", queued, maxHeapPerQueuedOrder)
}

// BenchmarkOrderMemory is TestOrderMemory's measurement, reported as
// metrics (each iteration holds 200 live orders, then 200 mostly queued;
// ns/op is both rounds). Run it with -benchtime 1x: an iteration takes
// seconds.
func BenchmarkOrderMemory(b *testing.B) {
	r := newOrderMemRig(b, memWorldFor(b))
	ca := caHeapPerOrder(b, r.w.ca, memOrders)
	var live, queued perOrder
	b.ResetTimer()
	for range b.N {
		l := r.holdOrders(b, memOrders, memOrders, true)
		q := r.holdOrders(b, memOrders, 10, false)
		live.heap += l.heap / float64(b.N)
		live.stack += l.stack / float64(b.N)
		live.goroutines += l.goroutines / float64(b.N)
		queued.heap += q.heap / float64(b.N)
		queued.stack += q.stack / float64(b.N)
		queued.goroutines += q.goroutines / float64(b.N)
	}
	live.ca, queued.ca = ca, ca
	b.ReportMetric(live.certflowHeap(), "bytes/live-order")
	b.ReportMetric(queued.certflowHeap(), "bytes/queued-order")
	b.ReportMetric(ca, "ca-bytes/order")
	b.ReportMetric(live.stack, "stack-bytes/live-order")
	b.ReportMetric(queued.stack, "stack-bytes/queued-order")
	b.ReportMetric(live.goroutines, "goroutines/live-order")
	b.ReportMetric(queued.goroutines, "goroutines/queued-order")
}
