package issuer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"

	"github.com/certflow/certflow/solvers"
)

// A leftover is a challenge no process will finish: its process died, or
// the run that had it could not write its end. Maintenance ends it
// (errored, with the reason) and removes its answer with the solver of the
// policy that presented it; and the answer of a finished challenge whose
// clean-up failed. What it looks at each pass (every minute, sooner when
// a watched challenge becomes abandoned or a run reports one):
//   - the challenges in flight with a record of their own (only those
//     can be left: one without a record has only a token, which
//     tokensweep.go removes), from the catalog's entries of the last
//     inFlightLookback (a few records, not a load of every stored
//     challenge), and from the markers of previous versions where any
//     are left;
//   - the challenges it watches: found unfinished or uncleaned before,
//     or reported by a run of this process;
//   - every stored challenge, at start, hourly, and when a process is
//     found gone (its heartbeat lapsed): the entries of what a process
//     wrote in its last 2 s may never have been written.
//
// Bound: an abandoned challenge's answer is removed within a minute of its
// deadline passing by deadlineMargin, or of its process's heartbeat
// lapsing (heartbeatLapse after its last refresh), whichever comes first
// (sooner when the pass before it watched it), given the DNS provider or
// storage answers then; failing clean-ups are retried every minute for
// maxQuickCleanUps passes, then hourly.

// cleanUpTimeout bounds one clean-up of a leftover's answer.
const cleanUpTimeout = 30 * time.Second

// leftoverPass looks at the challenges that may be leftovers and ends or
// cleans up those that are. It returns when the first watched challenge
// becomes abandoned (zero if none will), and whether every stored
// challenge was listed.
func (m *maintenance) leftoverPass(ctx context.Context, e *Engine, s store, full bool, now time.Time) (next time.Time, listedAll bool) {
	logger := m.options().Logger
	beats, err := readHeartbeats(ctx, s)
	if err != nil {
		logger.Warn("reading the heartbeats of the processes sharing the storage", zap.Error(err))
	}
	var lapsed []string
	for owner, rec := range beats {
		if owner != e.owner && now.Sub(rec.Updated) > heartbeatLapse {
			lapsed = append(lapsed, owner)
		}
	}
	if len(lapsed) > 0 {
		full = true // find everything the gone process left
	}

	ids := m.watched()
	if full {
		all, err := s.list(ctx, KindChallenge)
		if err != nil {
			logger.Warn("listing challenges for clean-up", zap.Error(err))
		} else {
			ids, listedAll = append(ids, all...), true
		}
	}
	if !listedAll {
		ids = append(ids, inFlightChallenges(ctx, s, logger, now)...)
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)

	j := judge{m: m, e: e, s: s, beats: beats, beatsRead: beats != nil, logger: logger}
	for _, id := range ids {
		if ctx.Err() != nil {
			return next, false
		}
		if at := j.examine(ctx, id, now); !at.IsZero() && (next.IsZero() || at.Before(next)) {
			next = at
		}
	}
	logger.Debug("looked for leftovers", zap.Int("challenges", len(ids)), zap.Int("ended", j.ended),
		zap.Bool("listed_all", listedAll), zap.Int("processes_gone", len(lapsed)))
	if listedAll {
		// what the gone processes left has been found: their heartbeat
		// records go (a missing record reads as a lapsed one)
		for _, owner := range lapsed {
			if err := s.storage.Delete(ctx, s.ownerKey(owner)); err != nil && !isNotExist(err) {
				logger.Warn("removing the heartbeat record of a gone process", zap.String("owner", owner), zap.Error(err))
				continue
			}
			logger.Info("removed the heartbeat record of a gone process", zap.String("owner", owner),
				zap.Time("last_heartbeat", beats[owner].Updated))
		}
	}
	return next, listedAll
}

// inFlightLookback is how far back the catalog is read for challenges in
// flight at each pass; older ones are found by the hourly full listing.
// A challenge is in flight for its challenge_timeout (5 min by default)
// once scheduled; one queued longer in a live process is never abandoned.
const inFlightLookback = 2 * time.Hour

