package issuer

import (
	"context"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"
)

// maintenance is the background work of one engine in one store (storage
// and issuer key): ending challenges whose process is gone and removing
// their answers (leftovers.go), and keeping the history within the
// retention bounds.
//
// Several policies can share a store (a global cert_issuer and a site's
// own issuer with a DNS provider): maintenance keeps the latest options of
// each (by PolicyID), so a leftover is cleaned up with the solver of the
// policy that presented it, whichever policy's options arrived last.
type maintenance struct {
	cancel context.CancelFunc
	wake   chan struct{} // a leftover was reported

	mu       sync.Mutex
	latest   *Options            // the options that arrived last: the store, logger, retention
	policies map[string]*Options // the latest options of each policy, by PolicyID
	arrival  []string            // PolicyIDs, the least recently arrived first
	watch    map[string]int      // challenges to look at again, with the failed clean-ups of each
}

const (
	// leftoverInterval is how often maintenance looks for leftovers: the
	// challenges in flight (their index markers) and those it watches.
	leftoverInterval = time.Minute
	// fullListingInterval is how often every stored challenge is looked
	// at (also at start, and when a process is found gone): an index
	// marker is written up to 2 s late, so a process that died just after
	// writing a challenge may have left it without one.
	fullListingInterval = time.Hour
	// retentionInterval is how often the history is trimmed.
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
		m = &maintenance{cancel: cancel, wake: make(chan struct{}, 1), policies: map[string]*Options{}, watch: map[string]int{}}
		e.maint[id] = m
		defer func() { go m.run(ctx, e) }()
	}
	m.setOptions(opts)
	e.maintMu.Unlock()
	e.maintained(s, true)
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
		next, listedAll := m.leftoverPass(ctx, e, s, full, now)
		if listedAll {
			lastFull = now
		}
		if lastTrim.IsZero() || now.Sub(lastTrim) >= retentionInterval {
			trimHistory(ctx, s, opts, now)
			if n, err := trimHolds(ctx, s, now); err != nil {
				opts.Logger.Warn("deleting ended holds", zap.Error(err))
			} else if n > 0 {
				opts.Logger.Info("deleted ended holds", zap.Int("deleted", n))
			}
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

// trimHistory deletes finished resources beyond the retention bounds, oldest
// first, one key at a time (not every backend deletes a prefix recursively).
// Resources still in flight are never deleted; name records are never
// trimmed (they hold the failure backoff).
func trimHistory(ctx context.Context, s store, opts *Options, now time.Time) {
	for _, kind := range []string{KindRequest, KindOrder, KindChallenge} {
		ids, err := s.list(ctx, kind)
		if err != nil {
			opts.Logger.Warn("listing resources for retention", zap.String("kind", kind), zap.Error(err))
			continue
		}
		excess := len(ids) - opts.RetentionCount
		deleted := 0
		for i, id := range ids {
			created, ok := idTime(id)
			tooOld := ok && now.Sub(created) > opts.RetentionAge
			if i >= excess && !tooOld {
				break // ids are oldest first: the rest are within bounds
			}
			head, err := loadHead(ctx, s, kind, id)
			if isNotExist(err) {
				dropDanglingEntry(ctx, s, opts, kind, id, now)
				continue
			}
			if err != nil || !IsFinal(kind, head.State) {
				continue
			}
			if err := s.delete(ctx, kind, id); err != nil {
				opts.Logger.Warn("deleting resource for retention", zap.String("kind", kind), zap.String("id", id), zap.Error(err))
				continue
			}
			s.unindex(ctx, kind, id, head.Name, head.State)
			deleted++
		}
		if deleted > 0 {
			opts.Logger.Info("trimmed history", zap.String("kind", kind), zap.Int("deleted", deleted), zap.Int("kept", len(ids)-deleted))
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
