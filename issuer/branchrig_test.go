package issuer

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"

	"github.com/certflow/certflow/solvers"
)

// fakeSolver presents nothing and passes or fails its self-check as told.
type fakeSolver struct {
	mu        sync.Mutex
	failCheck bool
	presented int
	cleaned   int
	checks    int
}

func (s *fakeSolver) Present(context.Context, acme.Challenge) (json.RawMessage, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.presented++
	return nil, nil
}

func (s *fakeSolver) SelfCheck(context.Context, acme.Challenge) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.checks++
	if s.failCheck {
		return errors.New("fake: the answer is not reachable")
	}
	return nil
}

func (s *fakeSolver) CleanUp(context.Context, acme.Challenge, json.RawMessage) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cleaned++
	return nil
}

func (s *fakeSolver) set(fail bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failCheck = fail
}

// branchRig is an engine against a fakeCA, with in-memory storage and fake
// solvers for HTTP-01 and TLS-ALPN-01: the workflow's branches without
// Caddy or Pebble.
type branchRig struct {
	t       *testing.T
	ca      *fakeCA
	storage *memStorage
	engine  *Engine
	opts    *Options
	solvers map[string]*fakeSolver
}

const branchIssuerKey = "certflow-fake"

// branchCertificateKey is the issuer key certmagic stores the rig's
// certificates under: the CA's key, as the stock acme issuer's.
const branchCertificateKey = "fake.ca-dir"

// branchAccount is the fake CA's account URL for the rig's account.
const branchAccount = "https://fake.ca/acct/1"

func newBranchRig(t *testing.T, tune func(o *Options)) *branchRig {
	t.Helper()
	r := &branchRig{t: t, ca: newFakeCA(t), storage: newMemStorage(), solvers: map[string]*fakeSolver{
		acme.ChallengeTypeHTTP01: {}, acme.ChallengeTypeTLSALPN01: {},
	}}
	e, err := NewEngine(AccountConfig{CA: "https://fake.ca/dir", Email: "branch@example.com"}, r.ca, NewScheduler(SchedulerLimits{}), zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Destruct(); FlushIndex(10 * time.Second) })
	r.engine = e
	r.opts = &Options{
		Storage:           r.storage,
		IssuerKey:         branchIssuerKey,
		CertificateKeys:   []string{branchCertificateKey},
		ChallengeTypes:    []string{acme.ChallengeTypeHTTP01, acme.ChallengeTypeTLSALPN01},
		Solvers:           map[string]solvers.Solver{},
		SelfCheckInterval: 5 * time.Millisecond,
		SelfCheckTimeout:  time.Second,
	}
	for typ, s := range r.solvers {
		r.opts.Solvers[typ] = s
	}
	if tune != nil {
		tune(r.opts)
	}
	r.opts.SetDefaults()
	return r
}

// issue runs one Issue for name, on demand (a handshake waiting) or not.
func (r *branchRig) issue(name string, onDemand bool) (*certmagic.IssuedCertificate, error) {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return r.engine.Issue(ctx, Request{CSR: newTestCSR(r.t, name), OnDemand: onDemand, Options: r.opts})
}

// newTestCSR is a CSR for name with a new key, as certmagic makes one.
func newTestCSR(t testing.TB, name string) *x509.CertificateRequest {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{DNSNames: []string{name}}, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, _ := x509.ParseCertificateRequest(der)
	return csr
}

func (r *branchRig) store() store { return r.engine.storeFor(r.opts) }

func (r *branchRig) nameRecord(name string) NameRecord {
	r.t.Helper()
	var rec NameRecord
	if err := r.store().load(context.Background(), kindNames, name, &rec); err != nil && !isNotExist(err) {
		r.t.Fatal(err)
	}
	return rec
}

// resources returns the stored resources of kind for name, oldest first,
// wherever they are kept (StoredResources).
func resourcesOf[T any](r *branchRig, kind, name string, nameOf func(*T) string) []T {
	r.t.Helper()
	raws, err := StoredResources(context.Background(), r.storage, branchIssuerKey, kind)
	if err != nil {
		r.t.Fatal(err)
	}
	var out []T
	for _, raw := range raws {
		var v T
		if err := json.Unmarshal(raw, &v); err != nil {
			r.t.Fatal(err)
		}
		if nameOf(&v) == name {
			out = append(out, v)
		}
	}
	return out
}

func (r *branchRig) orders(name string) []Order {
	return resourcesOf(r, KindOrder, name, func(o *Order) string { return o.Name })
}

func (r *branchRig) requests(name string) []CertificateRequest {
	return resourcesOf(r, KindRequest, name, func(c *CertificateRequest) string { return c.Name })
}

func (r *branchRig) challenges(name string) []Challenge {
	return resourcesOf(r, KindChallenge, name, func(c *Challenge) string { return c.Name })
}

// issueAndStore issues a certificate for name and stores it as certmagic
// does once Issue returns (the chain and its metadata, here from the rig's
// CA and account, as adjust changes them), so that the next request for
// name renews it. It returns the stored leaf.
func (r *branchRig) issueAndStore(name string, adjust func(meta *acme.Certificate)) *x509.Certificate {
	r.t.Helper()
	issued, err := r.issue(name, false)
	if err != nil {
		r.t.Fatalf("issuing the certificate to renew: %v", err)
	}
	meta, _ := issued.Metadata.(acme.Certificate)
	meta.CA, meta.Account = "https://fake.ca/dir", branchAccount
	if adjust != nil {
		adjust(&meta)
	}
	leaf := r.storeCertificate(name, issued.Certificate, meta)
	r.ca.mu.Lock()
	r.ca.requests[name] = nil // count the renewal's requests only
	r.ca.mu.Unlock()
	return leaf
}

// storeCertificate writes chainPEM and meta where certmagic keeps name's
// certificate under the rig's certificate key, and returns the leaf.
func (r *branchRig) storeCertificate(name string, chainPEM []byte, meta acme.Certificate) *x509.Certificate {
	r.t.Helper()
	ctx := context.Background()
	metaJSON, err := json.Marshal(meta)
	if err != nil {
		r.t.Fatal(err)
	}
	res, _ := json.Marshal(map[string]any{"sans": []string{name}, "issuer_data": json.RawMessage(metaJSON)})
	for key, v := range map[string][]byte{
		certmagic.StorageKeys.SiteCert(branchCertificateKey, name): chainPEM,
		certmagic.StorageKeys.SiteMeta(branchCertificateKey, name): res,
	} {
		if err := r.storage.Store(ctx, key, v); err != nil {
			r.t.Fatal(err)
		}
	}
	block, _ := pem.Decode(chainPEM)
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		r.t.Fatal(err)
	}
	return leaf
}

// newOrderRequests returns the new-order requests the CA received for name.
func (f *fakeCA) newOrderRequests(name string) []acme.Order {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]acme.Order(nil), f.requests[name]...)
}
