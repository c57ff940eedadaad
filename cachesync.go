package certflow

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io/fs"
	"path"
	"reflect"
	"slices"
	"sync"
	"time"
	"unsafe"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/certflow/certflow/issuer"
)

// Serving a forced renewal's certificate. certmagic replaces a certificate
// in its in-memory cache only when it renews one that is due (or was
// revoked): a forced renewal stores the new certificate, but every node
// would go on serving the old one until it is due. So:
//
//   - the node that renewed loads the new certificate into the cache and
//     drops the one it replaced, at once (replaceCached);
//   - it notes the renewal in a small journal in storage,
//     certflow/<issuer key>/renewals.json, and every node checks the
//     journals of the storages its certflow issuers use every
//     renewalSyncInterval, and does the same for the names it has a
//     replaced certificate of in its cache.
//
// A certificate certmagic renews itself (when it is due) is replaced in
// the cache by certmagic on every node, when each finds it due. The same
// journal carries the names an operator cleared (POST
// /certflow/retry/<name>): every node forgets its in-memory backoff and
// holds of them within RenewalServedWithin.
//
// certmagic's cache is reachable from outside only through a Config, whose
// pointer to it is unexported (certmagic v0.25.6, Config.certCache): it is
// read by reflection, and the versions are pinned (go.mod). Should a
// certmagic update rename it, nothing is dropped from the cache, a warning
// is logged, and the renewed certificate is served once the old one is due;
// TestForcedRenewal fails loudly.

// RenewalServedWithin bounds how long after a forced renewal the other
// nodes of a cluster serve the new certificate: two journal checks.
const RenewalServedWithin = 2 * renewalSyncInterval

const (
	// renewalSyncInterval is how often a node reads the renewal journals.
	renewalSyncInterval = 5 * time.Second
	// journalMaxAge and journalMaxEntries bound the journal: a node down
	// for longer loads every certificate from storage when it starts.
	journalMaxAge     = time.Hour
	journalMaxEntries = 512
	journalName       = "renewals.json"
	journalLockPrefix = "certflow_renewals_"
)

// renewalJournal is the stored journal of what every node must learn at
// once: forced renewals, and names an operator cleared.
type renewalJournal struct {
	Version  int            `json:"version"`
	Renewals []renewedEntry `json:"renewals"`
	// Cleared are names whose backoff and own hold were cleared (POST
	// /certflow/retry/<name>) on some node: every node forgets what it
	// remembers of them (its in-memory backoff and holds, which PreCheck
	// and the permission module answer from).
	Cleared []clearedEntry `json:"cleared,omitempty"`
}

// clearedEntry is one name cleared by an operator, and when.
type clearedEntry struct {
	Name string    `json:"name"`
	At   time.Time `json:"at"`
}

// renewedEntry is one forced renewal: the name, the serial (hex) of the
// certificate now stored and those it replaced (the latest renewals' of the
// name, newest last, at most maxReplacedSerials).
type renewedEntry struct {
	Name     string    `json:"name"`
	Serial   string    `json:"serial"`
	Replaced []string  `json:"replaced,omitempty"`
	At       time.Time `json:"at"`
}

// maxReplacedSerials bounds an entry's list of replaced serials.
const maxReplacedSerials = 8

func journalKey(stateKey string) string {
	return path.Join("certflow", certmagic.StorageKeys.Safe(stateKey), journalName)
}

// serveRenewed makes this node serve name's renewed certificate at once,
// in place of the one with serial replaced, and notes the renewal in the
// journal for the other nodes.
func serveRenewed(ctx context.Context, cfg *certmagic.Config, inst *Issuer, name, replaced string, logger *zap.Logger) {
	sc, err := issuer.LoadStoredCertificate(ctx, cfg.Storage, inst.IssuerKey(), name)
	if err != nil {
		logger.Warn("reading the renewed certificate", zap.String("name", name), zap.Error(err))
		return
	}
	e := renewedEntry{Name: name, Serial: serialHex(sc.Leaf), At: time.Now().UTC()}
	if replaced != "" && replaced != e.Serial {
		e.Replaced = []string{replaced}
	}
	replaceCached(ctx, cfg, name, e.Replaced, logger)
	if err := noteRenewal(ctx, cfg.Storage, inst.issuerKey, e); err != nil {
		logger.Warn("noting the renewal for the other nodes; they serve the new certificate when the old one is due",
			zap.String("name", name), zap.Error(err))
	}
}

