package issuer

import (
	"context"
	"crypto/x509"
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
	client    *acme.Client
	logger    *zap.Logger
	scheduler *Scheduler

	accountMu sync.Mutex
	acct      *acme.Account

	limiter *orderLimiter // nil when there is no order rate limit
	blockMu sync.Mutex
	block   blockRecord // the CA's latest Retry-After for new orders

	sentinels sync.Map // storages whose sentinel this process has confirmed

	validation validationTime // how long the CA takes to validate, for the first poll

	backoffs backoffMemory // names' failure backoffs as this process last saw them

	maintMu sync.Mutex
	maint   map[string]*maintenance // by storage identity and issuer key
}

var (
	enginesMu sync.Mutex
	engines   = map[string]*pooledEngine{}
)

type pooledEngine struct {
	engine *Engine
	refs   int
}

// AcquireEngine returns the process-wide engine for the account, creating it
// on first use. Each successful call must be paired with ReleaseEngine(key).
func AcquireEngine(cfg AccountConfig, logger *zap.Logger) (*Engine, string, error) {
	key := cfg.poolKey()
	enginesMu.Lock()
	defer enginesMu.Unlock()
	if p, ok := engines[key]; ok {
		p.refs++
		return p.engine, key, nil
	}
	client, err := newACMEClient(cfg)
	if err != nil {
		return nil, "", err
	}
	if logger == nil {
		logger = zap.NewNop()
	}
	e := &Engine{
		cfg:       cfg,
		client:    client,
		logger:    logger,
		scheduler: DefaultScheduler(),
		maint:     map[string]*maintenance{},
		limiter:   newOrderLimiter(cfg.orderRateLimit()),
	}
	engines[key] = &pooledEngine{engine: e, refs: 1}
	return e, key, nil
}

// ReleaseEngine drops one hold on an engine; the last one stops its
// background maintenance. Work in flight is not interrupted.
func ReleaseEngine(key string) error {
	enginesMu.Lock()
	defer enginesMu.Unlock()
	p, ok := engines[key]
	if !ok {
		return nil
	}
	if p.refs--; p.refs > 0 {
		return nil
	}
	delete(engines, key)
	p.engine.stopMaintenance()
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
	w := &workflow{
		engine:  e,
		opts:    opts,
		store:   store{storage: opts.Storage, issuerKey: opts.IssuerKey, logger: opts.Logger},
		req:     req,
		ids:     ids,
		name:    ids[0].Value,
		logger:  opts.Logger.With(zapName(ids[0].Value)),
		started: time.Now(),
	}
	markers.workflowStarted()
	defer markers.workflowEnded()
	return w.run(ctx)
}

// Revoke revokes a certificate at the CA, signing with the account (loaded
// from storage if this process has not used it yet).
func (e *Engine) Revoke(ctx context.Context, storage certmagic.Storage, certPEM, keyPEM []byte, reason int) error {
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
	acct, err := e.account(ctx, storage)
	if err != nil {
		return fmt.Errorf("revoking: %w", err)
	}
	return callCA(ctx, "revoking certificate", func(ctx context.Context) error {
		return e.client.RevokeCertificate(ctx, acct, leaf, key, reason)
	})
}

// RenewalInfo asks the CA for the certificate's ARI renewal window.
func (e *Engine) RenewalInfo(ctx context.Context, leaf *x509.Certificate) (acme.RenewalInfo, error) {
	return e.client.GetRenewalInfo(ctx, leaf)
}
