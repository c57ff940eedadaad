package issuer

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"
)

// finalize sends the CSR, waits for the certificate, downloads the chain and
// checks that it is for the CSR's key.
func (r *orderRun) finalize(ctx context.Context) (*certmagic.IssuedCertificate, error) {
	w := r.w
	start := time.Now()
	// not written (SaveRules): after a crash, the order's state at the
	// CA tells that it was finalized (and so cannot be resumed with a new
	// key)
	r.advance(OrderProcessing, "")
	finalized, err := r.finalizeAndWait(ctx)
	if err != nil {
		if isRefusal(err) {
			return nil, r.fail(ctx, OrderInvalid, err)
		}
		return nil, r.fail(ctx, OrderErrored, err)
	}
	if finalized.Status != acme.StatusValid {
		return nil, r.fail(ctx, OrderInvalid, charge(PartyName,
			fmt.Errorf("order is %s after finalizing: %s", finalized.Status, problemText(finalized.Error))))
	}
	r.mu.Lock()
	r.order.Certificate, r.order.Finalized = finalized.Certificate, time.Now()
	r.mu.Unlock()

	var chains []acme.Certificate
	err = w.call(ctx, opCertificate, "downloading certificate "+finalized.Certificate, func(ctx context.Context) error {
		var err error
		chains, err = w.engine.ca.GetCertificateChain(ctx, w.acct, finalized.Certificate)
		return err
	})
	if err != nil {
		return nil, r.fail(ctx, OrderErrored, err)
	}
	if len(chains) == 0 {
		return nil, r.fail(ctx, OrderErrored, charge(PartyCA, errors.New("the CA returned no certificate chain")))
	}
	chain := r.preferredChain(chains)
	if err := leafMatchesCSR(chain.ChainPEM, w.req.CSR); err != nil {
		return nil, r.fail(ctx, OrderErrored, charge(PartyCA, err))
	}
	r.mu.Lock()
	r.order.State, r.order.Reason = OrderValid, ""
	r.mu.Unlock()
	w.logger.Info("order finalized", zapOrder(r.order.ID), zapState(OrderValid), zapTook(time.Since(start)))
	return &certmagic.IssuedCertificate{Certificate: chain.ChainPEM, Metadata: chain}, nil
}

type answeredKey struct{}

// finalizeAndWait sends the CSR and waits for the CA's decision. acmez's
// FinalizeOrder polls a processing order at a fixed interval; once the
// finalize request is answered we poll the order ourselves, starting within
// milliseconds and backing off (or waiting as the CA's Retry-After says),
// and end FinalizeOrder's wait as soon as the order is valid or invalid.
// Cancelling it then is safe: the finalize request has been answered.
func (r *orderRun) finalizeAndWait(ctx context.Context) (acme.Order, error) {
	w := r.w
	ctx, cancelDecision := w.opts.decisionContext(ctx)
	defer cancelDecision()
	finCtx, cancelFinalize := context.WithCancel(ctx)
	defer cancelFinalize()
	// poll only once the finalize request has been answered: polling
	// alongside it gains nothing and races some CAs' order updates
	sent := &answered{url: r.acme.Finalize, ch: make(chan struct{})}
	finCtx = context.WithValue(finCtx, answeredKey{}, sent)
	type result struct {
		order acme.Order
		err   error
	}
	finalized := make(chan result, 1)
	go func() {
		var o acme.Order
		err := w.call(finCtx, opFinalize, "finalizing order "+r.order.URL, func(ctx context.Context) error {
			var err error
			o, err = w.engine.ca.FinalizeOrder(ctx, w.acct, r.acme, w.req.CSR.Raw)
			return err
		})
		finalized <- result{o, err}
	}()

	select {
	case <-sent.ch:
	case res := <-finalized:
		return res.order, decisionError(ctx, res.err)
	case <-ctx.Done():
		<-finalized
		return acme.Order{}, cutOff(ctx, PartyCA, fmt.Errorf("finalizing the order: %w", context.Cause(ctx)))
	}
	var retryAfter time.Duration
	for n := 0; ; n++ {
		timer := time.NewTimer(pollWait(n, retryAfter))
		select {
		case res := <-finalized:
			timer.Stop()
			return res.order, decisionError(ctx, res.err)
		case <-ctx.Done():
			timer.Stop()
			<-finalized
			return acme.Order{}, cutOff(ctx, PartyCA, fmt.Errorf("waiting for the order to be issued: %w", context.Cause(ctx)))
		case <-timer.C:
		}
		var polled acme.Order
		err := w.call(ctx, opOrder, "polling order "+r.order.URL, func(ctx context.Context) error {
			var err error
			polled, err = w.engine.ca.GetOrder(ctx, w.acct, acme.Order{Location: r.order.URL})
			if call := callOf(ctx); call != nil {
				_, retryAfter = call.result()
			}
			return err
		})
		if err != nil {
			continue // FinalizeOrder's own result decides
		}
		if polled.Status == acme.StatusValid || polled.Status == acme.StatusInvalid {
			cancelFinalize()
			<-finalized
			polled.Location = r.order.URL
			return polled, nil
		}
	}
}

// leafMatchesCSR makes sure the chain's leaf certifies the CSR's public key:
// a chain for any other key would be useless to certmagic.
func leafMatchesCSR(chainPEM []byte, csr *x509.CertificateRequest) error {
	block, _ := pem.Decode(chainPEM)
	if block == nil {
		return errors.New("the CA's chain holds no PEM certificate")
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return fmt.Errorf("parsing the CA's leaf certificate: %w", err)
	}
	want, err := x509.MarshalPKIXPublicKey(csr.PublicKey)
	if err != nil {
		return fmt.Errorf("encoding the CSR's public key: %w", err)
	}
	got, err := x509.MarshalPKIXPublicKey(leaf.PublicKey)
	if err != nil {
		return fmt.Errorf("encoding the leaf's public key: %w", err)
	}
	if !bytes.Equal(want, got) {
		return errors.New("the CA's leaf certificate is for another public key than the CSR's")
	}
	return nil
}

var _ = zap.String