// inFlightChallenges lists the challenges in flight that have a record of
// their own: the catalog's recent entries, and the markers of previous
// versions where any are left.
func inFlightChallenges(ctx context.Context, s store, logger *zap.Logger, now time.Time) []string {
	code := catalogKind(KindChallenge)
	entries, err := s.catalogEntriesSince(ctx, catalogHour(newID(now.Add(-inFlightLookback))), func(e catalogEntry) bool {
		return e.Kind == code && e.In == "" && !IsFinal(KindChallenge, e.State)
	})
	if err != nil {
		logger.Warn("listing the challenges in flight", zap.Error(err))
	}
	ids := make([]string, 0, len(entries))
	for _, e := range entries {
		ids = append(ids, e.ID)
	}
	if !s.hasLegacyIndex(ctx, KindChallenge) {
		return ids
	}
	err = Reader{s: s}.walkBuckets(ctx, s.inflightDir(KindChallenge), "", func(id string) (bool, error) {
		ids = append(ids, id)
		return false, nil
	})
	if err != nil {
		logger.Warn("listing the challenges in flight (previous version's markers)", zap.Error(err))
	}
	return ids
}

// judge examines the challenges of one pass.
type judge struct {
	m         *maintenance
	e         *Engine
	s         store
	beats     map[string]ownerRecord
	beatsRead bool
	absent    map[string]bool // owners whose missing record was checked: confirmed absent
	logger    *zap.Logger
	ended     int // abandoned challenges ended
}

// ownerOf is what the pass knows of the challenge's owner.
func (j *judge) ownerOf(ctx context.Context, ch *Challenge) ownerView {
	o := ownerView{here: ch.Owner == j.e.owner}
	if o.here {
		o.running = j.e.runs(j.s, ch.ID)
		return o
	}
	if !j.beatsRead || ch.Owner == "" {
		return o
	}
	if rec, ok := j.beats[ch.Owner]; ok {
		o.known, o.beat = true, rec.Updated
		return o
	}
	// absence is not proof: the store must be known to answer
	if j.absent == nil {
		j.absent = map[string]bool{}
	}
	confirmed, checked := j.absent[ch.Owner]
	if !checked {
		confirmed = j.s.confirmAbsent(ctx, j.s.ownerKey(ch.Owner)) == nil
		j.absent[ch.Owner] = confirmed
	}
	o.known = confirmed
	return o
}

// examine looks at one challenge: ends it if it is abandoned, cleans up
// what it presented if it is final and was not cleaned up. It returns when
// the challenge will become abandoned, if it is watched for that.
func (j *judge) examine(ctx context.Context, id string, now time.Time) time.Time {
	m := j.m
	if j.e.runs(j.s, id) {
		// this process runs it: its run ends it, or reports it
		m.unwatch(id)
		return time.Time{}
	}
	var ch Challenge
	if err := j.s.load(ctx, KindChallenge, id, &ch); err != nil {
		if isNotExist(err) || errors.Is(err, ErrCorrupt) || errors.Is(err, ErrNewerSchema) {
			m.unwatch(id) // gone, set aside (load reports it), or a newer version's to judge
		} else {
			m.watchID(id) // the storage failed: next pass
		}
		return time.Time{}
	}
	presented := !ch.Times.Presented.IsZero() && !ch.CleanedUp
	if IsFinal(KindChallenge, ch.State) {
		if !presented {
			m.unwatch(id)
			return time.Time{}
		}
		if err := j.cleanUp(ctx, &ch); err != nil {
			m.cleanUpFailed(id)
			j.logger.Warn("cleaning up a finished challenge's answer", zapChallenge(id), zapName(ch.Name), zap.Error(err))
			return time.Time{}
		}
		ch.CleanedUp, ch.Updated = true, now
		if err := j.s.saveResource(ctx, KindChallenge, id, ch.Name, ch.State, &ch); err != nil {
			j.logger.Warn("recording a leftover challenge's clean-up", zapChallenge(id), zap.Error(err))
		}
		m.unwatch(id)
		j.logger.Info("cleaned up a finished challenge's answer", zapChallenge(id), zapName(ch.Name), zapState(ch.State))
		return time.Time{}
	}

	at, why := abandonedAt(&ch, j.ownerOf(ctx, &ch), m.longestChallengeTimeout())
	if at.IsZero() || now.Before(at) {
		m.watchID(id)
		return at
	}
	j.abandon(ctx, &ch, why, now)
	return time.Time{}
}

