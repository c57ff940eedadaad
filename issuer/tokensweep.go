package issuer

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"time"

	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"

	"github.com/certflow/certflow/solvers"
)

// An HTTP-01 or TLS-ALPN-01 answer is certmagic's token file in storage
// (acme/<issuer key>/challenge_tokens/<name>.json), written by the workflow
// without writing its challenge first: a process that dies between writing
// it and its challenge's next write leaves a token no record tells of. So
// maintenance looks at the token folders of the policies it knows every
// pass (one listing each), and removes a token it found in two passes at
// least strayTokenAge apart when no issuance of its name is in flight
// anywhere: it can take the name's issue_cert lock, which every issuance
// (certflow's, and the stock acme issuer's, which shares the folder)
// holds while its answer is presented. Under that lock, a token that did
// not change since it was read is nobody's. The next request for the
// name removes it sooner (order_resume.go).

// strayTokenAge is how long a token must have been seen before it is
// looked at: an issuance presents its answer for a few seconds at most,
// unless its self-check fails (then it holds its name's lock anyway).
const strayTokenAge = 50 * time.Second

// maxTokensSeen bounds the tokens remembered between passes.
const maxTokensSeen = 100000

// sweepTokens removes the token files no issuance has.
func (m *maintenance) sweepTokens(ctx context.Context, s store, now time.Time) {
	logger := m.options().Logger
	seen := map[string]bool{}
	for _, dir := range m.tokenDirs() {
		keys, err := s.storage.List(ctx, dir, false)
		if isNotExist(err) {
			continue
		}
		if err != nil {
			logger.Warn("listing challenge tokens", zap.String("folder", dir), zap.Error(err))
			return // what is remembered stays: the next pass goes on
		}
		for _, key := range keys {
			seen[key] = true
			first := m.tokenFirstSeen(key, now)
			if now.Sub(first) < strayTokenAge {
				continue
			}
			if removed, err := removeStrayToken(ctx, s, key); err != nil {
				logger.Warn("removing a challenge token no issuance has", zap.String("key", key), zap.Error(err))
			} else if removed {
				m.forgetToken(key)
				logger.Info("removed a challenge token no issuance had", zap.String("key", key),
					zap.Time("first_seen", first))
			}
		}
	}
	m.keepTokens(seen)
}

// removeStrayToken deletes a token file if no issuance of its name is in
// flight (its issue_cert lock can be taken) and it did not change.
func removeStrayToken(ctx context.Context, s store, key string) (bool, error) {
	b, err := s.storage.Load(ctx, key)
	if isNotExist(err) {
		return false, nil
	}
	if err != nil {
		return false, storageErr("loading", key, err)
	}
	var chal acme.Challenge
	if json.Unmarshal(b, &chal) != nil || chal.Identifier.Value == "" || CheckName(chal.Identifier.Value) != nil {
		return false, nil // not a token this process can judge
	}
	lock := "issue_cert_" + chal.Identifier.Value
	held, err := tryLock(ctx, s.storage, lock)
	if err != nil {
		return false, storageErr("locking", lock, err)
	}
	if !held {
		return false, nil // an issuance of the name is in flight
	}
	defer func() { _ = s.storage.Unlock(context.WithoutCancel(ctx), lock) }()
	again, err := s.storage.Load(ctx, key)
	if isNotExist(err) {
		return false, nil
	}
	if err != nil {
		return false, storageErr("loading", key, err)
	}
	if !bytes.Equal(again, b) {
		return false, nil // presented again since: judged at a later pass
	}
	if err := s.storage.Delete(ctx, key); err != nil && !isNotExist(err) {
		return false, storageErr("deleting", key, err)
	}
	return true, nil
}

// tokenDirs are the token folders of the policies maintenance knows.
func (m *maintenance) tokenDirs() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var dirs []string
	for _, o := range m.policies {
		for _, sol := range o.Solvers {
			if k, ok := sol.(solvers.TokenKeeper); ok && !slices.Contains(dirs, k.TokenDir()) {
				dirs = append(dirs, k.TokenDir())
			}
		}
	}
	slices.Sort(dirs)
	return dirs
}

// tokenFirstSeen returns when the token was first seen, recording now when
// it is new.
func (m *maintenance) tokenFirstSeen(key string, now time.Time) time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	if t, ok := m.tokens[key]; ok {
		return t
	}
	if len(m.tokens) < maxTokensSeen {
		m.tokens[key] = now
	}
	return now
}

func (m *maintenance) forgetToken(key string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.tokens, key)
}

// keepTokens forgets the tokens not listed any more.
func (m *maintenance) keepTokens(listed map[string]bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for key := range m.tokens {
		if !listed[key] {
			delete(m.tokens, key)
		}
	}
}

// removeStaleToken removes the token files of the request's names that a
// crashed run may have left, for a resumed order: the workflow holds the
// name's lock and has presented nothing yet.
func (w *workflow) removeStaleToken(ctx context.Context) {
	for _, sol := range w.opts.Solvers {
		k, ok := sol.(solvers.TokenKeeper)
		if !ok {
			continue
		}
		for _, id := range w.ids {
			if err := k.RemoveStale(ctx, id); err != nil {
				w.logger.Warn("removing a token a crashed run left", zap.Error(err))
			}
		}
	}
}
