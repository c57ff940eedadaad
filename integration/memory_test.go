package integration

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
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
	"github.com/certflow/certflow/internal/memtest"
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
	// Pebble accepts every challenge without resolving or dialing the
	// name: what is measured is certflow's side of 200 orders at once, and
	// 600 validations starting together overran Pebble's DNS lookups (its
	// 2 s timeout) on a loaded 2-core machine, failing issuances that have
	// nothing to do with certflow's memory
	w.ca = startCA(tb, rig.CAOptions{HTTPPort: httpPort, TLSPort: w.tlsPort, DNSAddr: w.dns.Addr, AlwaysValid: true})
	return w
}

// orderMemRig drives the real engine (no Caddy) against Pebble with
// TLS-ALPN-01, answered from storage on the world's TLS port, and the real
// solver whose self-check is held failing by pointing names nowhere.
type orderMemRig struct {
	w      memWorld
	eng    *issuer.Engine
	sched  *issuer.Scheduler
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

	sched := issuer.NewScheduler(issuer.SchedulerLimits{})
	eng, err := issuer.NewEngine(issuer.AccountConfig{
		CA:                   w.ca.DirectoryURL,
		Email:                "memory@example.com",
		TrustedRootsPEMFiles: []string{w.ca.ServerRootsFile},
	}, nil, sched, nil)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = eng.Destruct() })

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
	r := &orderMemRig{w: w, eng: eng, sched: sched, opts: opts, solver: solver}

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

// memSnapshot is the live heap and stack after a collection.
type memSnapshot struct{ heap, stack uint64 }

func snapshot() memSnapshot {
	heap, stack := memtest.Live()
	return memSnapshot{heap: heap, stack: stack}
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
	// included: 1 when the engine starts none of its own. Only the
	// callers and the goroutines started from them are counted
	// (memtest.Label), whatever else runs in the process.
	goroutines float64
	// settled is how long those goroutines took to end once the orders
	// ended.
	settled time.Duration
}

func (p perOrder) certflowHeap() float64 { return p.heap - p.ca }

func (p perOrder) String() string {
	return fmt.Sprintf("%d orders (%d live, %d queued): %.0f heap bytes/order held by certflow (%.0f with the in-process CA's %.0f), %.0f stack bytes/order, %.2f goroutines/order (the caller's included); those goroutines ended %s after the orders",
		p.orders, p.live, p.queued, p.certflowHeap(), p.heap, p.ca, p.stack, p.goroutines, p.settled.Round(time.Millisecond))
}

