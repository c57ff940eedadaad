package integration

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/certflow/certflow/integration/rig"
	"github.com/certflow/certflow/internal/bench"
)

// benchCaddyEnv names a prebuilt Caddy binary (from ./internal/bench/caddy)
// for TestBenchSmoke to use instead of building one.
const benchCaddyEnv = "CERTFLOW_BENCH_CADDY"

// TestBenchSmoke runs the benchmark (internal/bench, which cmd/certflow-bench
// wraps) briefly, with certflow and with the stock acme issuer, as separate
// Caddy processes: one name after a warm-up, then 5 names at concurrency 5,
// on the file system and on two nodes sharing Redis. It asserts
// correctness only — every handshake succeeds with a certificate that
// verifies against Pebble's root, every name was issued by the CA, the
// storage work of every issuance was counted (certflow's own calls for
// certflow only, Redis commands on Redis), and the report prints both
// issuers with their ratios — never timings.
func TestBenchSmoke(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	binary := os.Getenv(benchCaddyEnv)
	if binary == "" {
		binary = filepath.Join(t.TempDir(), "caddy")
		start := time.Now()
		if err := bench.BuildCaddy(ctx, binary, bench.RaceEnabled); err != nil {
			t.Fatal(err)
		}
		t.Logf("built Caddy in %s", time.Since(start).Round(time.Millisecond))
	}

	const cached = 10
	scenarios := []bench.Scenario{{Names: 1, Concurrency: 1}, {Names: 5, Concurrency: 5}}
	wantTitles := []string{"== scenario 1:", "== scenario 5x5:"}
	if _, err := rig.RedisServerPath(); err == nil || os.Getenv("CI") == "true" {
		scenarios = append(scenarios, bench.Scenario{Names: 5, Concurrency: 5, Storage: bench.StorageRedis, Nodes: 2})
		wantTitles = append(wantTitles, "== scenario 5x5/redis2:")
	} else {
		t.Logf("no Redis scenario: %v", err)
	}
	var progress bytes.Buffer
	report, err := bench.Run(ctx, bench.Options{
		CaddyBinary:      binary,
		Scenarios:        scenarios,
		Rounds:           1,
		CachedHandshakes: cached,
		HandshakeTimeout: 30 * time.Second,
		WorkDir:          t.TempDir(),
		Progress:         &progress,
	})
	t.Logf("progress:\n%s", progress.String())
	if err != nil {
		t.Fatal(err)
	}

	if len(report.Scenarios) != len(scenarios) {
		t.Fatalf("report has %d scenarios, want %d", len(report.Scenarios), len(scenarios))
	}
	for _, s := range report.Scenarios {
		for _, issuer := range []string{bench.Stock, bench.Certflow} {
			f, ok := s.Figures(issuer)
			if !ok || f.Runs != 1 {
				t.Errorf("scenario %s, %s: %d runs, want 1", s.Scenario, issuer, f.Runs)
				continue
			}
			if f.Issued != s.Scenario.Names || len(f.Failures) != 0 {
				t.Errorf("scenario %s, %s: %d/%d new-name handshakes succeeded; failures: %+v",
					s.Scenario, issuer, f.Issued, s.Scenario.Names, f.Failures)
			}
			if f.CachedOK != cached || len(f.CachedFailures) != 0 {
				t.Errorf("scenario %s, %s: %d/%d cached handshakes succeeded; failures: %+v",
					s.Scenario, issuer, f.CachedOK, cached, f.CachedFailures)
			}
			if f.CAPerName[rig.KindNewOrder] < 1 || f.CAPerName[rig.KindCert] < 1 {
				t.Errorf("scenario %s, %s: CA requests per name %v: want at least one order and one certificate download",
					s.Scenario, issuer, f.CAPerName)
			}
			if f.PeakRSS <= 0 || f.P50 <= 0 || f.CachedP50 <= 0 {
				t.Errorf("scenario %s, %s: figures missing: %+v", s.Scenario, issuer, f)
			}
			checkBenchStorage(t, s.Scenario, issuer, f)
		}
	}

	var out bytes.Buffer
	if err := report.Print(&out); err != nil {
		t.Fatal(err)
	}
	text := out.String()
	t.Logf("report:\n%s", text)
	for _, want := range append(wantTitles, "certflow/stock", "== issue 6 targets", "== issue 14 targets", "storage calls per issuance by area") {
		if !strings.Contains(text, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	// every scenario's p50 row shows stock, certflow and a numeric ratio
	ratioRow := regexp.MustCompile(`(?m)^\s*new-name handshake p50.*\s[0-9]+(\.[0-9]+)?$`)
	if n := len(ratioRow.FindAllString(text, -1)); n != len(scenarios) {
		t.Errorf("report has %d p50 rows with a ratio, want %d", n, len(scenarios))
	}
}

// checkBenchStorage fails t when a run's storage work was not counted: a
// certificate per name, Store and Load calls, certflow's own calls for
// certflow alone, files on the file system and commands on Redis.
func checkBenchStorage(t *testing.T, sc bench.Scenario, issuer string, f bench.Figures) {
	t.Helper()
	st := f.Storage
	if f.Certificates != sc.Names {
		t.Errorf("scenario %s, %s: %d certificates issued for %d names", sc, issuer, f.Certificates, sc.Names)
	}
	var stores, loads float64
	for _, v := range st.Calls["store"] {
		stores += v
	}
	for _, v := range st.Calls["load"] {
		loads += v
	}
	// every issuance stores its certificate (three files) and its token
	if stores < float64(4*sc.Names) || loads == 0 {
		t.Errorf("scenario %s, %s: %v stores and %v loads counted for %d issuances", sc, issuer, stores, loads, sc.Names)
	}
	switch ownStores := st.Certflow["store"]; {
	case issuer == bench.Certflow && ownStores < float64(sc.Names):
		t.Errorf("scenario %s, certflow: %v of certflow's own stores for %d issuances", sc, ownStores, sc.Names)
	case issuer == bench.Stock && len(st.Certflow) != 0:
		t.Errorf("scenario %s, stock: certflow's storage metric counted %v", sc, st.Certflow)
	}
	if sc.Storage == bench.StorageRedis {
		var cmds int64
		for _, v := range st.RedisCommands {
			cmds += v
		}
		if cmds < int64(stores) || st.RedisKeys <= 0 {
			t.Errorf("scenario %s, %s: %d Redis commands and %d keys added for %v stores", sc, issuer, cmds, st.RedisKeys, stores)
		}
	} else if st.Files < int64(3*sc.Names) {
		t.Errorf("scenario %s, %s: %d files added for %d certificates", sc, issuer, st.Files, sc.Names)
	}
}
