package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/certflow/certflow/integration/rig"
)

// bench is one benchmark: the options and what every run shares.
type bench struct {
	opts   Options
	dns    *rig.DNS
	askURL string
	// finishedDirs are the directories of finished runs, removed at the end
	finishedDirs []string
}

// removeFinishedDirs removes the directories of the finished runs.
func (b *bench) removeFinishedDirs() error {
	var errs []error
	for _, dir := range b.finishedDirs {
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, fmt.Errorf("removing the run's directory: %w", err))
		}
	}
	b.finishedDirs = nil
	return errors.Join(errs...)
}

// Run runs every scenario of opts with each issuer of opts.Issuers (both by
// default), alternating them run by run, and returns what was measured.
// Single-name scenarios are repeated opts.Rounds times, the issuer that goes
// first alternating from round to round; other scenarios run once per
// issuer, stock first. Each run starts a fresh Pebble and a fresh Caddy
// process with fresh storage.
//
// Run returns an error, and the runs finished so far, when a run cannot be
// measured or ctx ends; failed handshakes are not errors but results.
func Run(ctx context.Context, opts Options) (*Report, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if opts.TraceDir != "" {
		if err := os.MkdirAll(opts.TraceDir, 0o755); err != nil {
			return nil, fmt.Errorf("creating the trace directory: %w", err)
		}
	}
	b := &bench{opts: opts}
	if b.dns, err = rig.StartDNS(); err != nil {
		return nil, fmt.Errorf("starting the DNS server: %w", err)
	}
	var stopAsk func()
	if b.askURL, stopAsk, err = rig.StartAsk(nil); err != nil {
		return nil, errors.Join(fmt.Errorf("starting the ask endpoint: %w", err), b.dns.Close())
	}
	report, err := b.runAll(ctx)
	err = errors.Join(err, b.removeFinishedDirs())
	stopAsk()
	if closeErr := b.dns.Close(); closeErr != nil {
		err = errors.Join(err, fmt.Errorf("stopping the DNS server: %w", closeErr))
	}
	return report, err
}

// runAll runs the scenarios in order.
func (b *bench) runAll(ctx context.Context) (*Report, error) {
	report := &Report{Options: b.opts, Started: time.Now()}
	total := 0
	for _, sc := range b.opts.Scenarios {
		total += len(sc.issuers(b.opts.Issuers)) * b.roundsOf(sc)
	}
	seq := 0
	for _, sc := range b.opts.Scenarios {
		sr := &ScenarioResult{Scenario: sc}
		report.Scenarios = append(report.Scenarios, sr)
		for round := range b.roundsOf(sc) {
			for _, issuer := range issuerOrder(sc.issuers(b.opts.Issuers), round) {
				seq++
				fmt.Fprintf(b.opts.Progress, "[%d/%d] scenario %s, round %d, %s: running\n", seq, total, sc, round+1, issuer)
				res, err := b.runOnce(ctx, issuer, sc, round+1, seq)
				if err != nil {
					return report, fmt.Errorf("run %d (scenario %s, round %d, %s): %w", seq, sc, round+1, issuer, err)
				}
				sr.Runs = append(sr.Runs, res)
				fmt.Fprintf(b.opts.Progress, "[%d/%d] scenario %s, round %d, %s: %s\n", seq, total, sc, round+1, issuer, summaryLine(res))
			}
		}
	}
	report.Finished = time.Now()
	return report, nil
}

// roundsOf is how many rounds a scenario runs.
func (b *bench) roundsOf(sc Scenario) int {
	if sc.Single() {
		return b.opts.Rounds
	}
	return 1
}

// issuerOrder is the order of the issuers in a round (0-based): as given
// (stock first by default) in even rounds, reversed in odd ones, so neither
// always runs on a machine the other just warmed up.
func issuerOrder(issuers []string, round int) []string {
	if round%2 == 0 {
		return issuers
	}
	reversed := slices.Clone(issuers)
	slices.Reverse(reversed)
	return reversed
}

// summaryLine is the progress line of a finished run.
func summaryLine(r *RunResult) string {
	ok := len(r.Issued)
	return fmt.Sprintf("%d/%d handshakes ok, wall %s, p50 %s, max %s, settled in %s, cached p50 %s, peak RSS %s, CPU %s",
		ok, r.Scenario.Names, fmtDuration(r.Wall), fmtDuration(percentile(r.Issued, 50)),
		fmtDuration(percentile(r.Issued, 100)), fmtDuration(r.Settle), fmtDuration(percentile(r.Cached, 50)),
		fmtBytes(r.PeakRSS), fmtDuration(r.CPU))
}
