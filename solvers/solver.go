// Package solvers holds one small type per ACME challenge type. A solver makes
// a challenge answerable (Present), checks from outside that it is answered
// the way the CA will look (SelfCheck), and removes what it presented
// (CleanUp). The workflow engine drives solvers; they keep no state between
// calls except what Present returns for the engine to persist.
package solvers

import (
	"context"
	"encoding/json"
	"time"

	"github.com/mholt/acmez/v3/acme"
)

// Solver solves one challenge type.
//
// The challenge passed to every method has Token, KeyAuthorization and
// Identifier filled in (acme.Client.GetAuthorization does this).
type Solver interface {
	// Present makes the challenge answerable. It MUST be safe to call again
	// for a challenge already presented (a resumed workflow does that), and
	// it MUST NOT remove answers presented by someone else for the same
	// identifier. What it returns is persisted with the challenge and handed
	// back to CleanUp, possibly in another process: it MUST NOT contain
	// secrets.
	Present(ctx context.Context, chal acme.Challenge) (memo json.RawMessage, err error)

	// SelfCheck reports whether the challenge is answered as the CA will
	// see it. A nil error means the check passed; otherwise the error is the
	// human-readable reason, recorded on the challenge and retried on an
	// interval. It MUST return once ctx is done.
	SelfCheck(ctx context.Context, chal acme.Challenge) error

	// CleanUp removes what Present made. memo is what Present returned (nil
	// if Present never returned). It MUST NOT fail when there is nothing to
	// remove, and MUST remove only what this challenge presented.
	CleanUp(ctx context.Context, chal acme.Challenge, memo json.RawMessage) error
}

// ExclusionKeyer is implemented by solvers whose challenges must not run at
// the same time as another challenge with the same key (for example a DNS
// provider that cannot hold two TXT values for one record name). The
// scheduler holds back a challenge while another live one has its key.
type ExclusionKeyer interface {
	// ExclusionKey returns the key, or "" when the challenge can run
	// alongside any other.
	ExclusionKey(chal acme.Challenge) string
}

// SelfCheckTuner is implemented by solvers whose self-check follows its own
// schedule rather than the issuer's self_check settings (DNS-01's
// propagation_delay and propagation_timeout, as in the stock acme issuer).
type SelfCheckTuner interface {
	SelfCheckTuning() SelfCheckTuning
}

// SelfCheckTuning is a solver's own self-check schedule. Zero durations keep
// the issuer's settings.
type SelfCheckTuning struct {
	// Skip the self-check entirely.
	Skip bool
	// Delay is a fixed wait after presenting, before the first check (or
	// before accepting, when the check is skipped).
	Delay time.Duration
	// Interval between failed checks.
	Interval time.Duration
	// Timeout bounds how long the check may keep failing.
	Timeout time.Duration
}

// Planner is implemented by solvers whose CleanUp needs to know what
// Present published, which Present's memo would otherwise carry (DNS-01:
// the TXT record). The engine stores the plan with the challenge before it
// presents, so that a crash, or a failed write between Present and the
// write of its memo, never leaves a record that nothing can find.
type Planner interface {
	// Plan returns a memo describing what Present will publish for chal.
	// CleanUp MUST accept it in place of Present's own memo. It MUST NOT
	// contain secrets.
	Plan(chal acme.Challenge) (memo json.RawMessage, err error)
}

// TokenKeeper is implemented by solvers whose answers are certmagic's
// challenge token files in storage (HTTP-01, TLS-ALPN-01): one file per
// name, written and removed only by the holder of the name's issue_cert
// lock (certflow's workflow, or the stock acme issuer).
type TokenKeeper interface {
	// CleanUpOwned removes chal's answer without reading it first. The
	// caller MUST hold the name's issue_cert lock: the file can then only
	// be chal's (or a stale one, which is as well removed).
	CleanUpOwned(ctx context.Context, chal acme.Challenge) error
	// RemoveStale removes the answer file the identifier has, whatever it
	// holds. The caller MUST hold the name's issue_cert lock and present
	// nothing for it at that time: the file is then a crashed run's.
	RemoveStale(ctx context.Context, id acme.Identifier) error
	// TokenDir is the storage folder of the answer files, for
	// maintenance's look for answers left behind.
	TokenDir() string
}