// abandon ends an abandoned challenge, removing its answer first. The
// challenge is read again just before: a process may have resumed it
// since (its first write makes it that process's).
func (j *judge) abandon(ctx context.Context, judged *Challenge, why string, now time.Time) {
	m := j.m
	var ch Challenge
	if err := j.s.load(ctx, KindChallenge, judged.ID, &ch); err != nil {
		return
	}
	if ch.Owner != judged.Owner || ch.State != judged.State || !ch.Updated.Equal(judged.Updated) ||
		(ch.Owner == j.e.owner && j.e.runs(j.s, ch.ID)) {
		m.watchID(ch.ID)
		return
	}
	var cleanErr error
	if !ch.Times.Presented.IsZero() && !ch.CleanedUp {
		if cleanErr = j.cleanUp(ctx, &ch); cleanErr == nil {
			ch.CleanedUp = true
		}
	}
	ch.Version, ch.State, ch.Reason = SchemaVersion, ChallengeErrored, why
	if cleanErr != nil {
		ch.Reason = fmt.Sprintf("%s; its answer could not be removed yet: %v", why, cleanErr)
	}
	ch.Times.Finished, ch.Updated = now, now
	if err := j.s.saveResource(ctx, KindChallenge, ch.ID, ch.Name, ch.State, &ch); err != nil {
		j.logger.Warn("recording an abandoned challenge", zapChallenge(ch.ID), zap.Error(err))
		m.watchID(ch.ID)
		return
	}
	j.ended++
	fields := []zap.Field{zapChallenge(ch.ID), zapName(ch.Name), zap.String("owner", ch.Owner), zapReason(why)}
	if cleanErr != nil {
		m.cleanUpFailed(ch.ID)
		j.logger.Warn("ended an abandoned challenge; its answer could not be removed yet", append(fields, zap.Error(cleanErr))...)
	} else {
		m.unwatch(ch.ID)
		j.logger.Info("ended an abandoned challenge", fields...)
	}
	j.endOrphanedOrder(ctx, &ch, now)
}

// cleanUp removes what the challenge presented, with the solver of the
// policy that presented it, or, when that policy is not known here, of
// another policy with a solver of its type (logged).
func (j *judge) cleanUp(ctx context.Context, ch *Challenge) error {
	solver, policy := j.m.solverFor(ch.Policy, ch.Type)
	if solver == nil {
		return fmt.Errorf("no policy known to this process has a %s solver (the challenge's policy is %q)", ch.Type, ch.Policy)
	}
	if policy != ch.Policy {
		j.logger.Warn("cleaning up a leftover challenge with the solver of another policy: its own policy is not loaded here",
			zapChallenge(ch.ID), zap.String("policy", ch.Policy), zap.String("used_policy", policy), zap.String("type", ch.Type))
	}
	ctx, cancel := context.WithTimeout(ctx, cleanUpTimeout)
	defer cancel()
	chal := acme.Challenge{Type: ch.Type, Token: ch.Token, Identifier: identifierFor(ch.Name)}
	return solver.CleanUp(ctx, chal, ch.Presented)
}

// solverFor returns the solver of typ of the policy, or else of the most
// recently arrived policy that has one, and that policy's ID.
func (m *maintenance) solverFor(policy, typ string) (solvers.Solver, string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if o := m.policies[policy]; o != nil && o.Solvers[typ] != nil {
		return o.Solvers[typ], policy
	}
	for i := len(m.arrival) - 1; i >= 0; i-- {
		if s := m.policies[m.arrival[i]].Solvers[typ]; s != nil {
			return s, m.arrival[i]
		}
	}
	return nil, ""
}

// knowsPolicy reports whether the policy's options reached this
// maintenance (its challenges were made with this engine's account).
func (m *maintenance) knowsPolicy(policy string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.policies[policy]
	return ok
}

// longestChallengeTimeout judges challenges written by a version that
// recorded no owner or deadline.
func (m *maintenance) longestChallengeTimeout() time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	d := DefaultChallengeTimeout
	for _, o := range m.policies {
		d = max(d, o.ChallengeTimeout)
	}
	return d
}

func (m *maintenance) watched() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	ids := make([]string, 0, len(m.watch))
	for id := range m.watch {
		ids = append(ids, id)
	}
	return ids
}

func (m *maintenance) watchID(id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.watch[id]; !ok && len(m.watch) < maxWatched {
		m.watch[id] = 0
	}
}

func (m *maintenance) unwatch(id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.watch, id)
}

// cleanUpFailed counts a failed clean-up of a watched challenge; after
// maxQuickCleanUps it is left to the hourly listing.
func (m *maintenance) cleanUpFailed(id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := m.watch[id] + 1
	if n >= maxQuickCleanUps {
		delete(m.watch, id)
		return
	}
	if _, ok := m.watch[id]; ok || len(m.watch) < maxWatched {
		m.watch[id] = n
	}
}
