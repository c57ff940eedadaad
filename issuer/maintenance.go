package issuer

import (
	"context"
	"net"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"
)

// maintenance is the background work of one engine in one store (storage
// and issuer key): ending challenges whose process is gone and removing
// their answers (leftovers.go), removing answers no issuance has
// (tokensweep.go), keeping the history within the retention bounds, and
// forgetting names that have nothing left to remember (nameexpiry.go).
//
// Several policies can share a store (a global cert_issuer and a site's
// own issuer with a DNS provider): maintenance keeps the latest options of
// each (by PolicyID), so a leftover is cleaned up with the solver of the
// policy that presented it, whichever policy's options arrived last.
type maintenance struct {
	cancel context.CancelFunc
	wake   chan struct{} // a leftover was reported

	mu       sync.Mutex
	latest   *Options             // the options that arrived last: the store, logger, retention
	policies map[string]*Options  // the latest options of each policy, by PolicyID
	arrival  []string             // PolicyIDs, the least recently arrived first
	watch    map[string]int       // challenges to look at again, with the failed clean-ups of each
	tokens   map[string]time.Time // token files seen, with when each was first seen
	sweeping bool                 // a sweep of the names' records runs
	// sweepInPass runs the names' sweep within the pass that starts it,
	// not in the background: a pass run on demand (RunMaintenancePass)
	// has no later passes to go on with meanwhile.
	sweepInPass bool
}

const (
	// leftoverInterval is how often maintenance looks for leftovers: the
	// challenges in flight (the catalog's recent hours) and those it
	// watches, and for token files no issuance has.
	leftoverInterval = time.Minute
	// fullListingInterval is how often every stored challenge is looked
	// at (also at start, and when a process is found gone): a catalog
	// entry is written up to 2 s late, so a process that died just after
	// writing a challenge may have left it without one.
	fullListingInterval = time.Hour
	// retentionInterval is how often the history is trimmed, and the
	// names' expiry notes read.
	retentionInterval = time.Hour
	// firstMaintenanceDelay lets the config load finish before the first
	// pass.
	firstMaintenanceDelay = 3 * time.Second
	// reportedLeftoverDelay is how soon a pass follows a leftover reported
	// by a run of this process (a final state it could not write, an
	// answer it could not remove).
	reportedLeftoverDelay = 5 * time.Second
	// minPassGap is the least time between two passes.
	minPassGap = time.Second
	// maxPolicies bounds the policies remembered per store (each reload
	// with other challenge settings adds one).
	maxPolicies = 64
	// maxWatched bounds the challenges watched between listings.
	maxWatched = 100000
	// maxQuickCleanUps is how many passes in a row retry a clean-up that
	// fails before it is left to the hourly listing.
	maxQuickCleanUps = 10
)

// StartMaintenance starts (once per storage and issuer key) the background
// clean-up of leftovers and trimming of finished resources, or hands it
// the options of another policy or newer options.
func (e *Engine) StartMaintenance(opts *Options) {
	s := e.storeFor(opts)
	id := storeID(s)
	e.maintMu.Lock()
	m, ok := e.maint[id]
	if !ok {
		ctx, cancel := context.WithCancel(context.Background())
		m = newMaintenance(cancel)
		e.maint[id] = m
		defer func() { go m.run(ctx, e) }()
	}
	m.setOptions(opts)
	e.maintMu.Unlock()
	e.maintained(s, true)
}

func newMaintenance(cancel context.CancelFunc) *maintenance {
	return &maintenance{cancel: cancel, wake: make(chan struct{}, 1), policies: map[string]*Options{}, watch: map[string]int{},
		tokens: map[string]time.Time{}}
}

func (e *Engine) stopMaintenance() {
	e.maintMu.Lock()
	defer e.maintMu.Unlock()
	for id, m := range e.maint {
		m.cancel()
		e.maintained(e.storeFor(m.options()), false)
		delete(e.maint, id)
	}
}