// caHeapPerOrder measures what the in-process Pebble holds per pending
// order certflow leaves in it while its challenges wait (order,
// authorization, challenges): n orders made by a bare ACME client of its
// own, each with its authorization read, as the workflow does before its
// challenge waits. Subtracted from the process's heap per order, it leaves
// certflow's share. It also returns one of those orders and its
// authorization, as acmez decoded them: what certflow holds of the CA's
// objects for an order.
func caHeapPerOrder(tb testing.TB, ca *rig.CA, n int) (float64, caObjects) {
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
	var sample caObjects
	for k := range workers {
		go func() {
			var err error
			for i := k; i < n && err == nil; i += workers {
				var o acme.Order
				var authz acme.Authorization
				if o, err = client.NewOrder(ctx, acct, acme.Order{Identifiers: ids[i]}); err == nil {
					authz, err = client.GetAuthorization(ctx, acct, o.Authorizations[0])
				}
				if err == nil && i == 0 {
					sample = caObjects{order: o, authz: authz}
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
	return (float64(after.heap) - float64(before.heap)) / float64(n), sample
}

// caObjects is an order and its authorization as the CA serves them.
type caObjects struct {
	order acme.Order
	authz acme.Authorization
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
	sched := r.sched
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
	// The callers stand for the handshakes waiting for their names: they
	// exist before the baseline, so what is measured is the engine's. They
	// carry a label of their own, and so does every goroutine the engine
	// starts from them.
	label := memtest.NewLabel()
	label.Do(func() {
		for i := range n {
			go func() {
				<-gate
				_, err := r.eng.Issue(ctx, issuer.Request{CSR: csrs[i], OnDemand: true, Options: r.opts})
				results <- err
			}()
		}
	})
	goroutines := func() int {
		tb.Helper()
		g, err := label.Goroutines()
		if err != nil {
			tb.Fatal(err)
		}
		return g
	}
	if g := goroutines(); g != n {
		tb.Fatalf("%d goroutines carry the callers' label, want the %d callers", g, n)
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
		goroutines: float64(goroutines()) / float64(n),
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
	if left, err := label.WaitGoroutines(0, 10*time.Second); err != nil || left != 0 {
		tb.Fatalf("%d of the callers' goroutines (and the ones started from them) left 10s after the orders ended (%v), want 0", left, err)
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

// orderParts is what an order in flight is made of, each part measured as
// allocated (memtest.HeapPer) from what the test has at hand: the resources
// the warm-up issuance stored, an order and authorization of the CA's, the
// issuer's logger and the runtime's objects a wait needs.
type orderParts struct {
	// resources are an order's CertificateRequest, Order, Challenge and
	// name record, decoded from the warm-up's stored JSON into certflow's
	// types (finished, so with every field filled).
	resources float64
	// ca is the CA's order and authorization (with its challenges) as
	// acmez decodes them.
	ca float64
	// loggers are the name's logger and the challenge's, which adds the
	// order, the challenge and its type.
	loggers float64
	// live is what a live challenge waits with: its deadline and its
	// self-check attempt's (contexts with their timers), the self-check's
	// interval timer, and its granted scheduler ticket with its channel.
	live float64
	// queued is what a queued challenge waits with: its scheduler ticket
	// with its channel, and the two sudogs of its caller parked in
	// Acquire's select.
	queued float64
}

// bookkeeping is the allowance for what the workflow keeps around its parts
// and is not sized apart (the runs' own structs, IDs, the reason and error
// of the self-check attempt in progress): as much again as the parts, no
// more.
const bookkeeping = 2

// bound is the most heap certflow may hold per order whose challenge is
// live (live) or queued.
func (p orderParts) bound(live bool) float64 {
	return bookkeeping * (p.resources + p.ca + p.loggers + p.wait(live))
}

func (p orderParts) wait(live bool) float64 {
	if live {
		return p.live
	}
	return p.queued
}

func (p orderParts) describe(live bool) string {
	return fmt.Sprintf("%.0f = %d × (resources %.0f + CA objects %.0f + loggers %.0f + waiting %.0f)",
		p.bound(live), bookkeeping, p.resources, p.ca, p.loggers, p.wait(live))
}

// measureOrderParts sizes the parts of an order in flight.
func measureOrderParts(tb testing.TB, r *orderMemRig, ca caObjects) orderParts {
	tb.Helper()
	const n = 1000
	var p orderParts
	// the warm-up's records, each decoded n times: its name's record and
	// its request's, which holds its order and challenge (a happy
	// issuance writes no record of its own for those)
	for kind, decoded := range map[string]func() any{
		"requests": func() any { return new(issuer.CertificateRequest) },
		"names":    func() any { return new(issuer.NameRecord) },
	} {
		files, _ := filepath.Glob(filepath.Join(r.w.storage, "certflow", "*", kind, "*.json"))
		if len(files) != 1 {
			tb.Fatalf("want the warm-up's one stored %s record, found %v", kind, files)
		}
		raw, err := os.ReadFile(files[0])
		if err != nil {
			tb.Fatal(err)
		}
		p.resources += memtest.HeapPer(n, func(int) any {
			v := decoded()
			if err := json.Unmarshal(raw, v); err != nil {
				tb.Fatalf("decoding %s: %v", files[0], err)
			}
			return v
		})
	}
	for _, c := range []struct {
		served  any
		decoded func() any
	}{
		{ca.order, func() any { return new(acme.Order) }},
		{ca.authz, func() any { return new(acme.Authorization) }},
	} {
		raw, err := json.Marshal(c.served)
		if err != nil {
			tb.Fatal(err)
		}
		p.ca += memtest.HeapPer(n, func(int) any {
			v := c.decoded()
			if err := json.Unmarshal(raw, v); err != nil {
				tb.Fatal(err)
			}
			return v
		})
	}
	const id = "20260101-000000.000000000-0000"
	p.loggers = memtest.HeapPer(n, func(i int) any {
		name := r.opts.Logger.With(zap.String("name", fmt.Sprintf("r0-%d.mem.test", i)))
		challenge := name.With(zap.String("order", id), zap.String("challenge", id+"-0"), zap.String("type", acme.ChallengeTypeTLSALPN01))
		return [2]*zap.Logger{name, challenge}
	})
	ticket := func() any {
		return &struct {
			issuer.Ticket
			seq     uint64
			ready   chan struct{}
			granted bool
		}{ready: make(chan struct{})}
	}
	var cancels []context.CancelFunc
	p.live = memtest.HeapPer(n, func(int) any {
		deadline, cancel := context.WithTimeout(context.Background(), time.Hour)
		attempt, cancelAttempt := context.WithTimeout(deadline, time.Hour)
		cancels = append(cancels, cancel, cancelAttempt)
		return []any{deadline, attempt, time.NewTimer(time.Hour), ticket()}
	})
	for _, cancel := range cancels {
		cancel()
	}
	p.queued = memtest.HeapPer(n, func(int) any { return ticket() }) +
		2*memtest.HeapPer(n, func(int) any { return new(memtest.Sudog) })
	return p
}

// maxStackPerOrder bounds the stack per order, about 3–3.5× the highest of
// a dozen runs (18–33 KB, 28–37 KB with -race): no goroutine's stack size
// can be read to derive it from. What it guards against is a deep stack
// per order; a goroutine per order fails the exact goroutine count.
func maxStackPerOrder() float64 {
	if bench.RaceEnabled {
		return 128 << 10
	}
	return 112 << 10
}

// checkPerOrder fails tb if the orders in flight hold more heap than what
// they are made of allows (live and queued ones each by their own parts), a
// deep stack, or any goroutine beyond their callers'.
func checkPerOrder(tb testing.TB, what string, p perOrder, parts orderParts) {
	tb.Helper()
	bound := (float64(p.live)*parts.bound(true) + float64(p.queued)*parts.bound(false)) / float64(p.orders)
	if h := p.certflowHeap(); h > bound {
		tb.Errorf("%s: certflow holds %.0f heap bytes per order, bound %.0f for %d live and %d queued (live: %s; queued: %s)",
			what, h, bound, p.live, p.queued, parts.describe(true), parts.describe(false))
	}
	if p.stack > maxStackPerOrder() {
		tb.Errorf("%s: %.0f stack bytes per order, bound %.0f", what, p.stack, maxStackPerOrder())
	}
	if p.goroutines != 1 {
		tb.Errorf("%s: %.2f goroutines per order (the caller's included), want 1: the engine starts none for a single-name order", what, p.goroutines)
	}
}

// TestOrderMemory holds 200 on-demand orders in flight at once against
// Pebble and measures what each costs while it waits: first all 200
// challenges live, failing their self-check (then unblocked: every
// certificate is issued), then 10 live and 190 in the scheduler's queue
// (then cancelled). Each order holds no more heap than what it is made of
// allows (orderParts) and no goroutine but its caller's; each time, those
// goroutines end with the orders.
func TestOrderMemory(t *testing.T) {
	schedulerIdle(t)
	e := newEnv(t, envOptions{tuneCA: func(o *rig.CAOptions) { o.AlwaysValid = true }}) // see memWorldFor
	r := newOrderMemRig(t, memWorld{dns: e.dns, ca: e.ca, tlsPort: e.httpsPort, storage: e.storage})
	ca, sample := caHeapPerOrder(t, e.ca, memOrders)
	parts := measureOrderParts(t, r, sample)
	t.Logf("bound per order: live %s; queued %s", parts.describe(true), parts.describe(false))

	live := r.holdOrders(t, memOrders, memOrders, true)
	live.ca = ca
	t.Logf("all live:      %s", live)
	checkPerOrder(t, "all live", live, parts)

	queued := r.holdOrders(t, memOrders, 10, false)
	queued.ca = ca
	t.Logf("mostly queued: %s", queued)
	checkPerOrder(t, "mostly queued", queued, parts)
}

// BenchmarkOrderMemory is TestOrderMemory's measurement, reported as
// metrics (each iteration holds 200 live orders, then 200 mostly queued;
// ns/op is both rounds). Run it with -benchtime 1x: an iteration takes
// seconds.
func BenchmarkOrderMemory(b *testing.B) {
	r := newOrderMemRig(b, memWorldFor(b))
	ca, _ := caHeapPerOrder(b, r.w.ca, memOrders)
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
