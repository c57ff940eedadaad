package issuer

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mholt/acmez/v3/acme"

	"github.com/certflow/certflow/solvers"
)

// sweepStorage is a lockingStorage whose listings can fail, and which runs
// a hook before each TryLock: between the sweep's first read of a token
// and its second, as an issuance could.
type sweepStorage struct {
	*lockingStorage
	failList      func(prefix string) error
	beforeTryLock func(lock string)
}

func (s *sweepStorage) List(ctx context.Context, prefix string, recursive bool) ([]string, error) {
	if s.failList != nil {
		if err := s.failList(prefix); err != nil {
			return nil, err
		}
	}
	return s.lockingStorage.List(ctx, prefix, recursive)
}

func (s *sweepStorage) TryLock(ctx context.Context, lock string) (bool, error) {
	if s.beforeTryLock != nil {
		s.beforeTryLock(lock)
	}
	return s.lockingStorage.TryLock(ctx, lock)
}

// sweepRig is maintenance of one store with a policy whose HTTP-01
// answers are certmagic's token files.
type sweepRig struct {
	t      *testing.T
	st     *sweepStorage
	s      store
	m      *maintenance
	tokens solvers.TokenStore
	start  time.Time
}

func newSweepRig(t *testing.T) *sweepRig {
	st := &sweepStorage{lockingStorage: newLockingStorage()}
	r := &sweepRig{t: t, st: st, s: store{storage: st, issuerKey: "certflow-sweep"},
		tokens: solvers.TokenStore{Storage: st, IssuerKey: "acme.test-dir"}, start: time.Now()}
	opts := &Options{Storage: st, IssuerKey: r.s.issuerKey, PolicyID: "http",
		Solvers: map[string]solvers.Solver{acme.ChallengeTypeHTTP01: solvers.NewHTTP01(solvers.Config{Storage: st, IssuerKey: r.tokens.IssuerKey})}}
	opts.SetDefaults()
	r.m = newTestMaintenance(opts)
	return r
}

// present writes name's answer as the workflow (or the stock issuer)
// does, and returns its key.
func (r *sweepRig) present(name, token string) string {
	r.t.Helper()
	chal := acme.Challenge{Type: acme.ChallengeTypeHTTP01, Identifier: acme.Identifier{Type: "dns", Value: name},
		Token: token, KeyAuthorization: token + ".thumbprint"}
	if err := r.tokens.Present(context.Background(), chal); err != nil {
		r.t.Fatal(err)
	}
	return r.tokens.Key(chal)
}

// pass runs the token sweep at start+at.
func (r *sweepRig) pass(at time.Duration) {
	r.m.sweepTokens(context.Background(), r.s, r.start.Add(at))
}

func (r *sweepRig) exists(key string) bool { return r.st.Exists(context.Background(), key) }

