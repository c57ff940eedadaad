package certflow

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"
)

// certflow once stored its certificates under an issuer key of its own,
// "certflow-<the CA's key>"; it now shares the stock acme issuer's, the
// CA's key (IssuerKey). certmagic loads certificates only under the issuer
// keys of a policy's issuers, and orders a new one for a name it finds
// none of: so the certificates stored under the old key are copied to the
// shared one, once per storage and CA, when a certflow issuer first gets
// its policy's config (SetConfig, while Caddy provisions: before certmagic
// looks for certificates). Once done, a config load costs one read of the
// marker per certflow issuer.
//
// The copy never deletes anything (the old key's files stay, for a
// rollback to a certflow that still reads them), never overwrites a
// certificate that expires later than the one it would copy (one the stock
// issuer or certflow stored under the shared key since), and is safe to
// repeat: a crash midway is finished by the next start. It runs under a
// storage lock of certflow's own, so the nodes of a cluster starting
// together copy once; the others wait and then find the marker,
// certflow/<old key>/migrations/shared-issuer-key.json, which ends every
// later run at the cost of one read. It is bounded: at most
// migrationWorkers copies at once, and migrationTimeout in all; a run cut
// short writes no marker, and the next start goes on.

const (
	migrationMarker  = "shared-issuer-key.json"
	migrationLock    = "certflow_migrate_shared_issuer_key_"
	migrationWorkers = 8
	migrationTimeout = 5 * time.Minute
)

// migrationRecord is the marker's content.
type migrationRecord struct {
	Version int       `json:"version"`
	From    string    `json:"from"`
	To      string    `json:"to"`
	Done    time.Time `json:"done"`
	Copied  int       `json:"copied"`
	Kept    int       `json:"kept"` // a newer certificate was under the shared key already
	Failed  int       `json:"failed"`
}

// migrateCertificates copies the certificates stored under the old
// certflow key to the shared one, once (see above). Failures are logged:
// SetConfig cannot fail, and a certificate not copied is re-ordered, not
// lost.
func (iss *Issuer) migrateCertificates(storage certmagic.Storage) {
	if storage == nil || iss.certKey == "" || iss.issuerKey == iss.certKey {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), migrationTimeout)
	defer cancel()
	m := certMigration{storage: storage, from: iss.issuerKey, to: iss.certKey, logger: iss.logger.Named("migrate")}
	rec, err := m.run(ctx)
	if err != nil {
		m.logger.Error("copying certificates to the issuer key shared with the acme issuer; certificates not copied will be ordered again",
			zap.String("from", m.from), zap.String("to", m.to), zap.Error(err))
		return
	}
	if rec.Copied+rec.Kept+rec.Failed > 0 {
		m.logger.Info("certificates copied to the issuer key shared with the acme issuer",
			zap.String("from", m.from), zap.String("to", m.to), zap.Int("copied", rec.Copied),
			zap.Int("kept_newer", rec.Kept), zap.Int("failed", rec.Failed))
	}
}

// certMigration copies certificates from one issuer key to another.
type certMigration struct {
	storage  certmagic.Storage
	from, to string
	logger   *zap.Logger
}

func (m certMigration) markerKey() string {
	return path.Join("certflow", certmagic.StorageKeys.Safe(m.from), "migrations", migrationMarker)
}

// run copies, unless the marker says it was done, and writes the marker.
func (m certMigration) run(ctx context.Context) (migrationRecord, error) {
	rec := migrationRecord{Version: 1, From: m.from, To: m.to}
	if done, err := m.done(ctx); err != nil || done {
		return rec, err
	}
	lock := migrationLock + certmagic.StorageKeys.Safe(m.from)
	if err := m.storage.Lock(ctx, lock); err != nil {
		return rec, fmt.Errorf("locking %s: %w", lock, err)
	}
	defer func() { _ = m.storage.Unlock(context.WithoutCancel(ctx), lock) }()
	if done, err := m.done(ctx); err != nil || done {
		return rec, err // another node did it while this one waited
	}
	sites, err := m.storage.List(ctx, certmagic.StorageKeys.CertsPrefix(m.from), false)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return rec, fmt.Errorf("listing %s: %w", certmagic.StorageKeys.CertsPrefix(m.from), err)
	}
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(migrationWorkers)
	for _, site := range sites {
		name := path.Base(site)
		g.Go(func() error {
			copied, err := m.copySite(gctx, name)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil:
				rec.Failed++
				m.logger.Warn("copying a certificate", zap.String("name", name), zap.Error(err))
			case copied:
				rec.Copied++
			default:
				rec.Kept++
			}
			return nil
		})
	}
	_ = g.Wait()
	if err := ctx.Err(); err != nil {
		return rec, fmt.Errorf("cut short after %d certificates: %w", rec.Copied+rec.Kept+rec.Failed, err)
	}
	if rec.Failed > 0 {
		return rec, fmt.Errorf("%d of %d certificates could not be copied (the next start tries again)", rec.Failed, len(sites))
	}
	rec.Done = time.Now().UTC()
	b, _ := json.Marshal(rec)
	if err := m.storage.Store(ctx, m.markerKey(), b); err != nil {
		return rec, fmt.Errorf("storing %s: %w", m.markerKey(), err)
	}
	return rec, nil
}

// done reports whether the marker is stored. A storage that cannot say is
// an error: copying blindly would be as wrong as not copying.
func (m certMigration) done(ctx context.Context) (bool, error) {
	_, err := m.storage.Load(ctx, m.markerKey())
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	}
	return false, fmt.Errorf("reading %s: %w", m.markerKey(), err)
}

// copySite copies the certificate, key and metadata of one name, unless
// the shared key holds a certificate of that name expiring no earlier. The
// certificate is written last: certmagic takes a name's files for a
// certificate only once all three are there.
func (m certMigration) copySite(ctx context.Context, name string) (bool, error) {
	keys := func(issuerKey string) (crt, key, meta string) {
		return certmagic.StorageKeys.SiteCert(issuerKey, name), certmagic.StorageKeys.SitePrivateKey(issuerKey, name),
			certmagic.StorageKeys.SiteMeta(issuerKey, name)
	}
	srcCrt, srcKey, srcMeta := keys(m.from)
	dstCrt, dstKey, dstMeta := keys(m.to)
	crt, err := m.storage.Load(ctx, srcCrt)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil // a folder without a certificate: nothing certmagic would load
	}
	if err != nil {
		return false, err
	}
	src, err := leafOf(crt)
	if err != nil {
		return false, fmt.Errorf("%s: %w", srcCrt, err)
	}
	if existing, err := m.storage.Load(ctx, dstCrt); err == nil {
		if dst, err := leafOf(existing); err == nil && !dst.NotAfter.Before(src.NotAfter) {
			return false, nil
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return false, err
	}
	key, err := m.storage.Load(ctx, srcKey)
	if err != nil {
		return false, err
	}
	meta, err := m.storage.Load(ctx, srcMeta)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, err
	}
	if err := m.storage.Store(ctx, dstKey, key); err != nil {
		return false, err
	}
	if meta != nil {
		if err := m.storage.Store(ctx, dstMeta, meta); err != nil {
			return false, err
		}
	}
	return true, m.storage.Store(ctx, dstCrt, crt)
}

// leafOf parses the first certificate of a PEM chain.
func leafOf(chainPEM []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(chainPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(block.Bytes)
}