// reportLeftover hands maintenance a challenge a run of this process
// could not finish recording or cleaning up: it is looked at within
// reportedLeftoverDelay.
func (e *Engine) reportLeftover(opts *Options, id string) {
	e.maintMu.Lock()
	m := e.maint[storeID(e.storeFor(opts))]
	e.maintMu.Unlock()
	if m == nil {
		return // no maintenance here: another process's finds it
	}
	m.watchID(id)
	nudge(m.wake)
}

func (m *maintenance) setOptions(opts *Options) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.latest = opts
	if i := slices.Index(m.arrival, opts.PolicyID); i >= 0 {
		m.arrival = slices.Delete(m.arrival, i, i+1)
	}
	m.arrival = append(m.arrival, opts.PolicyID)
	m.policies[opts.PolicyID] = opts
	if len(m.arrival) > maxPolicies {
		delete(m.policies, m.arrival[0])
		m.arrival = m.arrival[1:]
	}
}

func (m *maintenance) options() *Options {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.latest
}

func (m *maintenance) run(ctx context.Context, e *Engine) {
	timer := time.NewTimer(firstMaintenanceDelay)
	defer timer.Stop()
	due := time.Now().Add(firstMaintenanceDelay)
	var lastFull, lastTrim time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.wake:
			if time.Until(due) > reportedLeftoverDelay {
				timer.Reset(reportedLeftoverDelay)
				due = time.Now().Add(reportedLeftoverDelay)
			}
			continue
		case <-timer.C:
		}
		now := time.Now()
		opts := m.options()
		s := e.storeFor(opts)
		full := lastFull.IsZero() || now.Sub(lastFull) >= fullListingInterval
		hourly := lastTrim.IsZero() || now.Sub(lastTrim) >= retentionInterval
		next, listedAll := m.pass(ctx, e, s, opts, now, full, hourly)
		if listedAll {
			lastFull = now
		}
		if hourly {
			lastTrim = now
		}
		wait := leftoverInterval
		if !next.IsZero() {
			// wake when the next watched challenge becomes abandoned
			wait = min(wait, max(time.Until(next), minPassGap))
		}
		timer.Reset(wait)
		due = time.Now().Add(wait)
	}
}

// pass is one pass at now: the leftovers (every stored challenge when
// full), the tokens no issuance has, and with hourly the hourly part
// (trim). It returns what leftoverPass does.
func (m *maintenance) pass(ctx context.Context, e *Engine, s store, opts *Options, now time.Time, full, hourly bool) (next time.Time, listedAll bool) {
	next, listedAll = m.leftoverPass(ctx, e, s, full, now)
	m.sweepTokens(ctx, s, now)
	if hourly {
		m.trim(ctx, s, opts, now)
	}
	return next, listedAll
}

// trim is the hourly part of a pass: the history within the retention
// bounds, the catalog with it, ended holds, names with nothing left to
// remember, and the records set aside long ago.
func (m *maintenance) trim(ctx context.Context, s store, opts *Options, now time.Time) {
	terms := m.expiryTerms()
	oldest, complete, trimmed := trimHistory(ctx, s, opts, now)
	if complete {
		trimCatalog(ctx, s, opts.Logger, oldest, now)
	}
	forgetTrimmed(ctx, s, trimmed, terms, opts.Logger, now)
	if n, err := trimHolds(ctx, s, now); err != nil {
		opts.Logger.Warn("deleting ended holds", zap.Error(err))
	} else if n > 0 {
		opts.Logger.Info("deleted ended holds", zap.Int("deleted", n))
	}
	if n, err := expireNames(ctx, s, terms, opts.Logger, now); err != nil {
		opts.Logger.Warn("forgetting names with nothing left to remember", zap.Error(err))
	} else if n > 0 {
		opts.Logger.Info("forgot names with nothing left to remember", zap.Int("forgotten", n))
	}
	trimSetAside(ctx, s, opts.Logger, terms.retentionAge, now)
	m.sweepNames(ctx, s, terms, opts.Logger, now)
}

