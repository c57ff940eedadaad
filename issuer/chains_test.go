package issuer

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/mholt/acmez/v3/acme"
)

// testChain describes a PEM chain: a leaf, then its intermediates up to the
// one the root named root issued (the root itself is not in the chain, as
// ACME CAs send it). The number of intermediates sets the size.
type testChain struct {
	url           string
	root          string
	intermediates []string // from the leaf's issuer up
}

func buildChain(t *testing.T, c testChain) acme.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	// issuers, from the root down to the leaf's issuer
	names := append([]string{c.root}, reverse(c.intermediates)...)
	var parent *x509.Certificate
	var certs [][]byte
	for i, name := range names {
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(int64(i + 1)), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
		}
		signer := tmpl
		if parent != nil {
			signer = parent
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, key)
		if err != nil {
			t.Fatal(err)
		}
		cert, _ := x509.ParseCertificate(der)
		parent = cert
		if i > 0 { // the root is not sent
			certs = append(certs, der)
		}
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(100), DNSNames: []string{"a.test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
	}
	leaf, err := x509.CreateCertificate(rand.Reader, leafTmpl, parent, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: leaf})
	for i := len(certs) - 1; i >= 0; i-- {
		_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: certs[i]})
	}
	return acme.Certificate{URL: c.url, ChainPEM: buf.Bytes()}
}

func reverse(s []string) []string {
	out := make([]string, len(s))
	for i, v := range s {
		out[len(s)-1-i] = v
	}
	return out
}

func TestSelectChain(t *testing.T) {
	yes, no := true, false
	// default: long chain to Root A; alt1: short chain to Root B; alt2:
	// medium chain to Root C through "Cross X"
	chains := []acme.Certificate{
		buildChain(t, testChain{url: "default", root: "Root A", intermediates: []string{"Int A1", "Int A2", "Int A3"}}),
		buildChain(t, testChain{url: "alt1", root: "Root B", intermediates: []string{"Int B1"}}),
		buildChain(t, testChain{url: "alt2", root: "Root C", intermediates: []string{"Int C1", "Cross X"}}),
	}
	for _, tc := range []struct {
		name string
		pref ChainPreference
		want string
	}{
		{"no preference: the CA's default", ChainPreference{}, "default"},
		{"smallest", ChainPreference{Smallest: &yes}, "alt1"},
		{"largest (smallest false)", ChainPreference{Smallest: &no}, "default"},
		{"root common name", ChainPreference{RootCommonName: []string{"Root C"}}, "alt2"},
		{"root common names tried in order", ChainPreference{RootCommonName: []string{"Root Z", "Root B", "Root C"}}, "alt1"},
		{"an intermediate is not a root", ChainPreference{RootCommonName: []string{"Int C1"}}, "default"},
		{"any common name matches an intermediate issuer", ChainPreference{AnyCommonName: []string{"Cross X"}}, "alt2"},
		{"any common name matches the root issuer", ChainPreference{AnyCommonName: []string{"Root B"}}, "alt1"},
		{"any before root", ChainPreference{AnyCommonName: []string{"Int A1"}, RootCommonName: []string{"Root B"}}, "default"},
		{"no match: first", ChainPreference{AnyCommonName: []string{"Nobody"}}, "default"},
		{"no match after sorting: smallest first", ChainPreference{Smallest: &yes, RootCommonName: []string{"Nobody"}}, "alt1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := append([]acme.Certificate(nil), chains...)
			got := selectChain(in, tc.pref)
			if got.chain.URL != tc.want {
				t.Errorf("picked %s (%s), want %s", got.chain.URL, got.reason, tc.want)
			}
			if chains[got.index].URL != got.chain.URL {
				t.Errorf("index %d does not point at the chosen chain", got.index)
			}
			for i := range in {
				if in[i].URL != chains[i].URL {
					t.Fatalf("selectChain reordered its argument")
				}
			}
		})
	}

	t.Run("one chain: used whatever the preference", func(t *testing.T) {
		got := selectChain(chains[1:2], ChainPreference{RootCommonName: []string{"Root A"}})
		if got.chain.URL != "alt1" {
			t.Errorf("picked %s", got.chain.URL)
		}
	})
	t.Run("an undecodable chain matches nothing and breaks nothing", func(t *testing.T) {
		bad := acme.Certificate{URL: "bad", ChainPEM: []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")}
		got := selectChain([]acme.Certificate{bad, chains[2]}, ChainPreference{RootCommonName: []string{"Root C"}})
		if got.chain.URL != "alt2" {
			t.Errorf("picked %s", got.chain.URL)
		}
		got = selectChain([]acme.Certificate{bad, chains[2]}, ChainPreference{RootCommonName: []string{"Nobody"}})
		if got.chain.URL != "bad" || !strings.Contains(got.reason, "no chain matches") {
			t.Errorf("picked %s (%s), want the first", got.chain.URL, got.reason)
		}
	})
	t.Run("sorted first, then matched in that order", func(t *testing.T) {
		short := buildChain(t, testChain{url: "short", root: "Root A", intermediates: []string{"Int S"}})
		long := chains[0] // also to Root A
		got := selectChain([]acme.Certificate{long, short}, ChainPreference{Smallest: &yes, RootCommonName: []string{"Root A"}})
		if got.chain.URL != "short" || got.index != 1 {
			t.Errorf("picked %s at %d, want short at 1", got.chain.URL, got.index)
		}
		got = selectChain([]acme.Certificate{long, short}, ChainPreference{RootCommonName: []string{"Root A"}})
		if got.chain.URL != "default" {
			t.Errorf("unsorted: picked %s, want the CA's first", got.chain.URL)
		}
	})
	t.Run("ties keep the CA's order", func(t *testing.T) {
		a := acme.Certificate{URL: "a", ChainPEM: []byte("xxxx")}
		b := acme.Certificate{URL: "b", ChainPEM: []byte("yyyy")}
		if got := selectChain([]acme.Certificate{a, b}, ChainPreference{Smallest: &yes}); got.chain.URL != "a" {
			t.Errorf("picked %s", got.chain.URL)
		}
	})
}
