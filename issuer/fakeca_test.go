package issuer

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/mholt/acmez/v3/acme"
)

// fakeCA is an in-memory ACME server for the workflow's branch tests: the
// branches Pebble cannot produce on demand. It keeps accounts, orders and
// authorizations, validates a challenge as soon as it is accepted (refusing
// the types in refuse), issues a leaf for the CSR's key, and answers a call
// with a scripted fault first when one is queued for its operation. Every
// answer is reported to the call (reportResponse), as the HTTP transport
// does, so Retry-After and the circuit breaker work as with a real CA.
type fakeCA struct {
	mu sync.Mutex

	orders   map[string]*acme.Order // by URL
	authzs   map[string]*acme.Authorization
	csrs     map[string][]byte // chains by certificate URL
	n        int
	calls    map[string]int
	requests map[string][]acme.Order // new-order requests, by first identifier
	faults   map[string][]fakeFault

	// refuse lists the challenge types whose validation fails.
	refuse map[string]bool
	// offered lists the challenge types authorizations offer.
	offered []string
	// reuse makes new orders' authorizations already valid.
	reuse bool
	// accountStatus is what account lookups return ("" is valid).
	accountStatus string
	// unknownAccount answers accountDoesNotExist to lookups until a
	// registration.
	unknownAccount bool
	// block, when set, holds every call of an operation until closed.
	block map[string]chan struct{}

	caKey  *ecdsa.PrivateKey
	caCert *x509.Certificate
}

// fakeFault is a scripted answer to one call: a problem (with an HTTP
// status and Retry-After) or a transport error.
type fakeFault struct {
	status     int
	problem    string // the problem type's last part, e.g. "rateLimited"
	detail     string
	retryAfter string
	err        error
}

// The operations a fakeCA counts and scripts faults for, by name.
const (
	fakeNewAccount = "new-account"
	fakeAccount    = "account"
	fakeNewOrder   = "new-order"
	fakeOrder      = "order"
	fakeFinalize   = "finalize"
	fakeAuthz      = "authz"
	fakeDeactivate = "deactivate"
	fakeChall      = "chall"
	fakeCert       = "cert"
	fakeRevoke     = "revoke"
	fakeARI        = "renewal-info"
	fakeDirectory  = "directory"
)

func newFakeCA(t testing.TB) *fakeCA {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "fake CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &fakeCA{
		orders: map[string]*acme.Order{}, authzs: map[string]*acme.Authorization{}, csrs: map[string][]byte{},
		calls: map[string]int{}, requests: map[string][]acme.Order{}, faults: map[string][]fakeFault{},
		refuse: map[string]bool{}, offered: []string{acme.ChallengeTypeHTTP01, acme.ChallengeTypeTLSALPN01},
		block: map[string]chan struct{}{}, caKey: key, caCert: cert,
	}
}

// fail queues faults for the next calls of op, one per call.
func (f *fakeCA) fail(op string, faults ...fakeFault) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.faults[op] = append(f.faults[op], faults...)
}

func (f *fakeCA) count(op string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[op]
}

