// Command certflow-demo shows certflow obtaining certificates on demand,
// while TLS handshakes wait, without root, network access or anything
// installed. Everything runs inside this one process on 127.0.0.1:
//
//   - Pebble, the ACME test CA, with its validator pointed at
//   - a DNS server that answers 127.0.0.1 for every name;
//   - an on-demand "ask" endpoint allowing every name under .demo.test and
//     refusing all others;
//   - Caddy, with the certflow issuer (tls.issuance.certflow) in its
//     catch-all on-demand automation policy. The second name of -names gets
//     a policy of its own that allows only TLS-ALPN-01; the others are
//     validated with HTTP-01. Caddy answers both challenge types itself.
//
// The demo then makes real TLS handshakes, verifying each chain against
// Pebble's root, and prints:
//
//  1. the first handshake for each name, all in parallel: each waits while
//     certflow runs CertificateRequest → Order → Challenge for its name;
//  2. the same handshakes again, now served from Caddy's certificate cache
//     without a single request to the CA;
//  3. a handshake for a name the ask endpoint refuses (evil.example): it
//     fails at once, certflow stores nothing and the CA sees nothing;
//  4. for each name, the resources certflow stored, read back from the
//     storage directory: the CertificateRequest (state, time taken), its
//     Order (state, authorizations reused) and each Challenge (type, state
//     and when it reached each step of its lifecycle — scheduled, synced,
//     presented, self-checked, accepted, finished — counted from its
//     creation);
//  5. how many requests of each kind the CA received.
//
// Usage:
//
//	go run ./cmd/certflow-demo [-names a.demo.test,b.demo.test,...] [-keep] [-v]
//
// -keep leaves the temporary directory (Caddy's storage, with certflow's
// resources as JSON files under storage/certflow/<issuer key>/) in place
// and prints its path; by default it is removed at exit. -v shows Caddy's
// log (INFO and up, including each certflow step) on stderr; by default
// only errors are logged.
//
// The exit status is 0 when every allowed handshake succeeded and the
// refused name was refused, 1 otherwise, 2 for bad flags and 130 when
// interrupted. Ctrl-C lets the handshakes in flight finish (up to 10s),
// then stops Caddy, the CA and the DNS server and removes the temporary
// directory unless -keep is given; a second Ctrl-C quits at once.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/certflow/certflow"
	"github.com/certflow/certflow/integration/rig"
)

const (
	// allowedSuffix is what the ask endpoint allows.
	allowedSuffix = ".demo.test"
	// deniedName is the name the demo shows being refused.
	deniedName = "evil.example"
	// email is the ACME account's contact.
	email = "demo@example.com"
	// firstTimeout bounds a handshake that waits for issuance.
	firstTimeout = 60 * time.Second
	// cachedTimeout bounds a handshake answered from the cache, or refused.
	cachedTimeout = 10 * time.Second
	// interruptGrace bounds how long an interrupted demo waits for the
	// handshakes in flight before it stops everything.
	interruptGrace = 10 * time.Second
	// stopTimeout bounds the stopping of each server at the end.
	stopTimeout = 10 * time.Second
	// startAttempts is how often starting is tried when a port that was free
	// a moment ago got taken (rig.FreePort cannot reserve it).
	startAttempts = 3
)

// errInterrupted reports that the demo was stopped by a signal.
var errInterrupted = errors.New("interrupted")

// options are the demo's flags.
type options struct {
	names   []string
	keep    bool
	verbose bool
}

func main() {
	os.Exit(realMain(os.Args[1:], os.Stdout, os.Stderr))
}

// realMain parses the flags, runs the demo and returns the exit status.
func realMain(args []string, stdout, stderr io.Writer) int {
	opts, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "certflow-demo: %v\n", err)
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// After the first signal, a second one kills the process the usual way.
	context.AfterFunc(ctx, stop)

	err = run(ctx, opts, stdout, stderr)
	switch {
	case errors.Is(err, errInterrupted):
		fmt.Fprintln(stderr, "certflow-demo: interrupted; stopped Caddy, the CA and the DNS server")
		return 130
	case err != nil:
		fmt.Fprintf(stderr, "certflow-demo: %v\n", err)
		return 1
	}
	return 0
}

