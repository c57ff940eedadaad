package issuer

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/caddyserver/certmagic"
)

func TestNormalizeName(t *testing.T) {
	tests := []struct {
		raw, want string
		// reason is a piece of the error, for a refused name
		reason string
	}{
		{raw: "example.com", want: "example.com"},
		{raw: "Example.COM.", want: "example.com"},
		{raw: "  example.com ", want: "example.com"},
		{raw: "*.example.com", want: "*.example.com"},
		{raw: "*.Example.com.", want: "*.example.com"},
		{raw: "localhost", want: "localhost"},
		{raw: "a-b.example", want: "a-b.example"},
		{raw: "Bücher.example", want: "xn--bcher-kva.example"},
		{raw: "*.bücher.example", want: "*.xn--bcher-kva.example"},
		{raw: "xn--bcher-kva.example", want: "xn--bcher-kva.example"},
		{raw: "ｅxample.com", want: "example.com"}, // fullwidth, mapped as browsers do
		{raw: "192.0.2.1", want: "192.0.2.1"},
		{raw: "2001:DB8::1", want: "2001:db8::1"},
		{raw: "2001:db8:0:0:0:0:0:1", want: "2001:db8::1"},
		{raw: "::ffff:192.0.2.1", want: "192.0.2.1"},
		{raw: "0-0-0-0-0-0-0-1", want: "0-0-0-0-0-0-0-1"}, // not the storage form of ::1 ("--1")
		{raw: strings.Repeat("a", 63) + ".example", want: strings.Repeat("a", 63) + ".example"},

		{raw: "", reason: "empty"},
		{raw: "   ", reason: "empty"},
		{raw: "vic,tim.example.com", reason: `character ','`},
		{raw: "vic~tim.example.com", reason: `character '~'`},
		{raw: "vic/tim.example.com", reason: `character '/'`},
		{raw: "vic tim.example.com", reason: `character ' '`},
		{raw: "victim.example.com\x00", reason: `character '\x00'`},
		{raw: "vic@tim.example.com", reason: `character '@'`},
		{raw: "vic+tim.example.com", reason: `character '+'`},
		{raw: "a_b.example.com", reason: "underscore"},
		{raw: "wildcard_.example.com", reason: "underscore"},
		{raw: "a.*.example.com", reason: "wildcard"},
		{raw: "*a.example.com", reason: "wildcard"},
		{raw: "*", reason: "wildcard"},
		{raw: "*.*.example.com", reason: "wildcard"},
		{raw: "-a.example.com", reason: "hyphen"},
		{raw: "a-.example.com", reason: "hyphen"},
		{raw: "ab--c.example.com", reason: "third and fourth"},
		{raw: "xn--abc.example.com", reason: "punycode"},
		{raw: "xn--bcher-KVA.example", want: "xn--bcher-kva.example"},
		{raw: "xn--victim-.example.com", reason: "hyphen"}, // would decode to ASCII "victim"
		{raw: "a..example.com", reason: "empty label"},
		{raw: ".example.com", reason: "empty label"},
		{raw: "example.com..", reason: "empty label"},
		{raw: strings.Repeat("a", 64) + ".example", reason: "longer than 63"},
		{raw: strings.Repeat("a.", 126) + "ab", reason: "longer than 253"},
		{raw: "1.2.3.04", reason: "all digits"},
		{raw: "01.2.3.4", reason: "all digits"},
		{raw: "example.123", reason: "all digits"},
		{raw: "fe80--1", reason: "IP address fe80::1"},
		{raw: "1-2-3-4-5-6-7-8", reason: "IP address 1:2:3:4:5:6:7:8"},
		{raw: "fe80::1%eth0", reason: "zone"},
		{raw: "[::1]", reason: "not an IP address"},
		{raw: "example.com:443", reason: "not an IP address"},
		{raw: "vic,tim.bücher.example", reason: "internationalised"},
		{raw: strings.Repeat("a", 2000), reason: "longer than 253"},
	}
	for _, tt := range tests {
		got, err := NormalizeName(tt.raw)
		if tt.reason == "" {
			if err != nil || got != tt.want {
				t.Errorf("NormalizeName(%q) = %q, %v; want %q", tt.raw, got, err, tt.want)
			}
			continue
		}
		if err == nil {
			t.Errorf("NormalizeName(%q) = %q, want it refused (%s)", tt.raw, got, tt.reason)
			continue
		}
		if !errors.Is(err, ErrInvalidName) || !strings.Contains(err.Error(), tt.reason) {
			t.Errorf("NormalizeName(%q) = %v, want ErrInvalidName saying %q", tt.raw, err, tt.reason)
		}
	}
}