// sweepNames starts a sweep of the names' records when it is due
// (sweepNamesIfDue), in the background: it may take minutes, and the
// leftover passes go on meanwhile. With sweepInPass it runs within the
// pass, bounded by ctx.
func (m *maintenance) sweepNames(ctx context.Context, s store, terms expiryTerms, logger *zap.Logger, now time.Time) {
	if m.sweepInPass {
		sweepNamesIfDue(ctx, s, terms, logger, now)
		return
	}
	m.mu.Lock()
	if m.sweeping {
		m.mu.Unlock()
		return
	}
	m.sweeping = true
	m.mu.Unlock()
	go func() {
		defer func() {
			m.mu.Lock()
			m.sweeping = false
			m.mu.Unlock()
		}()
		sweepNamesIfDue(context.Background(), s, terms, logger, now)
	}()
}

// expiryTerms are the longest failure backoff and retention age of the
// policies known here.
func (m *maintenance) expiryTerms() expiryTerms {
	m.mu.Lock()
	defer m.mu.Unlock()
	t := expiryTerms{backoffMax: DefaultBackoffMax, retentionAge: DefaultRetentionAge}
	for _, o := range m.policies {
		t.backoffMax = max(t.backoffMax, o.BackoffMax)
		t.retentionAge = max(t.retentionAge, o.RetentionAge)
	}
	return t
}

// trimHistory deletes finished resources beyond the retention bounds, oldest
// first, one key at a time (not every backend deletes a prefix recursively).
// Resources still in flight are never deleted; name records are forgotten
// apart (nameexpiry.go). It returns the oldest ID left in any of the
// folders (empty when none), whether every folder could be listed, and
// the requests it deleted, by name (forgetTrimmed).
func trimHistory(ctx context.Context, s store, opts *Options, now time.Time) (oldest string, complete bool, trimmed map[string][]CertificateRequest) {
	complete = true
	trimmed = map[string][]CertificateRequest{}
	legacyKinds := s.legacyKinds(ctx)
	for _, kind := range []string{KindRequest, KindOrder, KindChallenge} {
		ids, err := s.list(ctx, kind)
		if err != nil {
			opts.Logger.Warn("listing resources for retention", zap.String("kind", kind), zap.Error(err))
			complete = false
			continue
		}
		legacy := legacyKinds[kind]
		excess := len(ids) - opts.RetentionCount
		deleted := 0
		kept := "" // the oldest ID left
		keep := func(id string) {
			if kept == "" {
				kept = id
			}
		}
		for i, id := range ids {
			created, ok := idTime(id)
			tooOld := ok && now.Sub(created) > opts.RetentionAge
			if i >= excess && !tooOld {
				keep(id)
				break // ids are oldest first: the rest are within bounds
			}
			var cr CertificateRequest // a request's whole record: forgetTrimmed needs its order
			var head resourceHead
			var err error
			if kind == KindRequest {
				if err = s.load(ctx, kind, id, &cr); err == nil {
					head = resourceHead{ID: cr.ID, Name: cr.Name, State: cr.State}
				}
			} else {
				head, err = loadHead(ctx, s, kind, id)
			}
			if isNotExist(err) {
				dropDanglingEntry(ctx, s, opts, kind, id, now)
				continue
			}
			if err != nil || !IsFinal(kind, head.State) {
				keep(id)
				continue
			}
			if err := s.delete(ctx, kind, id); err != nil {
				opts.Logger.Warn("deleting resource for retention", zap.String("kind", kind), zap.String("id", id), zap.Error(err))
				keep(id)
				continue
			}
			if legacy {
				s.unindex(ctx, kind, id, head.Name, head.State)
			}
			if kind == KindRequest && cr.Name != "" {
				trimmed[cr.Name] = append(trimmed[cr.Name], cr)
			}
			deleted++
		}
		if deleted > 0 {
			opts.Logger.Info("trimmed history", zap.String("kind", kind), zap.Int("deleted", deleted), zap.Int("kept", len(ids)-deleted))
		}
		if kept != "" && (oldest == "" || kept < oldest) {
			oldest = kept
		}
	}
	if legacyKinds[indexDir] {
		if removed, err := s.trimLegacyIndex(ctx); err != nil {
			opts.Logger.Warn("removing the previous version's empty index", zap.Error(err))
		} else if removed {
			opts.Logger.Info("removed the previous version's index: no marker was left in it")
		}
	}
	return oldest, complete, trimmed
}