// parseFlags reads the flags into options.
func parseFlags(args []string, stderr io.Writer) (options, error) {
	fs := flag.NewFlagSet("certflow-demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	names := fs.String("names", "shop.demo.test,blog.demo.test,api.demo.test",
		"comma-separated new names to obtain certificates for, each under "+allowedSuffix+
			"; the second one is validated with TLS-ALPN-01, the others with HTTP-01")
	keep := fs.Bool("keep", false, "keep the temporary directory with Caddy's storage and print its path")
	verbose := fs.Bool("v", false, "show Caddy's log (INFO and up) on stderr instead of errors only")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: certflow-demo [-names a.demo.test,b.demo.test] [-keep] [-v]")
		fmt.Fprintln(fs.Output(), "Runs Pebble, a DNS server and Caddy with certflow in this process and obtains certificates on demand.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return options{}, err
	}
	if fs.NArg() > 0 {
		return options{}, fmt.Errorf("unexpected arguments %q (names go in -names)", fs.Args())
	}
	opts := options{keep: *keep, verbose: *verbose}
	seen := map[string]bool{}
	for _, n := range strings.Split(*names, ",") {
		n = strings.TrimSuffix(strings.ToLower(strings.TrimSpace(n)), ".")
		if n == "" || seen[n] {
			continue
		}
		if !allowed(n) {
			return options{}, fmt.Errorf("-names: %q is not a name under %s, which is all the ask endpoint allows", n, allowedSuffix)
		}
		seen[n] = true
		opts.names = append(opts.names, n)
	}
	if len(opts.names) == 0 {
		return options{}, errors.New("-names: give at least one name")
	}
	return opts, nil
}

// allowed is the ask endpoint's decision.
func allowed(name string) bool {
	return strings.HasSuffix(name, allowedSuffix) && len(name) > len(allowedSuffix)
}

// world is everything the demo started.
type world struct {
	dir       string // temporary directory holding all the rest
	storage   string // Caddy's file-system storage
	httpPort  int
	httpsPort int
	dns       *rig.DNS
	ca        *rig.CA
	askURL    string
	alpnName  string    // the name with a TLS-ALPN-01-only policy, if any
	log       io.Writer // where the demo's own notes go (stderr)

	askMu   sync.Mutex
	refused []string // names the ask endpoint refused, in order

	closers []closer // run in reverse order by close
}

// closer stops one thing start started.
type closer struct {
	what string
	stop func() error
}

// run starts the world, runs the demo and tears everything down.
func run(ctx context.Context, opts options, out, log io.Writer) (err error) {
	var w *world
	for attempt := 1; ; attempt++ {
		w, err = start(opts, log)
		if err == nil || attempt == startAttempts || !isAddrInUse(err) || ctx.Err() != nil {
			break
		}
		// A port rig.FreePort found free was taken before Caddy bound it.
		if cerr := w.close(false); cerr != nil {
			return errors.Join(err, cerr)
		}
	}
	defer func() {
		if cerr := w.close(opts.keep); cerr != nil {
			err = errors.Join(err, cerr)
		}
		if opts.keep && w.dir != "" {
			fmt.Fprintf(out, "\nKept %s (Caddy's storage is in storage/, certflow's resources under storage/certflow/).\n", w.dir)
		}
	}()
	if err != nil {
		return err
	}
	if ctx.Err() != nil {
		return errInterrupted
	}
	return w.demo(ctx, opts, out)
}

// isAddrInUse reports whether err comes from binding a port already in use.
func isAddrInUse(err error) bool {
	// Caddy does not always wrap the listener's error with %w.
	return errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use")
}

// start brings up DNS, the CA, the ask endpoint and Caddy. On error the
// returned world holds what was started, for close.
func start(opts options, log io.Writer) (*world, error) {
	w := &world{log: log}
	var err error
	if w.dir, err = os.MkdirTemp("", "certflow-demo-"); err != nil {
		return w, fmt.Errorf("creating a temporary directory: %w", err)
	}
	w.storage = filepath.Join(w.dir, "storage")

	// Caddy keeps its own config and data (instance ID, …) in the XDG
	// directories: keep them inside the temporary directory too.
	for env, sub := range map[string]string{"XDG_CONFIG_HOME": "caddy-config", "XDG_DATA_HOME": "caddy-data"} {
		if err := os.Setenv(env, filepath.Join(w.dir, sub)); err != nil {
			return w, fmt.Errorf("setting %s: %w", env, err)
		}
	}

	if w.httpPort, w.httpsPort, err = twoFreePorts(); err != nil {
		return w, err
	}

	if w.dns, err = rig.StartDNS(); err != nil {
		return w, err
	}
	w.closers = append(w.closers, closer{"the DNS server", w.dns.Close})

	caDir := filepath.Join(w.dir, "ca")
	if err := os.Mkdir(caDir, 0o755); err != nil {
		return w, fmt.Errorf("creating %s: %w", caDir, err)
	}
	w.ca, err = rig.StartCA(rig.CAOptions{
		HTTPPort: w.httpPort,
		TLSPort:  w.httpsPort,
		DNSAddr:  w.dns.Addr,
		Dir:      caDir,
	})
	if err != nil {
		return w, err
	}
	w.closers = append(w.closers, closer{"the CA", w.ca.Close})

	var stopAsk func()
	w.askURL, stopAsk, err = rig.StartAsk(func(name string) bool {
		if allowed(name) {
			return true
		}
		w.askMu.Lock()
		w.refused = append(w.refused, name)
		w.askMu.Unlock()
		return false
	})
	if err != nil {
		return w, err
	}
	w.closers = append(w.closers, closer{"the ask endpoint", func() error { stopAsk(); return nil }})

	if len(opts.names) > 1 {
		w.alpnName = opts.names[1]
	}
	cfgJSON, err := w.caddyConfig(opts.verbose).JSON()
	if err != nil {
		return w, err
	}
	if err := rig.RunCaddy(cfgJSON); err != nil {
		return w, err
	}
	w.closers = append(w.closers, closer{"Caddy", rig.StopCaddy})
	return w, nil
}

