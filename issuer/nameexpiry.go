package issuer

import (
	"context"
	"encoding/json"
	"path"
	"slices"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// A name's record is forgotten once there is nothing left to remember
// (nameExpiry): no backoff it could have been given is in force, and its
// requests, orders and challenges were trimmed. So a name asked for once,
// failed, and never again leaves nothing behind: its record goes after
// max(retention age, failure_backoff max) (7 days by default), its holds
// an hour after they end (trimHolds), its resources and their catalog
// entries with the retention age.
//
// Maintenance finds such records without listing every name: each write
// of a name's record notes, in the background, the hour it may go in
//
//	certflow/<issuer key>/expiry/<YYYYMMDD-HH>/<writer>.json
//
// and each hourly pass reads the notes of the hours that are over. A name
// is looked at under its issue_cert lock (no issuance of it is in flight
// then, so none writes its record meanwhile); one written since is noted
// again for its new hour. What no note covers (records an earlier version
// wrote, a note lost in a crash) is found by a sweep of every record
// once per nameSweepInterval per store, in one process of the cluster.

const (
	expiryDir        = "expiry"
	expiryHourLayout = "20060102-15"
	// nameSweepInterval is how often every name's record is looked at.
	nameSweepInterval = 7 * 24 * time.Hour
	// nameSweepTimeout bounds one sweep; one cut short runs again later.
	nameSweepTimeout = 30 * time.Minute
)

func (s store) expiryRoot() string { return path.Join(s.prefix(), expiryDir) }

func (s store) expiryDir(hour string) string { return path.Join(s.expiryRoot(), hour) }

func (s store) nameSweepKey() string { return path.Join(s.prefix(), "maintenance", "names-swept.json") }

// nameSweepLock is the lock of a store's sweep, one process at a time.
func (s store) nameSweepLock() string {
	return "certflow_names_sweep_" + certmagic.StorageKeys.Safe(s.issuerKey)
}

// expiryTerms are the longest failure backoff and retention age of the
// policies maintenance knows: a record is judged by the longest.
type expiryTerms struct {
	backoffMax, retentionAge time.Duration
}

// expireNames reads the notes of the hours that are over, forgets the
// names due, notes again the others, and deletes the notes it settled.
func expireNames(ctx context.Context, s store, terms expiryTerms, logger *zap.Logger, now time.Time) (deleted int, err error) {
	keys, err := s.storage.List(ctx, s.expiryRoot(), false)
	if isNotExist(err) {
		return 0, nil
	}
	if err != nil {
		return 0, storageErr("listing", s.expiryRoot(), err)
	}
	hours := make([]string, 0, len(keys))
	for _, k := range keys {
		hours = append(hours, path.Base(k))
	}
	slices.Sort(hours)
	for _, hour := range hours {
		start, perr := time.Parse(expiryHourLayout, hour)
		if perr == nil && now.Before(start.Add(time.Hour)) {
			break // this hour and the later ones are not over
		}
		n, settled, err := expireHour(ctx, s, hour, terms, logger, now)
		deleted += n
		if err != nil {
			return deleted, err
		}
		if settled {
			if err := s.storage.Delete(ctx, s.expiryDir(hour)); err != nil && !isNotExist(err) {
				return deleted, storageErr("deleting", s.expiryDir(hour), err)
			}
		}
	}
	return deleted, nil
}

// expireHour settles the notes of one hour; settled is true when none is
// left.
func expireHour(ctx context.Context, s store, hour string, terms expiryTerms, logger *zap.Logger, now time.Time) (deleted int, settled bool, err error) {
	keys, err := s.storage.List(ctx, s.expiryDir(hour), false)
	if isNotExist(err) {
		return 0, true, nil
	}
	if err != nil {
		return 0, false, storageErr("listing", s.expiryDir(hour), err)
	}
	settled = true
	for _, key := range keys {
		b, err := s.storage.Load(ctx, key)
		if isNotExist(err) {
			continue
		}
		if err != nil {
			return deleted, false, storageErr("loading", key, err)
		}
		var rec expiryRecord
		if json.Unmarshal(b, &rec) != nil || rec.Version > SchemaVersion {
			settled = false // not this binary's to read: left alone
			continue
		}
		done := true
		for _, name := range rec.Names {
			gone, decided, err := expireName(ctx, s, name, terms, logger, now)
			if err != nil {
				return deleted, false, err
			}
			if gone {
				deleted++
			}
			done = done && decided
		}
		if !done {
			settled = false
			continue // looked at again at the next pass
		}
		if err := s.storage.Delete(ctx, key); err != nil && !isNotExist(err) {
			return deleted, false, storageErr("deleting", key, err)
		}
	}
	return deleted, settled, nil
}

// expireName deletes a name's record if it is due, or notes it again for
// when it will be; decided is false when an issuance of the name holds its
// lock (it is looked at again later).
func expireName(ctx context.Context, s store, name string, terms expiryTerms, logger *zap.Logger, now time.Time) (gone, decided bool, err error) {
	if CheckName(name) != nil {
		return false, true, nil // no record of a name certflow refuses
	}
	lock := "issue_cert_" + name
	held, err := tryLock(ctx, s.storage, lock)
	if err != nil {
		return false, false, storageErr("locking", lock, err)
	}
	if !held {
		return false, false, nil
	}
	defer func() { _ = s.storage.Unlock(context.WithoutCancel(ctx), lock) }()
	var rec NameRecord
	err = s.load(ctx, kindNames, name, &rec)
	switch {
	case isNotExist(err):
		return false, true, nil
	case err != nil:
		// corrupt (set aside by the load: nothing left), or newer, or
		// the storage failing: the newer one is not this binary's
		return false, !isStorageError(err), nil
	}
	at := nameExpiry(&rec, terms.backoffMax, terms.retentionAge)
	if now.Before(at) {
		catalog.noteExpiry(s, name, at)
		return false, true, nil
	}
	if err := s.delete(ctx, kindNames, name); err != nil {
		return false, false, err
	}
	logger.Info("forgot a name: nothing left to remember", zapName(name),
		zap.Time("last_written", rec.Updated), zap.Int("failures", rec.Failures), zap.Time("next_attempt", rec.NextAttempt))
	return true, true, nil
}

// nameSweep is what a store's sweep marker holds.
type nameSweep struct {
	Version int       `json:"version"`
	Swept   time.Time `json:"swept"`
}

// sweepNamesIfDue looks at every name's record when no process of the
// cluster did for nameSweepInterval: each due one is forgotten, each other
// one noted for its hour. It runs under a lock, one process at a time,
// and records when it ended.
func sweepNamesIfDue(ctx context.Context, s store, terms expiryTerms, logger *zap.Logger, now time.Time) {
	if b, err := s.storage.Load(ctx, s.nameSweepKey()); err == nil {
		var m nameSweep
		if json.Unmarshal(b, &m) == nil && now.Sub(m.Swept) < nameSweepInterval {
			return
		}
	} else if !isNotExist(err) {
		return
	}
	held, err := tryLock(ctx, s.storage, s.nameSweepLock())
	if err != nil || !held {
		return // another process sweeps
	}
	defer func() { _ = s.storage.Unlock(context.WithoutCancel(ctx), s.nameSweepLock()) }()
	ctx, cancel := context.WithTimeout(ctx, nameSweepTimeout)
	defer cancel()
	names, err := s.list(ctx, kindNames)
	if err != nil {
		logger.Warn("listing the names' records for their sweep", zap.Error(err))
		return
	}
	deleted := 0
	for _, name := range names {
		if ctx.Err() != nil {
			return // cut short: no marker, so it runs again
		}
		var rec NameRecord
		if err := s.inspect(ctx, kindNames, name, &rec); err != nil {
			continue
		}
		at := nameExpiry(&rec, terms.backoffMax, terms.retentionAge)
		if now.Before(at) {
			catalog.noteExpiry(s, name, at)
			continue
		}
		if gone, _, err := expireName(ctx, s, name, terms, logger, now); err == nil && gone {
			deleted++
		}
	}
	b, _ := json.Marshal(nameSweep{Version: SchemaVersion, Swept: now})
	if err := s.storage.Store(ctx, s.nameSweepKey(), b); err != nil {
		logger.Warn("recording the names' sweep", zap.Error(err))
		return
	}
	logger.Info("swept the names' records", zap.Int("records", len(names)), zap.Int("forgotten", deleted))
}