// forgetTrimmed brings the records of the names whose requests were just
// trimmed up to date: a name's record still holds the request it made
// its order with, and that order, as they were in flight (a successful
// issuance does not write the record again); with the request's own
// record gone, they would read as in flight. They are dropped; a record
// left with nothing to remember (no order to resume, and past its time:
// nameExpiry) is deleted: the name is forgotten. One not past its time is
// kept for its expiry note (nameexpiry.go).
func forgetTrimmed(ctx context.Context, s store, trimmed map[string][]CertificateRequest, terms expiryTerms, logger *zap.Logger, now time.Time) {
	forgotten := 0
	for name, crs := range trimmed {
		if ctx.Err() != nil {
			return
		}
		gone, err := forgetTrimmedOf(ctx, s, name, crs, terms, now)
		if err != nil {
			logger.Warn("updating the record of a name whose requests were trimmed", zapName(name), zap.Error(err))
			continue
		}
		if gone {
			forgotten++
		}
	}
	if forgotten > 0 {
		logger.Info("forgot names whose last request was trimmed: nothing left to remember", zap.Int("forgotten", forgotten))
	}
}

// forgetTrimmedOf does forgetTrimmed's work for one name, under its
// issue_cert lock (an issuance in flight writes the record itself: the
// name is left alone then). It reports whether the record was deleted.
func forgetTrimmedOf(ctx context.Context, s store, name string, crs []CertificateRequest, terms expiryTerms, now time.Time) (bool, error) {
	var rec NameRecord
	if err := s.inspect(ctx, kindNames, name, &rec); err != nil {
		return false, nil // none, or not this binary's to change
	}
	if !holdsTrimmed(&rec, crs) {
		return false, nil
	}
	lock := "issue_cert_" + name
	held, err := tryLock(ctx, s.storage, lock)
	if err != nil || !held {
		return false, err
	}
	defer func() { _ = s.storage.Unlock(context.WithoutCancel(ctx), lock) }()
	if err := s.load(ctx, kindNames, name, &rec); err != nil || !holdsTrimmed(&rec, crs) {
		return false, nil
	}
	for _, cr := range crs {
		if rec.Request != nil && rec.Request.ID == cr.ID {
			rec.Request = nil
		}
		if o := cr.OrderRecord; o != nil && IsFinal(KindOrder, o.State) && rec.Order != nil && rec.Order.ID == o.ID {
			rec.Order = nil
			if rec.CurrentOrder == o.ID {
				rec.CurrentOrder = ""
			}
		}
	}
	// deleted only at the time every record is (nameExpiry): a request
	// trimmed early, for the retention count, forgets nothing sooner
	if rec.CurrentOrder == "" && !now.Before(nameExpiry(&rec, terms.backoffMax, terms.retentionAge)) {
		if err := s.delete(ctx, kindNames, name); err != nil {
			return false, err
		}
		return true, nil
	}
	return false, s.save(ctx, kindNames, name, &rec)
}

// holdsTrimmed reports whether a name's record holds a trimmed request,
// or the finished order of one, as in flight.
func holdsTrimmed(rec *NameRecord, crs []CertificateRequest) bool {
	for _, cr := range crs {
		if rec.Request != nil && rec.Request.ID == cr.ID {
			return true
		}
		if o := cr.OrderRecord; o != nil && IsFinal(KindOrder, o.State) && rec.Order != nil && rec.Order.ID == o.ID {
			return true
		}
	}
	return false
}

// catalogKeep is how far back the catalog is always kept, whatever was
// trimmed: entries of requests and orders in flight (kept in their
// names' records, not in the folders trimHistory lists) are in it.
const catalogKeep = 2 * time.Hour

