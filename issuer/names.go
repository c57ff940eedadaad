package issuer

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"
	"golang.org/x/net/idna"
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
// obtained with the given challenge types. It is what PreCheck refuses: a
// name that is not one certflow accepts (CheckName), or one no enabled
// challenge type can validate.
func CanIssue(name string, challengeTypes []string) error {
	if err := CheckName(name); err != nil {
		return err
	}
	canHTTP := slices.Contains(challengeTypes, acme.ChallengeTypeHTTP01)
	canALPN := slices.Contains(challengeTypes, acme.ChallengeTypeTLSALPN01)
	canDNS := slices.Contains(challengeTypes, acme.ChallengeTypeDNS01)
	if isIPName(name) {
		if !canHTTP && !canALPN {
			return fmt.Errorf("%s: an IP address can only be validated with http-01 or tls-alpn-01, and both are disabled", name)
		}
		return nil
	}
	if strings.HasPrefix(name, "*.") && !canDNS {
		return fmt.Errorf("%s: a wildcard name can only be validated with dns-01, which is not configured", name)
	}
	// anything else (a single label, say) is the CA's to refuse: private
	// CAs may allow what public ones do not
	return nil
}

// csrIdentifiers returns the ACME identifiers of a CSR: its DNS names and IP
// addresses (certmagic builds CSRs with exactly one name, no common name).
// Each must be a name certflow accepts (CheckName): the identifiers become
// storage keys before anything else happens.
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
	for _, id := range ids {
		if err := CheckName(id.Value); err != nil {
			return nil, err
		}
	}
	return ids, nil
}

// One name, one identity. certflow keeps a name's resources under
// certmagic.StorageKeys.Safe(name), which lower-cases, turns "*" into
// "wildcard_" and ":" into "-", and drops every character other than
// letters, digits, "_", "@", "." and "-": "vic,tim.example.com" and
// "victim.example.com" would share one name record, one order, one backoff.
// So a name is accepted only as one of
//
//   - a DNS name: labels of lower-case letters, digits and hyphens, no label
//     starting or ending with a hyphen, none longer than 63 bytes, 253 bytes
//     in all, no trailing dot; internationalised labels only as punycode
//     A-labels (xn--…) that decode to a valid name and encode back to
//     themselves; hyphens in the third and fourth positions only in such
//     labels; "*" only as the whole leftmost label; no underscore (public CAs
//     refuse them, and "_" is what the storage form of "*" contains); the
//     last label not all digits (that is an IP address's shape);
//   - an IP address in canonical form (lower case, zeros compressed as RFC
//     5952 says, an IPv4-mapped IPv6 address as its IPv4 address), without
//     a zone.
//
// Over these, the storage form is one-to-one: a DNS name is its own storage
// form (a wildcard's has "wildcard_", which no other name can contain); an
// IPv4 address is too, and no DNS name has its shape; an IPv6 address's has
// hyphens for colons and no dot, and the one-label DNS names with that form
// (e.g. "fe80--1", the storage form of fe80::1) are refused.
// FuzzNameStorageForm checks exactly that.

// ErrInvalidName marks a name certflow does not accept.
var ErrInvalidName = errors.New("invalid name")

// DNS length limits (RFC 1035 section 2.3.4, the trailing dot left out).
const (
	maxLabelLen = 63
	maxNameLen  = 253
	// maxRawName bounds what NormalizeName reads of its input.
	maxRawName = 1024
)

// NormalizeName returns the form certflow knows a name by, for names typed
// by people (the admin API, the CLI): surrounding spaces and one trailing
// dot removed, lower case, internationalised labels as punycode A-labels,
// an IP address in canonical form. A name certflow does not accept is an
// error wrapping ErrInvalidName that says why.
func NormalizeName(raw string) (string, error) {
	if len(raw) > maxRawName {
		return "", invalidName(raw, fmt.Sprintf("longer than %d bytes", maxNameLen))
	}
	s := strings.TrimSpace(raw)
	if s == "" {
		return "", invalidName(raw, "empty name")
	}
	if addr, err := netip.ParseAddr(s); err == nil {
		if addr.Zone() != "" {
			return "", invalidName(raw, "an IP address with a zone: certificates name addresses without one")
		}
		return addr.Unmap().String(), nil
	} else if strings.Contains(s, ":") {
		// a DNS name never has a colon
		return "", invalidName(raw, "not an IP address: "+strings.TrimPrefix(err.Error(), "ParseAddr("+strconv.Quote(s)+"): "))
	}
	s = strings.TrimSuffix(s, ".")
	wildcard := strings.HasPrefix(s, "*.")
	base := strings.TrimPrefix(s, "*.")
	if isASCII(base) {
		base = strings.ToLower(base)
	} else {
		a, err := idna.Lookup.ToASCII(base)
		if err != nil {
			return "", invalidName(raw, "not a valid internationalised name: "+strings.TrimPrefix(err.Error(), "idna: "))
		}
		base = a
	}
	name := base
	if wildcard {
		name = "*." + base
	}
	if reason := dnsNameProblem(name); reason != "" {
		return "", invalidName(raw, reason)
	}
	return name, nil
}