// TestCheckNameAcceptsOnlyCanonical: what arrives from certmagic is not
// rewritten, only accepted or refused, with the form to write instead.
func TestCheckNameAcceptsOnlyCanonical(t *testing.T) {
	for _, ok := range []string{"example.com", "*.example.com", "xn--bcher-kva.example", "192.0.2.1", "2001:db8::1", "::1", "localhost"} {
		if err := CheckName(ok); err != nil {
			t.Errorf("CheckName(%q) = %v", ok, err)
		}
	}
	for raw, hint := range map[string]string{
		"Example.com":         `write "example.com"`,
		"example.com.":        `trailing dot: write "example.com"`,
		"bücher.example":      `punycode A-labels: write "xn--bcher-kva.example"`,
		"::ffff:192.0.2.1":    `canonical form: write "192.0.2.1"`,
		"2001:DB8::1":         `write "2001:db8::1"`,
		" example.com":        `write "example.com"`,
		"vic,tim.example.com": "character ','",
	} {
		err := CheckName(raw)
		if !errors.Is(err, ErrInvalidName) || !strings.Contains(err.Error(), hint) {
			t.Errorf("CheckName(%q) = %v, want it refused saying %q", raw, err, hint)
		}
	}
}

// TestCSRIdentifiersRefuseAliases: the engine takes its identifiers (and
// so its storage keys) from the CSR; a name sharing another's storage key
// never gets that far.
func TestCSRIdentifiersRefuseAliases(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csrFor := func(dns []string, ips []net.IP) *x509.CertificateRequest {
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{}, DNSNames: dns, IPAddresses: ips}, key)
		if err != nil {
			t.Fatal(err)
		}
		csr, err := x509.ParseCertificateRequest(der)
		if err != nil {
			t.Fatal(err)
		}
		return csr
	}
	if ids, err := csrIdentifiers(csrFor([]string{"victim.example.com"}, nil)); err != nil || len(ids) != 1 || ids[0].Value != "victim.example.com" {
		t.Fatalf("a valid CSR: %v, %v", ids, err)
	}
	if ids, err := csrIdentifiers(csrFor(nil, []net.IP{net.ParseIP("fe80::1")})); err != nil || ids[0].Value != "fe80::1" {
		t.Fatalf("an IPv6 CSR: %v, %v", ids, err)
	}
	for _, alias := range []string{"vic,tim.example.com", "victim.example.com/", "vic~tim.example.com", "fe80--1", "wildcard_.example.com"} {
		_, err := csrIdentifiers(csrFor([]string{alias}, nil))
		if !errors.Is(err, ErrInvalidName) {
			t.Errorf("CSR for %q (stored as %q): %v, want ErrInvalidName", alias, certmagic.StorageKeys.Safe(alias), err)
		}
	}
}

func FuzzNameStorageForm(f *testing.F) {
	// the aliasing cases: pairs that share a storage form, with at most
	// one of each pair a name certflow may accept
	for _, seed := range [][2]string{
		{"vic,tim.example.com", "victim.example.com"},
		{"victim.example.com/", "victim.example.com"},
		{"vic~tim.example.com", "victim.example.com"},
		{"VICTIM.example.com", "victim.example.com"},
		{"victim.example.com.", "victim.example.com"},
		{" victim.example.com", "victim.example.com"},
		{"a..b.example", "ab.example"},
		{"fe80::1", "fe80--1"},
		{"1:2:3:4:5:6:7:8", "1-2-3-4-5-6-7-8"},
		{"::1", "--1"},
		{"*.example.com", "wildcard_.example.com"},
		{"a b.example", "a_b.example"},
		{"a+b.example", "a_plus_b.example"},
		{"::ffff:192.0.2.1", "192.0.2.1"},
		{"192.0.2.1", "192.0.2.01"},
		{"bücher.example", "xn--bcher-kva.example"},
		{"bücher.example", "bcher.example"},
		{"fe80::1%eth0", "fe80::1"},
		{"xn--victim-.example.com", "victim.example.com"},
		{"K.example", "k.example"}, // U+212A KELVIN SIGN lower-cases to "k"
	} {
		f.Add(seed[0], seed[1])
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		na, errA := NormalizeName(a) // must not panic, whatever a is
		_ = CheckName(a)
		if errA != nil {
			if !errors.Is(errA, ErrInvalidName) {
				t.Fatalf("NormalizeName(%q) = %v, not an ErrInvalidName", a, errA)
			}
			return
		}
		// what NormalizeName returns is accepted as it is, and is its own
		// normal form
		if err := CheckName(na); err != nil {
			t.Fatalf("NormalizeName(%q) = %q, which CheckName refuses: %v", a, na, err)
		}
		if again, err := NormalizeName(na); err != nil || again != na {
			t.Fatalf("NormalizeName(%q) = %q, but NormalizeName(%q) = %q, %v", a, na, na, again, err)
		}
		key := certmagic.StorageKeys.Safe(na)
		if key == "" || strings.ContainsAny(key, "/\\") || strings.Contains(key, "..") {
			t.Fatalf("%q is stored as %q: not one safe path segment", na, key)
		}
		// the one-to-one property, against b and against every name that
		// could read back from a's storage form
		candidates := []string{b, key,
			strings.ReplaceAll(key, "-", ":"),
			strings.Replace(key, "wildcard_", "*", 1),
			strings.ToUpper(key),
		}
		for _, c := range candidates {
			if CheckName(c) != nil {
				continue
			}
			if certmagic.StorageKeys.Safe(c) == key && c != na {
				t.Fatalf("%q and %q are both accepted and share the storage form %q", na, c, key)
			}
		}
	})
}