// TestSweepTokens: a token file no issuance has is removed once seen in
// two passes at least strayTokenAge apart, with its name's issue_cert
// lock free and its value unchanged; anything else keeps it.
func TestSweepTokens(t *testing.T) {
	const name = "stray.example"
	type pass struct {
		at     time.Duration // after the first pass
		kept   bool          // the token is there after this pass
		before func(r *sweepRig)
	}
	tests := []struct {
		desc   string
		setup  func(r *sweepRig, key string)
		passes []pass
	}{
		{
			desc:   "seen in one pass: kept",
			passes: []pass{{0, true, nil}},
		},
		{
			desc:   "seen again just before strayTokenAge: kept; at strayTokenAge: removed",
			passes: []pass{{0, true, nil}, {strayTokenAge - time.Nanosecond, true, nil}, {strayTokenAge, false, nil}},
		},
		{
			desc: "its name's lock held (an issuance in flight): kept until it is free",
			setup: func(r *sweepRig, _ string) {
				if err := r.st.Lock(context.Background(), "issue_cert_"+name); err != nil {
					r.t.Fatal(err)
				}
			},
			passes: []pass{{0, true, nil}, {strayTokenAge, true, nil}, {10 * strayTokenAge, true, nil},
				{11 * strayTokenAge, false, func(r *sweepRig) { _ = r.st.Unlock(context.Background(), "issue_cert_"+name) }}},
		},
		{
			desc: "presented again between the sweep's read and its removal: kept",
			setup: func(r *sweepRig, _ string) {
				r.st.beforeTryLock = func(lock string) {
					if lock == "issue_cert_"+name {
						r.present(name, "presented-again") // as an issuance that just released the lock
					}
				}
			},
			passes: []pass{{0, true, nil}, {strayTokenAge, true, nil}},
		},
		{
			desc: "a listing that fails: what was seen before is remembered",
			setup: func(r *sweepRig, _ string) {
				n := 0
				r.st.failList = func(prefix string) error {
					if !strings.Contains(prefix, "challenge_tokens") {
						return nil
					}
					n++
					if n == 2 { // the second pass's
						return errors.New("storage unavailable")
					}
					return nil
				}
			},
			passes: []pass{{0, true, nil}, {10 * time.Second, true, nil}, {strayTokenAge, false, nil}},
		},
		{
			desc: "gone from one pass, presented again: seen anew",
			setup: func(r *sweepRig, key string) {
				n := 0
				r.st.failList = func(prefix string) error {
					n++
					switch n {
					case 2: // before the second pass, its issuance removed it
						_ = r.st.Delete(context.Background(), key)
					case 3: // before the third, a new issuance presented one
						r.present(name, "second-issuance")
					}
					return nil
				}
			},
			passes: []pass{{0, true, nil}, {10 * time.Second, false, nil}, {strayTokenAge, true, nil}, {2 * strayTokenAge, false, nil}},
		},
		{
			desc: "not a token this process can judge: kept",
			setup: func(r *sweepRig, key string) {
				if err := r.st.Store(context.Background(), key, []byte("not a challenge")); err != nil {
					r.t.Fatal(err)
				}
			},
			passes: []pass{{0, true, nil}, {strayTokenAge, true, nil}, {10 * strayTokenAge, true, nil}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			r := newSweepRig(t)
			key := r.present(name, "first")
			if tt.setup != nil {
				tt.setup(r, key)
			}
			for i, p := range tt.passes {
				if p.before != nil {
					p.before(r)
				}
				r.pass(p.at)
				if got := r.exists(key); got != p.kept {
					t.Fatalf("after pass %d (at +%s): token there %v, want %v", i+1, p.at, got, p.kept)
				}
			}
		})
	}
}

// TestSweepTokensRemembersAtMostMaxTokensSeen: with maxTokensSeen tokens
// remembered, a new one is not, so it is not removed at the next pass
// (it counts from the first pass that remembers it); the memory never
// grows past the bound.
func TestSweepTokensRemembersAtMostMaxTokensSeen(t *testing.T) {
	r := newSweepRig(t)
	key := r.present("late.example", "t")
	// the memory full of tokens seen long ago (that the next listing no
	// longer returns)
	r.m.mu.Lock()
	for i := range maxTokensSeen {
		r.m.tokens[fmt.Sprintf("acme/gone/challenge_tokens/%d.json", i)] = r.start.Add(-time.Hour)
	}
	r.m.mu.Unlock()
	r.pass(0)
	r.m.mu.Lock()
	_, remembered := r.m.tokens[key]
	n := len(r.m.tokens)
	r.m.mu.Unlock()
	if remembered || n > maxTokensSeen {
		t.Fatalf("with the memory full: the new token remembered %v, %d remembered (bound %d)", remembered, n, maxTokensSeen)
	}
	r.pass(strayTokenAge)
	if !r.exists(key) {
		t.Fatal("removed although its first sighting was not remembered")
	}
	r.pass(2 * strayTokenAge)
	if r.exists(key) {
		t.Fatal("not removed strayTokenAge after the pass that remembered it")
	}
}
