package certflow

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// testCertPEM is a self-signed certificate for name, valid until notAfter.
func testCertPEM(t *testing.T, name string, serial int64, notAfter time.Time) []byte {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), DNSNames: []string{name},
		NotBefore: notAfter.Add(-90 * 24 * time.Hour), NotAfter: notAfter}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// storeSite writes a certificate, key and metadata for name under issuerKey.
func storeSite(t *testing.T, s certmagic.Storage, issuerKey, name string, certPEM []byte) {
	t.Helper()
	ctx := context.Background()
	meta, _ := json.Marshal(map[string]any{"sans": []string{name}})
	for k, v := range map[string][]byte{
		certmagic.StorageKeys.SiteCert(issuerKey, name):       certPEM,
		certmagic.StorageKeys.SitePrivateKey(issuerKey, name): []byte("key of " + name),
		certmagic.StorageKeys.SiteMeta(issuerKey, name):       meta,
	} {
		if err := s.Store(ctx, k, v); err != nil {
			t.Fatal(err)
		}
	}
}

// TestMigrationCopiesOnce: certificates under the old certflow key are
// copied to the shared key (certificate, key and metadata), one that
// expires later under the shared key is kept, nothing is deleted, and the
// marker ends the next run before it lists anything.
func TestMigrationCopiesOnce(t *testing.T) {
	ctx := context.Background()
	storage := &certmagic.FileStorage{Path: t.TempDir()}
	const from, to = "certflow-ca.example-dir", "ca.example-dir"
	now := time.Now()
	storeSite(t, storage, from, "a.example", testCertPEM(t, "a.example", 1, now.Add(60*24*time.Hour)))
	storeSite(t, storage, from, "b.example", testCertPEM(t, "b.example", 2, now.Add(30*24*time.Hour)))
	newer := testCertPEM(t, "b.example", 3, now.Add(80*24*time.Hour)) // the stock issuer renewed it since
	storeSite(t, storage, to, "b.example", newer)
	storeSite(t, storage, from, "c.example", testCertPEM(t, "c.example", 4, now.Add(50*24*time.Hour)))
	older := testCertPEM(t, "c.example", 5, now.Add(10*24*time.Hour))
	storeSite(t, storage, to, "c.example", older)

	m := certMigration{storage: storage, from: from, to: to, logger: zap.NewNop()}
	rec, err := m.run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Copied != 2 || rec.Kept != 1 || rec.Failed != 0 {
		t.Errorf("copied %d, kept %d, failed %d; want 2, 1, 0", rec.Copied, rec.Kept, rec.Failed)
	}
	for name, wantSerial := range map[string]int64{"a.example": 1, "b.example": 3, "c.example": 4} {
		b, err := storage.Load(ctx, certmagic.StorageKeys.SiteCert(to, name))
		if err != nil {
			t.Fatalf("%s under the shared key: %v", name, err)
		}
		leaf, _ := leafOf(b)
		if leaf.SerialNumber.Int64() != wantSerial {
			t.Errorf("%s under the shared key: serial %d, want %d", name, leaf.SerialNumber, wantSerial)
		}
		if !storage.Exists(ctx, certmagic.StorageKeys.SitePrivateKey(to, name)) || !storage.Exists(ctx, certmagic.StorageKeys.SiteMeta(to, name)) {
			t.Errorf("%s: key or metadata not copied", name)
		}
		if !storage.Exists(ctx, certmagic.StorageKeys.SiteCert(from, name)) {
			t.Errorf("%s: the old key's certificate was deleted", name)
		}
	}
	if k, _ := storage.Load(ctx, certmagic.StorageKeys.SitePrivateKey(to, "a.example")); string(k) != "key of a.example" {
		t.Errorf("the copied key is %q", k)
	}

	// a certificate added under the old key now is not copied: the marker
	// says the migration is done
	storeSite(t, storage, from, "d.example", testCertPEM(t, "d.example", 6, now.Add(60*24*time.Hour)))
	if rec, err := m.run(ctx); err != nil || rec.Copied+rec.Kept != 0 {
		t.Errorf("the second run: %+v, %v", rec, err)
	}
	if storage.Exists(ctx, certmagic.StorageKeys.SiteCert(to, "d.example")) {
		t.Error("the second run copied again")
	}
}

// TestMigrationWithNothingToCopy: a storage without the old key gets its
// marker, and nothing else.
func TestMigrationWithNothingToCopy(t *testing.T) {
	ctx := context.Background()
	storage := &certmagic.FileStorage{Path: t.TempDir()}
	m := certMigration{storage: storage, from: "certflow-x-dir", to: "x-dir", logger: zap.NewNop()}
	if rec, err := m.run(ctx); err != nil || rec.Copied != 0 {
		t.Fatalf("%+v, %v", rec, err)
	}
	if done, err := m.done(ctx); !done || err != nil {
		t.Errorf("marker: %v, %v", done, err)
	}
}

// TestRenewalJournal: entries older than the journal's age are pruned, a
// name's new entry carries the serials its earlier entries replaced and
// their own (at most maxReplacedSerials), and the journal is capped.
func TestRenewalJournal(t *testing.T) {
	ctx := context.Background()
	storage := &certmagic.FileStorage{Path: t.TempDir()}
	const key = "certflow-ca.example-dir"
	now := time.Now().UTC()
	note := func(e renewedEntry) {
		t.Helper()
		if err := noteRenewal(ctx, storage, key, e); err != nil {
			t.Fatal(err)
		}
	}
	note(renewedEntry{Name: "old.example", Serial: "01", At: now.Add(-2 * journalMaxAge)})
	note(renewedEntry{Name: "a.example", Serial: "0a", Replaced: []string{"09"}, At: now})
	note(renewedEntry{Name: "a.example", Serial: "0b", Replaced: []string{"0a"}, At: now})
	note(renewedEntry{Name: "b.example", Serial: "1b", At: now})
	j, err := loadJournal(ctx, storage, key)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]renewedEntry{}
	for _, e := range j.Renewals {
		byName[e.Name] = e
	}
	if len(j.Renewals) != 2 || byName["old.example"].Name != "" {
		t.Errorf("journal: %+v, want a.example and b.example only", j.Renewals)
	}
	if a := byName["a.example"]; a.Serial != "0b" || len(a.Replaced) != 2 || a.Replaced[0] != "09" || a.Replaced[1] != "0a" {
		t.Errorf("a.example: %+v, want serial 0b replacing 09 and 0a", a)
	}
	for i := range maxReplacedSerials + 3 {
		note(renewedEntry{Name: "c.example", Serial: string(rune('A' + i)), At: now})
	}
	j, _ = loadJournal(ctx, storage, key)
	for _, e := range j.Renewals {
		if e.Name == "c.example" && len(e.Replaced) != maxReplacedSerials {
			t.Errorf("c.example replaced %d serials, want at most %d", len(e.Replaced), maxReplacedSerials)
		}
	}
}