// replaceCached loads name's certificate from storage into certmagic's
// cache and drops the cached certificates of exactly that name whose serial
// is one of replaced (so a certificate loaded by hand for the same name is
// left alone). It does nothing when none of them is cached.
func replaceCached(ctx context.Context, cfg *certmagic.Config, name string, replaced []string, logger *zap.Logger) {
	var olds []certmagic.Certificate
	for _, c := range cachedExactly(cfg, name) {
		if c.Leaf != nil && slices.Contains(replaced, serialHex(c.Leaf)) {
			olds = append(olds, c)
		}
	}
	if len(olds) == 0 {
		return
	}
	fresh, err := cfg.CacheManagedCertificate(ctx, name)
	if err != nil {
		logger.Warn("loading the renewed certificate into the cache", zap.String("name", name), zap.Error(err))
		return
	}
	var drop []string
	for _, c := range olds {
		if c.Hash() != fresh.Hash() {
			drop = append(drop, c.Hash())
		}
	}
	if len(drop) == 0 {
		return
	}
	cache := certCacheOf(cfg)
	if cache == nil {
		logger.Warn("certmagic's cache is not reachable (certmagic changed?): the renewed certificate is served once the replaced one is due",
			zap.String("name", name))
		return
	}
	cache.Remove(drop)
	logger.Info("serving the renewed certificate", zap.String("name", name), zap.String("serial", serialHex(fresh.Leaf)),
		zap.Int("replaced", len(drop)))
}

// certCacheOf returns cfg's certificate cache (certmagic keeps the pointer
// unexported), or nil if it cannot be found.
func certCacheOf(cfg *certmagic.Config) *certmagic.Cache {
	if cfg == nil {
		return nil
	}
	field := reflect.ValueOf(cfg).Elem().FieldByName("certCache")
	if !field.IsValid() || field.Type() != reflect.TypeFor[*certmagic.Cache]() {
		return nil
	}
	return *(**certmagic.Cache)(unsafe.Pointer(field.UnsafeAddr()))
}

// cachedExactly returns the certificates in certmagic's cache (cfg's) for
// exactly name, not a wildcard covering it.
func cachedExactly(cfg *certmagic.Config, name string) []certmagic.Certificate {
	var all []certmagic.Certificate
	if cache := certCacheOf(cfg); cache != nil {
		all = cache.AllMatchingCertificates(name)
	} else {
		all = tlsAppCertificates(name)
	}
	var out []certmagic.Certificate
	for _, c := range all {
		if slices.Contains(c.Names, name) {
			out = append(out, c)
		}
	}
	return out
}

// tlsAppCertificates asks the TLS app's cache, which is gone (a nil
// pointer inside caddytls) once the last TLS app stopped.
func tlsAppCertificates(name string) (certs []certmagic.Certificate) {
	defer func() {
		if recover() != nil {
			certs = nil
		}
	}()
	return caddytls.AllMatchingCertificates(name)
}

// servesSerial reports whether the only certificate cfg's cache holds for
// exactly name has serial.
func servesSerial(cfg *certmagic.Config, name, serial string) bool {
	cached := cachedExactly(cfg, name)
	return len(cached) == 1 && cached[0].Leaf != nil && serialHex(cached[0].Leaf) == serial
}

func serialHex(leaf *x509.Certificate) string { return hex.EncodeToString(leaf.SerialNumber.Bytes()) }

// noteRenewal adds e to the journal of stateKey, pruning old entries. The
// journal is written under a lock of certflow's own, so that two nodes
// noting at once lose nothing.
func noteRenewal(ctx context.Context, storage certmagic.Storage, stateKey string, e renewedEntry) error {
	return updateJournal(ctx, storage, stateKey, func(j *renewalJournal) {
		j.Renewals = withRenewal(j.Renewals, e)
	})
}

// withRenewal is renewals with e added, and the entries older than
// journalMaxAge or beyond journalMaxEntries dropped.
func withRenewal(renewals []renewedEntry, e renewedEntry) []renewedEntry {
	cutoff := e.At.Add(-journalMaxAge)
	kept := renewals[:0]
	for _, old := range renewals {
		if old.Name == e.Name {
			// a node still serving an earlier certificate of the name
			// replaces it too
			var merged []string
			for _, s := range append(append(old.Replaced, old.Serial), e.Replaced...) {
				if s != e.Serial && !slices.Contains(merged, s) {
					merged = append(merged, s)
				}
			}
			e.Replaced = merged
			if n := len(e.Replaced); n > maxReplacedSerials {
				e.Replaced = e.Replaced[n-maxReplacedSerials:]
			}
			continue
		}
		if old.At.After(cutoff) {
			kept = append(kept, old)
		}
	}
	kept = append(kept, e)
	if len(kept) > journalMaxEntries {
		kept = kept[len(kept)-journalMaxEntries:]
	}
	return kept
}