// CheckName reports whether name is one certflow accepts exactly as it is:
// the form NormalizeName returns. It is the check for names that arrive
// from certmagic (PreCheck, the CSR in Issue), which must not be rewritten:
// certmagic keeps its own lock and certificate under the name it used.
func CheckName(name string) error {
	norm, err := NormalizeName(name)
	if err != nil {
		return err
	}
	if norm == name {
		return nil
	}
	switch {
	case !isASCII(name):
		return invalidName(name, fmt.Sprintf("internationalised names are accepted only as punycode A-labels: write %q", norm))
	case isIPName(norm):
		return invalidName(name, fmt.Sprintf("an IP address is accepted only in canonical form: write %q", norm))
	case strings.HasSuffix(name, "."):
		return invalidName(name, fmt.Sprintf("a name is accepted without its trailing dot: write %q", norm))
	}
	return invalidName(name, fmt.Sprintf("not in canonical form (lower case, no surrounding spaces): write %q", norm))
}

// dnsNameProblem says what is wrong with a lower-case ASCII DNS name (a
// wildcard one included), or returns "" when nothing is.
func dnsNameProblem(name string) string {
	if len(name) > maxNameLen {
		return fmt.Sprintf("longer than %d bytes", maxNameLen)
	}
	labels := strings.Split(strings.TrimPrefix(name, "*."), ".")
	for _, l := range labels {
		if reason := labelProblem(l); reason != "" {
			if l == "" {
				return reason
			}
			return fmt.Sprintf("label %q: %s", l, reason)
		}
	}
	if last := labels[len(labels)-1]; strings.Trim(last, "0123456789") == "" {
		return fmt.Sprintf("its last label %q is all digits: neither a DNS name nor an IP address in canonical form", last)
	}
	if len(labels) == 1 {
		if ip, ok := ipOfStorageForm(labels[0]); ok {
			return fmt.Sprintf("%q is how certflow stores the IP address %s: a DNS name may not take its place", labels[0], ip)
		}
	}
	return ""
}

// labelProblem says what is wrong with one label of a DNS name, or returns
// "" when nothing is.
func labelProblem(l string) string {
	switch {
	case l == "":
		return "an empty label (a leading dot, or two dots in a row)"
	case len(l) > maxLabelLen:
		return fmt.Sprintf("longer than %d bytes", maxLabelLen)
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		switch {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-':
		case 'A' <= c && c <= 'Z':
			return "upper case: certflow knows names in lower case"
		case c == '_':
			return "an underscore: CAs issue only for letters, digits and hyphens"
		case c == '*':
			return "a wildcard \"*\" is allowed only as the whole leftmost label"
		default:
			return fmt.Sprintf("the character %q: a DNS name has only letters, digits and hyphens", rune(c))
		}
	}
	switch {
	case l[0] == '-', l[len(l)-1] == '-':
		return "starts or ends with a hyphen"
	case len(l) >= 4 && l[2:4] == "--" && !strings.HasPrefix(l, "xn--"):
		return "hyphens in the third and fourth positions are reserved for punycode (xn--) labels"
	case strings.HasPrefix(l, "xn--"):
		return aLabelProblem(l)
	}
	return ""
}

// aLabelProblem checks a punycode label: it must decode to a valid
// internationalised label and encode back to exactly itself, so one name
// has one spelling.
func aLabelProblem(l string) string {
	u, err := idna.Registration.ToUnicode(l)
	if err != nil {
		return "not a valid punycode A-label: " + strings.TrimPrefix(err.Error(), "idna: ")
	}
	if a, err := idna.Registration.ToASCII(u); err != nil || a != l {
		return fmt.Sprintf("not the canonical punycode of %q", u)
	}
	return ""
}

// ipOfStorageForm returns the IP address whose storage form is label, if
// there is one: hyphens read back as the colons they replaced.
func ipOfStorageForm(label string) (string, bool) {
	if !strings.Contains(label, "-") {
		return "", false
	}
	addr, err := netip.ParseAddr(strings.ReplaceAll(label, "-", ":"))
	if err != nil || addr.Zone() != "" {
		return "", false
	}
	ip := addr.Unmap().String()
	return ip, certmagic.StorageKeys.Safe(ip) == label
}

// isIPName reports whether an accepted name is an IP address.
func isIPName(name string) bool {
	_, err := netip.ParseAddr(name)
	return err == nil
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// invalidName is the error of a refused name; the name is quoted (and cut
// short) so that whatever it holds is printable in logs and answers.
func invalidName(raw, reason string) error {
	shown := raw
	if len(shown) > 80 {
		shown = shown[:80] + "…"
	}
	return fmt.Errorf("%w %q: %s", ErrInvalidName, shown, reason)
}
