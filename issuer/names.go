package issuer

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"

	"github.com/mholt/acmez/v3/acme"
)

// CAKey derives a storage-safe key from a CA directory URL exactly the way
// certmagic's ACME issuer does: the host, then the path with slashes turned
// into hyphens. certflow uses it to find accounts the stock issuer stored.
func CAKey(ca string) string {
	key := ca
	if caURL, err := url.Parse(ca); err == nil {
		key = caURL.Host
		if caURL.Path != "" {
			repl := strings.NewReplacer("/", "-", "\\", "-")
			if p := strings.Trim(repl.Replace(caURL.Path), "-"); p != "" {
				key += "-" + p
			}
		}
	}
	return key
}

// CanIssue reports, without any network call, whether a name can ever be
// obtained with the given challenge types. It is what PreCheck refuses.
func CanIssue(name string, challengeTypes []string) error {
	if name == "" {
		return errors.New("empty name")
	}
	canHTTP := slices.Contains(challengeTypes, acme.ChallengeTypeHTTP01)
	canALPN := slices.Contains(challengeTypes, acme.ChallengeTypeTLSALPN01)
	canDNS := slices.Contains(challengeTypes, acme.ChallengeTypeDNS01)
	if ip := net.ParseIP(name); ip != nil {
		if !canHTTP && !canALPN {
			return fmt.Errorf("%s: an IP address can only be validated with http-01 or tls-alpn-01, and both are disabled", name)
		}
		return nil
	}
	if strings.HasPrefix(name, "*.") {
		if !canDNS {
			return fmt.Errorf("%s: a wildcard name can only be validated with dns-01, which is not configured", name)
		}
		name = name[2:]
	}
	if strings.Contains(name, "*") {
		return fmt.Errorf("%s: a wildcard is only allowed as the whole leftmost label", name)
	}
	if strings.HasSuffix(name, ".") || strings.HasPrefix(name, ".") || strings.Contains(name, "..") {
		return fmt.Errorf("%s: not a valid DNS name", name)
	}
	// anything else (a single label, say) is the CA's to refuse: private
	// CAs may allow what public ones do not
	return nil
}

// csrIdentifiers returns the ACME identifiers of a CSR: its DNS names and IP
// addresses (certmagic builds CSRs with exactly one name, no common name).
func csrIdentifiers(csr *x509.CertificateRequest) ([]acme.Identifier, error) {
	var ids []acme.Identifier
	seen := map[string]bool{}
	add := func(typ, value string) {
		if !seen[typ+value] {
			seen[typ+value] = true
			ids = append(ids, acme.Identifier{Type: typ, Value: value})
		}
	}
	if csr.Subject.CommonName != "" {
		if ip := net.ParseIP(csr.Subject.CommonName); ip != nil {
			add("ip", ip.String())
		} else {
			add("dns", strings.ToLower(csr.Subject.CommonName))
		}
	}
	for _, n := range csr.DNSNames {
		add("dns", strings.ToLower(n))
	}
	for _, ip := range csr.IPAddresses {
		add("ip", ip.String())
	}
	if len(ids) == 0 {
		return nil, errors.New("the CSR names no DNS name or IP address")
	}
	return ids, nil
}
