package issuer

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"
)

// Engine runs the workflow for one CA and one ACME account. It is shared by
// every issuer instance (policy, config generation) with the same account:
// what differs per policy travels in each Request's Options.
type Engine struct {
	cfg       AccountConfig
	ca        CA
	owner     string // this engine's ID, recorded on the challenges it runs
	logger    *zap.Logger
	scheduler *Scheduler
	breaker   *breaker

	accountMu       sync.Mutex
	acct            *acme.Account
	accountFlight   *accountFlight // a lookup in progress
	verifyAccount   bool           // after a problem of the account: ask the CA before using it
	accountHoldWait time.Duration  // the last hold for a problem of the account

	limiterMu sync.Mutex
	limiter   *orderLimiter // nil when there is no order rate limit

	holdTables sync.Map      // by storage identity and issuer key: *holdTable
	stopped    chan struct{} // closed by Destruct: the holds' watchers end
	stopOnce   sync.Once
	watch      accountWatch // 429s of unrecognised scope; probing after an account hold

	health sync.Map // by storage identity and issuer key: *storeHealth

	validation validationTime // how long the CA takes to validate, for the first poll

	backoffs backoffMemory // names' failure backoffs as this process last saw them

	maintMu sync.Mutex
	maint   map[string]*maintenance // by storage identity and issuer key

	presence presence // the challenges this engine runs per store, its heartbeats (owners.go)
}

// NewEngine returns an engine for the account, reaching the CA with ca (nil:
// acmez's client for cfg.CA) and scheduling challenges with scheduler.
func NewEngine(cfg AccountConfig, ca CA, scheduler *Scheduler, logger *zap.Logger) (*Engine, error) {
	if ca == nil {
		c, err := newACMECA(cfg)
		if err != nil {
			return nil, err
		}
		ca = c
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	if scheduler == nil {
		scheduler = NewScheduler(SchedulerLimits{})
	}
	return &Engine{
		cfg:       cfg,
		ca:        ca,
		owner:     newOwnerID(),
		logger:    logger,
		scheduler: scheduler,
		breaker:   newBreaker(),
		stopped:   make(chan struct{}),
		maint:     map[string]*maintenance{},
	}, nil
}

// SetOrderRateLimit sets the limit on new orders for the account in this
// process (the most recently provisioned policy's setting wins).
func (e *Engine) SetOrderRateLimit(l OrderRateLimit) {
	n, window := l.effective(e.cfg.CA)
	e.limiterMu.Lock()
	defer e.limiterMu.Unlock()
	if e.limiter != nil && e.limiter.n == n && e.limiter.window == window {
		return
	}
	e.limiter = newOrderLimiter(n, window)
}

func (e *Engine) orderLimiter() *orderLimiter {
	e.limiterMu.Lock()
	defer e.limiterMu.Unlock()
	return e.limiter
}

// Destruct stops the engine's background maintenance when the last issuer
// instance using it is cleaned up (caddy.Destructor). Work in flight is not
// interrupted.
func (e *Engine) Destruct() error {
	e.stopMaintenance()
	e.stopOnce.Do(func() { close(e.stopped) })
	return nil
}

// Issue obtains a certificate for the request's CSR: it records a
// CertificateRequest, then resumes or creates the name's Order, solves its
// Challenges and finalizes it. certmagic holds the issue_cert_<name> lock
// for the whole call, which makes this the only writer of the name's
// resources across a cluster.
func (e *Engine) Issue(ctx context.Context, req Request) (*certmagic.IssuedCertificate, error) {
	opts := req.Options
	ids, err := csrIdentifiers(req.CSR)
	if err != nil {
		return nil, certmagic.ErrNoRetry{Err: fmt.Errorf("certificate request: %w", err)}
	}
	names := identifierValues(ids)
	w := &workflow{
		engine:  e,
		opts:    opts,
		store:   e.storeFor(opts),
		req:     req,
		ids:     ids,
		names:   names,
		name:    names[0],
		logger:  opts.Logger.With(zapName(names[0])),
		started: time.Now(),
	}
	catalog.workflowStarted()
	defer catalog.workflowEnded()
	return w.run(ctx)
}

// storeFor is the store of a request's policy.
func (e *Engine) storeFor(opts *Options) store {
	return store{storage: opts.Storage, issuerKey: opts.IssuerKey, logger: opts.Logger, health: e.healthOf(opts.Storage, opts.IssuerKey)}
}

// Revoke revokes a certificate at the CA, signing with the account (loaded
// from storage if this process has not used it yet).
func (e *Engine) Revoke(ctx context.Context, opts *Options, certPEM, keyPEM []byte, reason int) error {
	block, _ := pem.Decode(certPEM)
	if block == nil {
		return errors.New("revoking: no PEM certificate")
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return fmt.Errorf("revoking: parsing certificate: %w", err)
	}
	key, err := certmagic.PEMDecodePrivateKey(keyPEM)
	if err != nil {
		return errors.New("revoking: the certificate's private key does not decode")
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return errors.New("revoking: the certificate's private key cannot sign")
	}
	mode := callMode{observer: opts.Observer}
	acct, err := e.account(ctx, e.storeFor(opts), mode, accountLookupTimeout)
	if err != nil {
		return fmt.Errorf("revoking: %w", err)
	}
	return e.call(ctx, opRevoke, "revoking certificate", mode, func(ctx context.Context) error {
		return e.ca.RevokeCertificate(ctx, acct, leaf, signer, reason)
	})
}

// RenewalInfo asks the CA for the certificate's ARI renewal window.
func (e *Engine) RenewalInfo(ctx context.Context, leaf *x509.Certificate) (acme.RenewalInfo, error) {
	var ri acme.RenewalInfo
	err := e.call(ctx, opRenewalInfo, "reading renewal information", callMode{interactive: true}, func(ctx context.Context) error {
		var err error
		ri, err = e.ca.GetRenewalInfo(ctx, leaf)
		return err
	})
	return ri, err
}

// Breaker returns the state of the circuit to the CA.
func (e *Engine) Breaker() BreakerState { return e.breaker.snapshot() }

// newOwnerID is a random ID for an engine in this process.
func newOwnerID() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