// caddyConfig is the Caddy config: certflow in the catch-all on-demand
// policy and, for alpnName, in a policy of its own with HTTP-01 disabled.
func (w *world) caddyConfig(verbose bool) rig.CaddyConfig {
	cfg := rig.CaddyConfig{
		HTTPPort:    w.httpPort,
		HTTPSPort:   w.httpsPort,
		StorageRoot: w.storage,
		AskURL:      w.askURL,
		Issuer:      w.issuerConfig(nil),
		LogLevel:    "ERROR",
	}
	if verbose {
		cfg.LogLevel = "INFO"
	}
	if w.alpnName != "" {
		cfg.Policies = []rig.Policy{{
			Subjects: []string{w.alpnName},
			Issuers: []map[string]any{w.issuerConfig(map[string]any{
				"http": map[string]any{"disabled": true},
			})},
			OnDemand: true,
		}}
	}
	return cfg
}

// issuerConfig returns a certflow issuer object for the demo's CA, DNS and ports,
// with the given challenges setting if not nil.
func (w *world) issuerConfig(challenges map[string]any) map[string]any {
	iss := map[string]any{
		"module":                  "certflow",
		"ca":                      w.ca.DirectoryURL,
		"email":                   email,
		"trusted_roots_pem_files": []string{w.ca.ServerRootsFile},
		"self_check": map[string]any{
			"resolvers":    []string{w.dns.Addr},
			"http_port":    w.httpPort,
			"tlsalpn_port": w.httpsPort,
		},
	}
	if challenges != nil {
		iss["challenges"] = challenges
	}
	return iss
}

// close stops what start started, in reverse order, and removes the
// temporary directory unless keep. Each stop may take stopTimeout; one that
// takes longer is left behind (the process is about to exit anyway).
func (w *world) close(keep bool) error {
	var errs []error
	for i := len(w.closers) - 1; i >= 0; i-- {
		c := w.closers[i]
		done := make(chan error, 1)
		go func() { done <- c.stop() }()
		select {
		case err := <-done:
			errs = append(errs, err)
		case <-time.After(stopTimeout):
			fmt.Fprintf(w.log, "certflow-demo: stopping %s takes longer than %s; leaving it\n", c.what, stopTimeout)
		}
	}
	w.closers = nil
	if w.dir != "" && !keep {
		if err := os.RemoveAll(w.dir); err != nil {
			errs = append(errs, fmt.Errorf("removing %s: %w", w.dir, err))
		}
	}
	return errors.Join(errs...)
}

// refusedNames returns the names the ask endpoint refused so far.
func (w *world) refusedNames() []string {
	w.askMu.Lock()
	defer w.askMu.Unlock()
	return append([]string(nil), w.refused...)
}

// addr is Caddy's HTTPS address.
func (w *world) addr() string { return fmt.Sprintf("127.0.0.1:%d", w.httpsPort) }

// twoFreePorts returns two different free ports on 127.0.0.1.
func twoFreePorts() (int, int, error) {
	for range 10 {
		a, err := rig.FreePort()
		if err != nil {
			return 0, 0, err
		}
		b, err := rig.FreePort()
		if err != nil {
			return 0, 0, err
		}
		if a != b {
			return a, b, nil
		}
	}
	return 0, 0, errors.New("finding two free ports on 127.0.0.1: got the same port every time")
}