// begin counts a call of op and returns its scripted fault, reported to the
// call as the CA's answer; nil means the call goes on.
func (f *fakeCA) begin(ctx context.Context, op string) error {
	if err := refusedByBreaker(ctx); err != nil {
		return err
	}
	f.mu.Lock()
	f.calls[op]++
	blocked := f.block[op]
	var fault *fakeFault
	if q := f.faults[op]; len(q) > 0 {
		fault, f.faults[op] = &q[0], q[1:]
	}
	f.mu.Unlock()
	if blocked != nil {
		select {
		case <-blocked:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	url := "https://fake.ca/" + op
	if fault == nil {
		reportResponse(ctx, url, http.StatusOK, http.Header{}, nil, 0)
		return nil
	}
	if fault.err != nil {
		reportResponse(ctx, url, 0, nil, fault.err, 0)
		return fault.err
	}
	h := http.Header{}
	if fault.retryAfter != "" {
		h.Set("Retry-After", fault.retryAfter)
	}
	reportResponse(ctx, url, fault.status, h, nil, 0)
	return acme.Problem{Type: acme.ProblemTypeNamespace + fault.problem, Detail: fault.detail, Status: fault.status}
}

func (f *fakeCA) Directory(ctx context.Context) (acme.Directory, error) {
	if err := f.begin(ctx, fakeDirectory); err != nil {
		return acme.Directory{}, err
	}
	return acme.Directory{NewOrder: "https://fake.ca/new-order", RenewalInfo: "https://fake.ca/ari"}, nil
}

func (f *fakeCA) NewAccount(ctx context.Context, acct acme.Account) (acme.Account, error) {
	if err := f.begin(ctx, fakeNewAccount); err != nil {
		return acme.Account{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.unknownAccount = false
	acct.Location, acct.Status = "https://fake.ca/acct/1", acme.StatusValid
	return acct, nil
}

func (f *fakeCA) GetAccount(ctx context.Context, acct acme.Account) (acme.Account, error) {
	if err := f.begin(ctx, fakeAccount); err != nil {
		return acme.Account{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.unknownAccount {
		return acme.Account{}, acme.Problem{Type: acme.ProblemTypeAccountDoesNotExist, Status: 400, Detail: "no such account"}
	}
	acct.Location = "https://fake.ca/acct/1"
	acct.Status = acme.StatusValid
	if f.accountStatus != "" {
		acct.Status = f.accountStatus
	}
	return acct, nil
}

func (f *fakeCA) BindExternalAccount(context.Context, *acme.Account, acme.EAB) error { return nil }

func (f *fakeCA) NewOrder(ctx context.Context, _ acme.Account, order acme.Order) (acme.Order, error) {
	if len(order.Identifiers) > 0 {
		f.mu.Lock()
		f.requests[order.Identifiers[0].Value] = append(f.requests[order.Identifiers[0].Value], order)
		f.mu.Unlock()
	}
	if err := f.begin(ctx, fakeNewOrder); err != nil {
		return acme.Order{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	o := order
	o.Location = fmt.Sprintf("https://fake.ca/order/%d", f.n)
	o.Finalize = o.Location + "/finalize"
	o.Status = acme.StatusPending
	o.Expires = time.Now().Add(time.Hour)
	for i, id := range order.Identifiers {
		u := fmt.Sprintf("https://fake.ca/authz/%d-%d", f.n, i)
		a := &acme.Authorization{Identifier: id, Status: acme.StatusPending, Location: u}
		if f.reuse {
			a.Status = acme.StatusValid
		}
		for _, typ := range f.offered {
			a.Challenges = append(a.Challenges, acme.Challenge{Type: typ, URL: u + "/" + typ, Status: acme.StatusPending,
				Token: fmt.Sprintf("tok-%d-%d-%s", f.n, i, typ)})
		}
		f.authzs[u] = a
		o.Authorizations = append(o.Authorizations, u)
	}
	f.orders[o.Location] = &o
	return f.orderLocked(o.Location), nil
}

// orderLocked is the order at u with its status derived from its
// authorizations.
func (f *fakeCA) orderLocked(u string) acme.Order {
	o := f.orders[u]
	if o.Status == acme.StatusPending || o.Status == acme.StatusReady {
		ready := true
		for _, au := range o.Authorizations {
			switch f.authzs[au].Status {
			case acme.StatusValid:
			case acme.StatusPending:
				ready = false
			default:
				o.Status = acme.StatusInvalid
				return *o
			}
		}
		if ready {
			o.Status = acme.StatusReady
		}
	}
	return *o
}

func (f *fakeCA) GetOrder(ctx context.Context, _ acme.Account, order acme.Order) (acme.Order, error) {
	if err := f.begin(ctx, fakeOrder); err != nil {
		return acme.Order{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.orders[order.Location]; !ok {
		return acme.Order{}, acme.Problem{Type: acme.ProblemTypeMalformed, Status: 404, Detail: "no such order"}
	}
	return f.orderLocked(order.Location), nil
}

// setOrderStatus forces an order's status (e.g. expired while resumed).
func (f *fakeCA) setOrderStatus(u, status string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.orders[u].Status = status
}

func (f *fakeCA) FinalizeOrder(ctx context.Context, _ acme.Account, order acme.Order, csrDER []byte) (acme.Order, error) {
	if err := f.begin(ctx, fakeFinalize); err != nil {
		return acme.Order{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	o := f.orderLocked(order.Location)
	if o.Status != acme.StatusReady {
		return acme.Order{}, acme.Problem{Type: acme.ProblemTypeOrderNotReady, Status: 403, Detail: "order is " + o.Status}
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return acme.Order{}, acme.Problem{Type: acme.ProblemTypeBadCSR, Status: 400, Detail: err.Error()}
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(int64(f.n + 100)), DNSNames: csr.DNSNames,
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, f.caCert, csr.PublicKey, crypto.Signer(f.caKey))
	if err != nil {
		return acme.Order{}, err
	}
	stored := f.orders[order.Location]
	stored.Status = acme.StatusValid
	stored.Certificate = order.Location + "/cert"
	f.csrs[stored.Certificate] = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return *stored, nil
}

func (f *fakeCA) GetAuthorization(ctx context.Context, _ acme.Account, u string) (acme.Authorization, error) {
	if err := f.begin(ctx, fakeAuthz); err != nil {
		return acme.Authorization{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	a, ok := f.authzs[u]
	if !ok {
		return acme.Authorization{}, acme.Problem{Type: acme.ProblemTypeMalformed, Status: 404, Detail: "no such authorization"}
	}
	out := *a
	out.Challenges = append([]acme.Challenge(nil), a.Challenges...)
	for i := range out.Challenges {
		out.Challenges[i].Identifier = a.Identifier
		out.Challenges[i].KeyAuthorization = out.Challenges[i].Token + ".fake-thumbprint"
	}
	return out, nil
}

func (f *fakeCA) DeactivateAuthorization(ctx context.Context, _ acme.Account, u string) (acme.Authorization, error) {
	if err := f.begin(ctx, fakeDeactivate); err != nil {
		return acme.Authorization{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	a := f.authzs[u]
	a.Status = acme.StatusDeactivated
	return *a, nil
}

func (f *fakeCA) InitiateChallenge(ctx context.Context, _ acme.Account, chal acme.Challenge) (acme.Challenge, error) {
	if err := f.begin(ctx, fakeChall); err != nil {
		return acme.Challenge{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, a := range f.authzs {
		for i := range a.Challenges {
			c := &a.Challenges[i]
			if c.URL != chal.URL {
				continue
			}
			if f.refuse[c.Type] {
				c.Status = acme.StatusInvalid
				c.Error = &acme.Problem{Type: acme.ProblemTypeUnauthorized, Status: 403, Detail: "fake CA: " + c.Type + " answer not found"}
				a.Status = acme.StatusInvalid
			} else {
				c.Status = acme.StatusValid
				a.Status = acme.StatusValid
			}
			return *c, nil
		}
	}
	return acme.Challenge{}, acme.Problem{Type: acme.ProblemTypeMalformed, Status: 404, Detail: "no such challenge"}
}

func (f *fakeCA) GetCertificateChain(ctx context.Context, _ acme.Account, certURL string) ([]acme.Certificate, error) {
	if err := f.begin(ctx, fakeCert); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return []acme.Certificate{{URL: certURL, ChainPEM: f.csrs[certURL]}}, nil
}

func (f *fakeCA) RevokeCertificate(ctx context.Context, _ acme.Account, _ *x509.Certificate, _ crypto.Signer, _ int) error {
	return f.begin(ctx, fakeRevoke)
}

func (f *fakeCA) GetRenewalInfo(ctx context.Context, _ *x509.Certificate) (acme.RenewalInfo, error) {
	if err := f.begin(ctx, fakeARI); err != nil {
		return acme.RenewalInfo{}, err
	}
	return acme.RenewalInfo{}, nil
}

// newOrdersFor counts the new-order requests whose first identifier is
// name, refused ones included.
func (f *fakeCA) newOrdersFor(name string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.requests[name])
}

var _ CA = (*fakeCA)(nil)