// trimCatalog deletes the catalog's hours older than the oldest resource
// left (oldest, from trimHistory) and than catalogKeep: their entries all
// name resources that are gone.
func trimCatalog(ctx context.Context, s store, logger *zap.Logger, oldest string, now time.Time) {
	cutoff := catalogHour(newID(now.Add(-catalogKeep)))
	if oldest != "" && catalogHour(oldest) < cutoff {
		cutoff = catalogHour(oldest)
	}
	hours, err := s.listCatalogHours(ctx)
	if err != nil {
		logger.Warn("listing the catalog to trim it", zap.Error(err))
		return
	}
	deleted := 0
	for _, hour := range hours {
		if hour >= cutoff {
			continue
		}
		refs, err := s.listCatalogRecords(ctx, hour)
		if err != nil {
			logger.Warn("listing the catalog to trim it", zap.String("hour", hour), zap.Error(err))
			return
		}
		for _, r := range refs {
			if err := s.storage.Delete(ctx, r.key); err != nil && !isNotExist(err) {
				logger.Warn("deleting a catalog record", zap.String("key", r.key), zap.Error(err))
				return
			}
			deleted++
		}
		if err := s.storage.Delete(ctx, s.catalogHourDir(hour)); err != nil && !isNotExist(err) {
			logger.Warn("deleting a catalog folder", zap.String("hour", hour), zap.Error(err))
		}
	}
	if deleted > 0 {
		logger.Info("trimmed the catalog", zap.Int("records", deleted), zap.String("before", cutoff))
	}
}

// trimSetAside deletes the records set aside as corrupt (corrupt/) longer
// ago than the retention age: they were kept for an operator to look at.
func trimSetAside(ctx context.Context, s store, logger *zap.Logger, retentionAge time.Duration, now time.Time) {
	dir := path.Join(s.prefix(), "corrupt")
	keys, err := s.storage.List(ctx, dir, false)
	if err != nil {
		return
	}
	for _, k := range keys {
		base := path.Base(k)
		if len(base) < len(idLayout) {
			continue
		}
		at, err := time.Parse(idLayout, base[:len(idLayout)])
		if err != nil || now.Sub(at) < retentionAge {
			continue
		}
		if err := s.storage.Delete(ctx, k); err != nil && !isNotExist(err) {
			logger.Warn("deleting a record set aside long ago", zap.String("key", k), zap.Error(err))
			return
		}
	}
}

// danglingMargin is how old a listed resource with no value must be before
// its listing entry is taken for a leftover: a writer may be between the
// two steps of its write.
const danglingMargin = 10 * time.Minute

// dropDanglingEntry removes the key of a resource that a List returned but
// a Load does not find: a backend that writes a listing entry and the value
// in separate steps (the Redis module) leaves the entry behind when it dies
// between them, and every pass would list it again. Only when the store
// answers (absence is not proof: an outage reads as "not found") and the
// entry is old enough that no write can still be completing it.
func dropDanglingEntry(ctx context.Context, s store, opts *Options, kind, id string, now time.Time) {
	key := s.key(kind, id)
	if created, ok := idTime(id); !ok || now.Sub(created) < danglingMargin {
		return
	}
	if err := s.confirmAbsent(ctx, key); err != nil {
		return
	}
	if err := s.storage.Delete(ctx, key); err != nil && !isNotExist(err) {
		opts.Logger.Warn("removing a listing entry with no value", zap.String("key", key), zap.Error(err))
		return
	}
	opts.Logger.Info("removed a listing entry with no value", zap.String("kind", kind), zap.String("id", id))
}

// resourceHead is what every resource kind has in common.
type resourceHead struct {
	ID    string `json:"id"`
	Name  string `json:"name"`
	State string `json:"state"`
}

func loadHead(ctx context.Context, s store, kind, id string) (resourceHead, error) {
	var head resourceHead
	err := s.load(ctx, kind, id, &head)
	return head, err
}

// identifierFor rebuilds an ACME identifier from a stored name.
func identifierFor(name string) acme.Identifier {
	if net.ParseIP(name) != nil {
		return acme.Identifier{Type: "ip", Value: name}
	}
	return acme.Identifier{Type: "dns", Value: strings.TrimPrefix(name, "*.")}
}
