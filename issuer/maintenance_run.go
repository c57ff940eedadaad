package issuer

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// RunMaintenancePass runs one maintenance pass, the hourly work included,
// over opts' storage as at now: for tools and tests that cannot wait for
// the clock. It is the pass a running process makes (maintenance.go),
// every stored challenge looked at, with opts as the only policy known,
// and it goes on past a failure as that pass does: failures are logged to
// opts.Logger. The error reports only options it cannot run with, or ctx
// ending before the pass did.
//
// It runs in no process's name and remembers nothing between calls: it
// writes no heartbeat; a token no issuance has is only noted (a pass
// removes one an earlier pass of the same process saw strayTokenAge
// before); an abandoned order is ended in storage but not deactivated at
// the CA (it has no account). The names' sweep, when due, runs within the
// pass, and the expiry notes and catalog entries the pass makes are
// written before it returns.
//
// At a clock ahead of the processes using the storage, their challenges in
// flight read as abandoned (their heartbeats look lapsed) and are ended:
// run it ahead of time only over a storage no process uses.
func RunMaintenancePass(ctx context.Context, opts Options, now time.Time) error {
	if opts.Storage == nil {
		return errors.New("maintenance pass: no storage")
	}
	if opts.IssuerKey == "" {
		return errors.New("maintenance pass: no issuer key")
	}
	if now.IsZero() {
		return errors.New("maintenance pass: no time to run it at")
	}
	opts.SetDefaults()
	e := &Engine{owner: newOwnerID(), logger: opts.Logger, breaker: newBreaker(), stopped: make(chan struct{}),
		maint: map[string]*maintenance{}}
	defer close(e.stopped)
	m := newMaintenance(func() {})
	m.sweepInPass = true
	m.setOptions(&opts)
	m.pass(ctx, e, e.storeFor(&opts), &opts, now, true, true)
	flush := saveTimeout
	if deadline, ok := ctx.Deadline(); ok {
		flush = min(flush, time.Until(deadline))
	}
	FlushIndex(flush)
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("maintenance pass at %s cut short: %w", now.Format(time.RFC3339), err)
	}
	return nil
}