// updateJournal changes the journal of stateKey with change and writes
// it, under a lock of certflow's own, so that two nodes changing it at
// once lose nothing. An unreadable journal starts over rather than never
// being written again.
func updateJournal(ctx context.Context, storage certmagic.Storage, stateKey string, change func(*renewalJournal)) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	lock := journalLockPrefix + certmagic.StorageKeys.Safe(stateKey)
	if err := storage.Lock(ctx, lock); err != nil {
		return err
	}
	defer func() { _ = storage.Unlock(context.WithoutCancel(ctx), lock) }()
	j, err := loadJournal(ctx, storage, stateKey)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		j = renewalJournal{}
	}
	change(&j)
	j.Version = 1
	b, err := json.Marshal(j)
	if err != nil {
		return err
	}
	return storage.Store(ctx, journalKey(stateKey), b)
}

// noteCleared adds a name an operator cleared to the journal of stateKey,
// under the journal's lock, pruning old entries.
func noteCleared(ctx context.Context, storage certmagic.Storage, stateKey, name string) error {
	return updateJournal(ctx, storage, stateKey, func(j *renewalJournal) {
		now := time.Now().UTC()
		kept := j.Cleared[:0]
		for _, c := range j.Cleared {
			if c.Name != name && c.At.After(now.Add(-journalMaxAge)) {
				kept = append(kept, c)
			}
		}
		j.Cleared = append(kept, clearedEntry{Name: name, At: now})
		if len(j.Cleared) > journalMaxEntries {
			j.Cleared = j.Cleared[len(j.Cleared)-journalMaxEntries:]
		}
	})
}

func loadJournal(ctx context.Context, storage certmagic.Storage, stateKey string) (renewalJournal, error) {
	var j renewalJournal
	b, err := storage.Load(ctx, journalKey(stateKey))
	if err != nil {
		return j, err
	}
	err = json.Unmarshal(b, &j)
	return j, err
}

// renewalSync is the process's reader of the renewal journals, running
// while a certflow issuer is provisioned (held in a caddy.UsagePool).
type renewalSync struct {
	stop chan struct{}
	done chan struct{}

	mu      sync.Mutex
	applied map[string]string // source ID and name → serial checked
}

var renewalSyncPool = caddy.NewUsagePool()

const renewalSyncPoolKey = "renewal-sync"

// acquireRenewalSync starts the journal reader on first use.
func acquireRenewalSync(logger *zap.Logger) {
	_, _, _ = renewalSyncPool.LoadOrNew(renewalSyncPoolKey, func() (caddy.Destructor, error) {
		s := &renewalSync{stop: make(chan struct{}), done: make(chan struct{}), applied: map[string]string{}}
		go s.run(logger.Named("renewal_sync"))
		return s, nil
	})
}

// releaseRenewalSync drops this instance's hold; the last one stops it.
func releaseRenewalSync() { _, _ = renewalSyncPool.Delete(renewalSyncPoolKey) }

// Destruct stops the reader (caddy.Destructor).
func (s *renewalSync) Destruct() error {
	close(s.stop)
	<-s.done
	return nil
}

func (s *renewalSync) run(logger *zap.Logger) {
	defer close(s.done)
	tick := time.NewTicker(renewalSyncInterval)
	defer tick.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-tick.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), renewalSyncInterval)
		s.pass(ctx, logger)
		cancel()
	}
}

// pass reads the journal of each (storage, issuer key) the process's
// certflow issuers use, once each, and serves the certificates renewed
// elsewhere that this node's cache still holds an older one of.
func (s *renewalSync) pass(ctx context.Context, logger *zap.Logger) {
	seen := map[string]bool{}
	for _, inst := range registeredIssuers() {
		if inst.renewal == nil {
			continue
		}
		cfg := inst.renewal.magic.Load()
		if cfg == nil || cfg.Storage == nil {
			continue
		}
		src := issuer.StorageIdentity(cfg.Storage) + "|" + inst.issuerKey
		if seen[src] {
			continue
		}
		seen[src] = true
		j, err := loadJournal(ctx, cfg.Storage, inst.issuerKey)
		if err != nil {
			continue // none yet, or unreadable: nothing to serve
		}
		for _, e := range j.Renewals {
			key := src + "|" + e.Name
			s.mu.Lock()
			done := s.applied[key] == e.Serial
			s.mu.Unlock()
			if done {
				continue
			}
			replaceCached(ctx, cfg, e.Name, e.Replaced, logger)
			s.mu.Lock()
			s.applied[key] = e.Serial
			s.mu.Unlock()
		}
		for _, c := range j.Cleared {
			key, at := src+"|cleared|"+c.Name, c.At.Format(time.RFC3339Nano)
			s.mu.Lock()
			done := s.applied[key] == at
			s.applied[key] = at
			s.mu.Unlock()
			if !done {
				forgetInIssuers(c.Name)
			}
		}
	}
	s.mu.Lock()
	if len(s.applied) > 4*journalMaxEntries {
		s.applied = map[string]string{} // forgotten entries are checked again, at no cost
	}
	s.mu.Unlock()
}

var _ caddy.Destructor = (*renewalSync)(nil)
