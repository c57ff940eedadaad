package issuer

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"slices"

	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"
)

// ChainPreference chooses among the certificate chains a CA offers for one
// certificate (the default one and its "alternate" links, RFC 8555 §7.4.2),
// with the stock acme issuer's rules (certmagic v0.25.6,
// ACMEIssuer.selectPreferredChain):
//
//   - one chain offered: it is used, whatever the preference;
//   - Smallest true sorts the chains by size, smallest first (false: largest
//     first); ties keep the CA's order;
//   - then the first chain, in that order, with a certificate issued by one
//     of AnyCommonName (tried in the order given), else the first whose
//     last certificate was issued by one of RootCommonName;
//   - no match: the first chain (after sorting).
type ChainPreference struct {
	Smallest       *bool
	RootCommonName []string
	AnyCommonName  []string
}

// isZero reports whether the preference leaves the CA's first chain.
func (p ChainPreference) isZero() bool {
	return p.Smallest == nil && len(p.RootCommonName) == 0 && len(p.AnyCommonName) == 0
}

// chainChoice is the chain selectChain picked and why, for the log and the
// Order.
type chainChoice struct {
	chain  acme.Certificate
	index  int    // in the CA's order; 0 is the default chain
	reason string // stable, for the log
}

// selectChain picks the chain pref prefers among chains (at least one).
// chains is not modified.
func selectChain(chains []acme.Certificate, pref ChainPreference) chainChoice {
	if len(chains) == 1 || pref.isZero() {
		return chainChoice{chain: chains[0], reason: "the CA's default chain"}
	}
	order := make([]int, len(chains))
	for i := range order {
		order[i] = i
	}
	reason := "the CA's default chain"
	if pref.Smallest != nil {
		smallestFirst := *pref.Smallest
		slices.SortStableFunc(order, func(a, b int) int {
			d := len(chains[a].ChainPEM) - len(chains[b].ChainPEM)
			if !smallestFirst {
				d = -d
			}
			return d
		})
		reason = "the smallest chain"
		if !smallestFirst {
			reason = "the largest chain"
		}
	}
	if len(pref.AnyCommonName) == 0 && len(pref.RootCommonName) == 0 {
		return chainChoice{chain: chains[order[0]], index: order[0], reason: reason}
	}

	decoded := make([][]*x509.Certificate, len(chains))
	for i, c := range chains {
		decoded[i], _ = parseChainPEM(c.ChainPEM) // an undecodable chain matches nothing
	}
	for _, cn := range pref.AnyCommonName {
		for _, i := range order {
			for _, cert := range decoded[i] {
				if cert.Issuer.CommonName == cn {
					return chainChoice{chain: chains[i], index: i, reason: "a certificate issued by " + cn}
				}
			}
		}
	}
	for _, cn := range pref.RootCommonName {
		for _, i := range order {
			if certs := decoded[i]; len(certs) > 0 && certs[len(certs)-1].Issuer.CommonName == cn {
				return chainChoice{chain: chains[i], index: i, reason: "root " + cn}
			}
		}
	}
	return chainChoice{chain: chains[order[0]], index: order[0],
		reason: "no chain matches the preferred common names; " + reason}
}

// parseChainPEM decodes every certificate of a PEM chain.
func parseChainPEM(chainPEM []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for rest := chainPEM; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, cert)
	}
	if len(certs) == 0 {
		return nil, errors.New("no certificate in the chain")
	}
	return certs, nil
}

// preferredChain picks, among the chains the CA offers, the one the
// policy's preferred_chains chooses, and records it on the order.
func (r *orderRun) preferredChain(chains []acme.Certificate) acme.Certificate {
	choice := selectChain(chains, r.w.opts.PreferredChains)
	if len(chains) > 1 {
		r.mu.Lock()
		r.order.Chain = choice.chain.URL
		r.mu.Unlock()
		r.w.logger.Info("certificate chain selected", zapOrder(r.order.ID),
			zap.Int("offered", len(chains)), zap.Int("chain", choice.index),
			zap.String("url", choice.chain.URL), zapReason(choice.reason))
	}
	return choice.chain
}
