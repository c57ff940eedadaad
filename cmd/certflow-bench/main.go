// Command certflow-bench benchmarks certflow against stock Caddy: the same
// Caddy binary (cmd/caddy, with certflow compiled in) runs as a separate
// process, alternately with the stock acme issuer and with certflow, against
// an in-process Pebble, and the figures are printed side by side with the
// ratio certflow/stock. See internal/bench for what is measured.
//
// Usage, from the module root:
//
//	go run ./cmd/certflow-bench [-scenarios 1,50x50,100x100,200x50,1000x100:certflow] [-rounds 5] [-quick]
//
// A scenario "N" is N names one at a time (after one warm-up issuance);
// "NxC" is N names with at most C handshakes in flight; a suffix
// ":certflow" or ":stock" runs that issuer alone. The default set runs
// 1000x100 with certflow alone: stock Caddy takes many minutes for it, and
// its target compares certflow's memory with stock's at 200x50. -quick runs
// 1,10x10 for a fast look.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/certflow/certflow/internal/bench"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "certflow-bench:", err)
		os.Exit(1)
	}
}

// quickRounds is the default number of rounds with -quick.
const quickRounds = 3

// run parses the flags, builds Caddy, runs the benchmark and prints the
// report, also when the benchmark stopped early.
func run() error {
	scenarios := flag.String("scenarios", bench.DefaultScenarios, "comma-separated scenarios: N (N names one at a time) or NxC (N names, C in flight)")
	rounds := flag.Int("rounds", 5, "rounds of each single-name scenario (median reported)")
	quick := flag.Bool("quick", false, "run "+bench.QuickScenarios+" for a fast look ("+fmt.Sprint(quickRounds)+" rounds unless -rounds is given)")
	issuers := flag.String("issuers", bench.Stock+","+bench.Certflow, "issuers to run, comma-separated (one alone, e.g. to profile, prints no ratios)")
	cached := flag.Int("cached", 200, "cached handshakes timed per run")
	timeout := flag.Duration("timeout", 90*time.Second, "timeout of one handshake for a new name")
	workDir := flag.String("workdir", "", "parent directory of the runs' storage (local disk); default the temp directory")
	keep := flag.Bool("keep", false, "keep each run's directory (storage, Caddy config and log)")
	logLevel := flag.String("log-level", "INFO", "Caddy's log level (its log goes to a file in the run's directory)")
	traceDir := flag.String("trace", "", "directory for a Go execution trace, CPU profile and heap profile of Caddy during each burst")
	traceSeconds := flag.Int("trace-seconds", 3, "length of each trace and profile")
	caddyBin := flag.String("caddy", "", "use this Caddy binary (built from ./cmd/caddy) instead of building one")
	flag.Parse()
	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", flag.Args())
	}

	set := map[string]bool{}
	flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if *quick {
		if set["scenarios"] {
			return errors.New("-quick and -scenarios exclude each other")
		}
		*scenarios = bench.QuickScenarios
		if !set["rounds"] {
			*rounds = quickRounds
		}
	}
	list, err := bench.ParseScenarios(*scenarios)
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		// after the first signal, the next one ends the process at once
		<-ctx.Done()
		stop()
	}()

	binary := *caddyBin
	if binary == "" {
		tmp, err := os.MkdirTemp(*workDir, "certflow-bench-bin-")
		if err != nil {
			return fmt.Errorf("creating a directory for the Caddy binary: %w", err)
		}
		defer os.RemoveAll(tmp)
		binary = filepath.Join(tmp, "caddy")
		fmt.Fprintf(os.Stderr, "building %s …\n", bench.CaddyPackage)
		if err := bench.BuildCaddy(ctx, binary, false); err != nil {
			return err
		}
	}

	report, runErr := bench.Run(ctx, bench.Options{
		CaddyBinary:      binary,
		Scenarios:        list,
		Issuers:          strings.Split(*issuers, ","),
		Rounds:           *rounds,
		CachedHandshakes: *cached,
		HandshakeTimeout: *timeout,
		WorkDir:          *workDir,
		Keep:             *keep,
		LogLevel:         *logLevel,
		TraceDir:         *traceDir,
		TraceSeconds:     *traceSeconds,
		Progress:         os.Stderr,
	})
	if report != nil {
		fmt.Printf("command: %s\n\n", commandLine())
		if err := report.Print(os.Stdout); err != nil {
			return errors.Join(runErr, err)
		}
	}
	return runErr
}

// commandLine is how the benchmark was invoked, for the report.
func commandLine() string {
	s := "certflow-bench"
	for _, a := range os.Args[1:] {
		s += " " + a
	}
	return s
}
