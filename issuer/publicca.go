package issuer

import (
	"fmt"
	"strings"

	"github.com/caddyserver/certmagic"
)

// publicCAs are the well-known public CAs, by a substring of their directory
// URL, and whether each issues certificates for IP addresses (RFC 8738).
// The list and the rule in CanIssueFrom are the stock acme issuer's
// (certmagic v0.25.6, ACMEIssuer.PreCheck), so certflow refuses up front
// exactly the names the stock issuer refuses.
var publicCAs = []struct {
	urlPart  string
	ipCerts  bool
	whyNoIPs string
}{
	{"api.letsencrypt.org", true, ""},
	{"acme.zerossl.com", false, "ZeroSSL issues IP certificates only through its API, not over ACME"},
	{"api.pki.goog", true, ""},
	{"api.buypass.com", false, "Buypass does not issue IP certificates over ACME"},
	{"acme.ssl.com", false, "SSL.com does not issue IP certificates over ACME"},
}

// CanIssueFrom reports, without any network call, whether a well-known
// public CA could ever issue a certificate for name: never for internal
// names (localhost, *.local, *.internal, *.home.arpa, loopback, private
// and link-local addresses), and never for an IP address from a CA that
// does not issue IP certificates. For any other CA (a private CA, a test
// CA) every name passes: it is the CA's to refuse.
func CanIssueFrom(ca, name string) error {
	for _, pub := range publicCAs {
		if !strings.Contains(ca, pub.urlPart) {
			continue
		}
		if !certmagic.SubjectQualifiesForPublicCert(name) {
			return fmt.Errorf("%s: a public CA (%s) never issues a certificate for this name "+
				"(internal names and private, loopback and link-local addresses do not qualify)", name, ca)
		}
		if !pub.ipCerts && certmagic.SubjectIsIP(name) {
			return fmt.Errorf("%s: %s does not issue certificates for IP addresses: %s", name, ca, pub.whyNoIPs)
		}
		return nil
	}
	return nil
}
