package issuer

import (
	"context"
	"net"
	"strings"
	"time"

	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"
)

// maintenance is the background work for one (storage, issuer key): keeping
// the history within the retention bounds. One per engine and storage.
type maintenance struct {
	cancel context.CancelFunc
	opts   chanOptions
}

type chanOptions chan *Options

// retentionInterval is how often the history is trimmed.
const retentionInterval = time.Hour

// firstMaintenanceDelay lets the config load finish before the first pass.
const firstMaintenanceDelay = 3 * time.Second

// abandonMargin is added to the challenge timeout before an unfinished
// challenge nobody updated is taken as abandoned by a crashed process.
const abandonMargin = time.Minute

// StartMaintenance starts (once per storage and issuer key) the background
// trimming of finished resources, or hands newer options to the running one.
func (e *Engine) StartMaintenance(opts *Options) {
	id := StorageIdentity(opts.Storage) + "|" + opts.IssuerKey
	e.maintMu.Lock()
	defer e.maintMu.Unlock()
	if m, ok := e.maint[id]; ok {
		select {
		case m.opts <- opts:
		default:
		}
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &maintenance{cancel: cancel, opts: make(chanOptions, 1)}
	e.maint[id] = m
	go m.run(ctx, e, opts)
}

func (e *Engine) stopMaintenance() {
	e.maintMu.Lock()
	defer e.maintMu.Unlock()
	for id, m := range e.maint {
		m.cancel()
		delete(e.maint, id)
	}
}

func (m *maintenance) run(ctx context.Context, e *Engine, opts *Options) {
	// first pass shortly after start, not during the config load
	timer := time.NewTimer(firstMaintenanceDelay)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case o := <-m.opts:
			opts = o
		case <-timer.C:
			s := e.storeFor(opts)
			cleanUpLeftovers(ctx, s, opts, time.Now())
			trimHistory(ctx, s, opts, time.Now())
			timer.Reset(retentionInterval)
		}
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

// cleanUpLeftovers removes what finished challenges presented but never
// cleaned up (the process died between the two), and ends challenges that no
// process has touched for longer than their deadline: the process that ran
// them is gone. A resumed workflow would otherwise find them; it then starts
// a new challenge for the authorization.
func cleanUpLeftovers(ctx context.Context, s store, opts *Options, now time.Time) {
	ids, err := s.list(ctx, KindChallenge)
	if err != nil {
		opts.Logger.Warn("listing challenges for clean-up", zap.Error(err))
		return
	}
	for _, id := range ids {
		var ch Challenge
		if err := s.load(ctx, KindChallenge, id, &ch); err != nil {
			continue
		}
		abandoned := !IsFinal(KindChallenge, ch.State) && now.Sub(ch.Updated) > opts.ChallengeTimeout+abandonMargin
		if ch.CleanedUp || (!IsFinal(KindChallenge, ch.State) && !abandoned) {
			continue
		}
		if !ch.Times.Presented.IsZero() {
			solver := opts.Solvers[ch.Type]
			if solver == nil {
				continue
			}
			chal := acme.Challenge{Type: ch.Type, Token: ch.Token, Identifier: identifierFor(ch.Name)}
			if err := solver.CleanUp(ctx, chal, ch.Presented); err != nil {
				opts.Logger.Warn("cleaning up a leftover challenge", zapChallenge(ch.ID), zapName(ch.Name), zap.Error(err))
				continue
			}
		}
		ch.CleanedUp, ch.Updated = true, now
		if abandoned {
			ch.State, ch.Reason = ChallengeErrored, "abandoned: no process finished it within its deadline of "+opts.ChallengeTimeout.String()
			ch.Times.Finished = now
		}
		if err := s.saveResource(ctx, KindChallenge, ch.ID, ch.Name, indexUnknown, ch.State, &ch); err != nil {
			opts.Logger.Warn("recording a leftover challenge's clean-up", zapChallenge(ch.ID), zap.Error(err))
			continue
		}
		opts.Logger.Info("cleaned up a leftover challenge", zapChallenge(ch.ID), zapName(ch.Name), zapState(ch.State))
	}
}

// identifierFor rebuilds an ACME identifier from a stored name.
func identifierFor(name string) acme.Identifier {
	if net.ParseIP(name) != nil {
		return acme.Identifier{Type: "ip", Value: name}
	}
	return acme.Identifier{Type: "dns", Value: strings.TrimPrefix(name, "*.")}
}
