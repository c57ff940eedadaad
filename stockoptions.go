package certflow

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/certflow/certflow/issuer"
)

// The options certflow shares with Caddy's stock acme issuer
// (caddytls.ACMEIssuer), with their stock names and meanings. Every field of
// the stock issuer's JSON is accepted here with that meaning, or refused at
// Validate with an error that names it and says why
// (TestStockFieldParity keeps that true as Caddy adds fields).

// errTestCA refuses the stock issuer's test CA.
var errTestCA = errors.New("test_ca: certflow does not retry against a test CA before the CA itself " +
	"(the stock acme issuer's fallback): a failing name waits out its failure backoff instead, and the " +
	"self-check catches most mistakes before the CA sees them; remove test_ca (test_dir in a Caddyfile)")

// provisionStockOptions checks the account key, loads the network proxy
// module (iss.proxy, for the engine's HTTP client), and warns about the
// meaning acme_timeout took.
func (iss *Issuer) provisionStockOptions(ctx caddy.Context) error {
	if err := checkAccountKey(iss.AccountKey, iss.AccountKeyFile); err != nil {
		return err
	}
	if len(iss.NetworkProxyRaw) > 0 {
		// LoadModule clears the raw JSON: take the engine pool's key first,
		// a digest (a proxy URL may hold credentials)
		sum := sha256.Sum256(iss.NetworkProxyRaw)
		iss.proxyKey = "proxy:" + hex.EncodeToString(sum[:8])
		mod, err := ctx.LoadModule(iss, "NetworkProxyRaw")
		if err != nil {
			return fmt.Errorf("network_proxy: loading the proxy module: %w", err)
		}
		producer, ok := mod.(caddy.ProxyFuncProducer)
		if !ok {
			return fmt.Errorf("network_proxy: module %T does not produce a proxy function", mod)
		}
		iss.proxy = producer.ProxyFunc()
	}
	if iss.ACMETimeout > 0 && iss.RequestTimeout == 0 {
		// the same spelling meant something else before: say so, once per
		// config load, rather than change its meaning silently
		iss.logger.Warn("acme_timeout (Caddyfile: timeout) has the stock acme issuer's meaning: how long the CA may "+
			"take to validate a challenge or issue the certificate; the timeout of each request to the CA, "+
			"which certflow used to call acme_timeout, is now request_timeout",
			zap.Duration("acme_timeout", time.Duration(iss.ACMETimeout)))
	}
	return nil
}

// checkAccountKey refuses an account key that cannot be one, before any
// request: both forms at once, or account_key holding something other than
// a PEM private key (a file name is the likely mistake, from the time
// certflow's Caddyfile account_key took a file). The key is never echoed.
func checkAccountKey(pemText, file string) error {
	if pemText == "" {
		return nil
	}
	if file != "" {
		return errors.New("account_key and account_key_file are both set: give the account's key one way")
	}
	if !strings.Contains(pemText, "-----BEGIN") {
		return errors.New("account_key holds the account's PEM-encoded private key itself (the stock acme issuer's " +
			"meaning), and this value is not PEM; to read the key from a file, write account_key_file <path> " +
			"(or account_key {file.<path>})")
	}
	if _, err := certmagic.PEMDecodePrivateKey([]byte(pemText)); err != nil {
		return errors.New("account_key: the PEM block is not a usable private key")
	}
	return nil
}

// validateStockOptions checks the stock issuer's options for values that
// cannot work, and refuses the ones certflow does not support.
func (iss *Issuer) validateStockOptions() error {
	if iss.TestCA != "" {
		return errTestCA
	}
	for _, d := range []struct {
		name string
		v    caddy.Duration
	}{
		{"acme_timeout", iss.ACMETimeout},
		{"request_timeout", iss.RequestTimeout},
		{"certificate_lifetime", iss.CertificateLifetime},
	} {
		if d.v < 0 {
			return fmt.Errorf("%s must not be negative, got %s", d.name, time.Duration(d.v))
		}
	}
	if strings.TrimSpace(iss.Profile) != iss.Profile || strings.ContainsAny(iss.Profile, " \t\r\n") {
		return fmt.Errorf("profile %q: an ACME profile name has no spaces", iss.Profile)
	}
	if c := iss.Challenges; c != nil {
		for _, t := range []struct {
			name string
			cfg  *ChallengeTypeConfig
		}{{"http", c.HTTP}, {"tls-alpn", c.TLSALPN}} {
			if t.cfg == nil {
				continue
			}
			if t.cfg.Disabled && t.cfg.Enabled {
				return fmt.Errorf("challenges.%s is both disabled and enabled", t.name)
			}
			if t.cfg.AlternatePort < 0 || t.cfg.AlternatePort > 65535 {
				return fmt.Errorf("challenges.%s.alternate_port %d is out of range", t.name, t.cfg.AlternatePort)
			}
		}
	}
	if p := iss.PreferredChains; p != nil && p.Smallest == nil && len(p.RootCommonName) == 0 && len(p.AnyCommonName) == 0 {
		return errors.New("preferred_chains is empty: give smallest, root_common_name or any_common_name")
	}
	return nil
}

// stockOrderOptions copies into opts what new orders and their chains take
// from the stock options.
func (iss *Issuer) stockOrderOptions(opts *issuer.Options) {
	opts.Profile = iss.Profile
	opts.CertificateLifetime = time.Duration(iss.CertificateLifetime)
	opts.PollTimeout = time.Duration(iss.ACMETimeout)
	if p := iss.PreferredChains; p != nil {
		opts.PreferredChains = issuer.ChainPreference{
			Smallest:       p.Smallest,
			RootCommonName: p.RootCommonName,
			AnyCommonName:  p.AnyCommonName,
		}
	}
}
