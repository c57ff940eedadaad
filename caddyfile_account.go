package certflow

import (
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"github.com/mholt/acmez/v3/acme"
)

// The Caddyfile subdirectives of the CA, the account and the certificate
// ordered (see UnmarshalCaddyfile for the grammar).

func (iss *Issuer) parseDir(d *caddyfile.Dispenser) error {
	if iss.CA != "" {
		return d.Errf("directory is already specified: %s", iss.CA)
	}
	if !d.AllArgs(&iss.CA) {
		return d.ArgErr()
	}
	return nil
}

func (iss *Issuer) parseEmail(d *caddyfile.Dispenser) error {
	if !d.AllArgs(&iss.Email) {
		return d.ArgErr()
	}
	return nil
}

func (iss *Issuer) parseEAB(d *caddyfile.Dispenser) error {
	eab := new(acme.EAB)
	if !d.AllArgs(&eab.KeyID, &eab.MACKey) {
		return d.ArgErr()
	}
	iss.ExternalAccount = eab
	return nil
}

// parseAccountKey takes the key itself, as the stock issuer's account_key;
// a file name there is refused with what to write instead.
func (iss *Issuer) parseAccountKey(d *caddyfile.Dispenser) error {
	if !d.AllArgs(&iss.AccountKey) {
		return d.ArgErr()
	}
	if !strings.Contains(iss.AccountKey, "-----BEGIN") && !strings.Contains(iss.AccountKey, "{") {
		return d.Errf("account_key takes the account's PEM-encoded private key itself, as the stock acme "+
			"issuer's account_key (e.g. {env.ACME_ACCOUNT_KEY}); to read it from a file, write "+
			"account_key_file %s", iss.AccountKey)
	}
	return nil
}

func (iss *Issuer) parseAccountKeyFile(d *caddyfile.Dispenser) error {
	if !d.AllArgs(&iss.AccountKeyFile) {
		return d.ArgErr()
	}
	return nil
}

func (iss *Issuer) parseTestDir(d *caddyfile.Dispenser) error {
	return d.Err("test_dir is not supported: certflow does not retry against a test CA before the CA " +
		"itself; a failing name waits out its failure backoff instead. Remove test_dir")
}

func (iss *Issuer) parseProfile(d *caddyfile.Dispenser) error {
	if !d.AllArgs(&iss.Profile) {
		return d.ArgErr()
	}
	return nil
}

func (iss *Issuer) parseLifetime(d *caddyfile.Dispenser) error {
	var s string
	if !d.AllArgs(&s) {
		return d.ArgErr()
	}
	dur, err := caddy.ParseDuration(s)
	if err != nil {
		return d.Errf("invalid lifetime duration '%s': %v", s, err)
	}
	if dur < 0 {
		return d.Errf("invalid lifetime duration '%s': must not be negative", s)
	}
	iss.CertificateLifetime = caddy.Duration(dur)
	return nil
}

func (iss *Issuer) parsePreferredChains(d *caddyfile.Dispenser) error {
	pref, err := caddytls.ParseCaddyfilePreferredChainsOptions(d)
	if err != nil {
		return err
	}
	iss.PreferredChains = pref
	return nil
}

func (iss *Issuer) parseTrustedRoots(d *caddyfile.Dispenser) error {
	files := d.RemainingArgs()
	if len(files) == 0 {
		return d.ArgErr()
	}
	iss.TrustedRootsPEMFiles = append(iss.TrustedRootsPEMFiles, files...)
	return nil
}

func (iss *Issuer) parseTimeout(d *caddyfile.Dispenser) error {
	dur, err := durationArg(d, "timeout")
	iss.ACMETimeout = dur
	return err
}

func (iss *Issuer) parseRequestTimeout(d *caddyfile.Dispenser) error {
	dur, err := durationArg(d, "request_timeout")
	iss.RequestTimeout = dur
	return err
}
