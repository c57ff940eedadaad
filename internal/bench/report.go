package bench

import (
	"fmt"
	"io"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/certflow/certflow/internal/bench/countstore"
)

// Report is everything a benchmark measured.
type Report struct {
	// Options are the options the benchmark ran with, defaults applied.
	Options Options
	// Started and Finished bound the benchmark; Finished is zero when it
	// was cut short.
	Started, Finished time.Time
	// Scenarios are the scenarios run so far, in order.
	Scenarios []*ScenarioResult
}

// row is one line of a scenario table.
type row struct {
	label           string
	stock, certflow string
	ratio           string
}

// Print writes the report: a header, one table per scenario with stock,
// certflow and the ratio certflow/stock for every figure, the failed
// handshakes by kind, and how the ratios compare with issue 6's targets.
func (r *Report) Print(w io.Writer) error {
	var b strings.Builder
	o := r.Options
	fmt.Fprintf(&b, "certflow benchmark: the same Caddy binary with the stock acme issuer and with certflow, alternating\n")
	fmt.Fprintf(&b, "Pebble in process (no validation sleep, no bad-nonce rejection), HTTP-01 only, fresh storage per run under %s\n", describeDir(o.WorkDir))
	fmt.Fprintf(&b, "storage: file_system there, or (NxC/redisK) K nodes on one redis-server (caddy.storage.redis, AOF on) behind TCP balancers;\n")
	fmt.Fprintf(&b, "every storage call counted (certflow_bench_counting around it); storage figures from the end of the warm-up until the burst's issuances were over, per certificate issued\n")
	fmt.Fprintf(&b, "%s/%s, %d CPUs, %s; rounds of single-name scenarios: %d; cached handshakes per run: %d; handshake timeout %s\n",
		runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version(), o.Rounds, o.CachedHandshakes, o.HandshakeTimeout)
	if !r.Finished.IsZero() {
		fmt.Fprintf(&b, "took %s\n", r.Finished.Sub(r.Started).Round(time.Second))
	}
	for _, s := range r.Scenarios {
		b.WriteString("\n")
		if err := s.print(&b); err != nil {
			return err
		}
	}
	b.WriteString("\n")
	r.printTargets(&b)
	_, err := io.WriteString(w, b.String())
	if err != nil {
		return fmt.Errorf("writing the report: %w", err)
	}
	return nil
}

// print writes the scenario's table and failures.
func (s *ScenarioResult) print(w io.Writer) error {
	st, okS := s.Figures(Stock)
	cf, okC := s.Figures(Certflow)
	if !okS && !okC {
		return nil
	}
	sc := s.Scenario
	runs := max(st.Runs, cf.Runs)
	what := fmt.Sprintf("%d new names, at most %d handshakes in flight", sc.Names, sc.Concurrency)
	if sc.Single() {
		what = "one new name after a warm-up issuance"
	}
	fmt.Fprintf(w, "== scenario %s: %s (%d run(s) per issuer) ==\n", sc, what, runs)

	dur := func(label string, get func(Figures) time.Duration) row {
		a, c := get(st), get(cf)
		return row{label, fmtDuration(a), fmtDuration(c), fmtRatio(float64(c), float64(a))}
	}
	mem := func(label string, get func(Figures) int64) row {
		a, c := get(st), get(cf)
		return row{label, fmtBytes(a), fmtBytes(c), fmtRatio(float64(c), float64(a))}
	}
	count := func(label string, get func(Figures) float64) row {
		a, c := get(st), get(cf)
		return row{label, fmt.Sprintf("%.2f", a), fmt.Sprintf("%.2f", c), fmtRatio(c, a)}
	}
	p50Label := "new-name handshake p50"
	if sc.Single() && runs > 1 {
		p50Label = "new-name handshake p50 (median of rounds)"
	}
	rows := []row{
		dur(p50Label, func(f Figures) time.Duration { return f.P50 }),
		dur("new-name handshake p90", func(f Figures) time.Duration { return f.P90 }),
		dur("new-name handshake p99", func(f Figures) time.Duration { return f.P99 }),
		dur("new-name handshake max", func(f Figures) time.Duration { return f.Max }),
		dur("burst wall time", func(f Figures) time.Duration { return f.Wall }),
		{"failed new-name handshakes", fmt.Sprintf("%d/%d", len(st.Failures), st.Names), fmt.Sprintf("%d/%d", len(cf.Failures), cf.Names),
			fmtRatio(float64(len(cf.Failures)), float64(len(st.Failures)))},
		dur("cached handshake p50 (after settling)", func(f Figures) time.Duration { return f.CachedP50 }),
		{"failed cached handshakes", fmt.Sprintf("%d/%d", len(st.CachedFailures), st.CachedTried), fmt.Sprintf("%d/%d", len(cf.CachedFailures), cf.CachedTried), ""},
		mem("Caddy peak RSS (VmHWM)", func(f Figures) int64 { return f.PeakRSS }),
		mem("Caddy max RSS (VmRSS every 100ms)", func(f Figures) int64 { return f.SampledRSS }),
		dur("Caddy CPU (burst, settling, cached)", func(f Figures) time.Duration { return f.CPU }),
		dur("Caddy CPU per new name (burst)", func(f Figures) time.Duration { return f.CPUPerName }),
		dur("warm-up issuance (with account)", func(f Figures) time.Duration { return f.WarmUp }),
		{"CA requests per new name:", "", "", ""},
	}
	for _, kind := range countedKinds {
		rows = append(rows, count("  "+caKindLabels[kind], func(f Figures) float64 { return f.CAPerName[kind] }))
	}
	rows = append(rows, count("  total (all kinds)", func(f Figures) float64 { return f.CATotalPerName }))
	rows = append(rows, storageRows(sc, st, cf, count)...)

	for i := range rows {
		if rows[i].stock == "" && rows[i].certflow == "" {
			continue // a heading
		}
		if !okS {
			rows[i].stock, rows[i].ratio = "-", "n/a"
		}
		if !okC {
			rows[i].certflow, rows[i].ratio = "-", "n/a"
		}
	}

	if err := writeTable(w, sc, rows); err != nil {
		return err
	}
	printAreas(w, Stock, st)
	printAreas(w, Certflow, cf)
	printFailures(w, Stock, "new-name", st.Failures)
	printFailures(w, Certflow, "new-name", cf.Failures)
	printFailures(w, Stock, "cached", st.CachedFailures)
	printFailures(w, Certflow, "cached", cf.CachedFailures)
	return nil
}

// writeTable writes a scenario's rows as a table: labels left-aligned,
// figures right-aligned.
func writeTable(w io.Writer, sc Scenario, rows []row) error {
	// labels are padded to one width so that they read left-aligned while
	// the figures are right-aligned
	width := len("figure")
	for _, r := range rows {
		width = max(width, utf8.RuneCountInString(r.label))
	}
	pad := func(s string) string { return s + strings.Repeat(" ", width-utf8.RuneCountInString(s)) }
	var table strings.Builder
	tw := tabwriter.NewWriter(&table, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t\n", pad("figure"), "stock", "certflow", "certflow/stock")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t\n", pad(r.label), r.stock, r.certflow, r.ratio)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("writing the table of scenario %s: %w", sc, err)
	}
	for _, line := range strings.SplitAfter(table.String(), "\n") {
		// tab-terminated cells leave trailing blanks; drop them
		if trimmed := strings.TrimRight(line, " \n"); trimmed != "" {
			fmt.Fprintln(w, trimmed)
		}
	}
	return nil
}

// printFailures writes failed handshakes grouped by kind, with the range of
// times they failed after and one example error.
func printFailures(w io.Writer, issuer, what string, fs []Failure) {
	if len(fs) == 0 {
		return
	}
	type group struct {
		n        int
		min, max time.Duration
		example  string
	}
	groups := map[string]*group{}
	for _, f := range fs {
		g := groups[f.Kind]
		if g == nil {
			g = &group{min: f.After, example: f.Err}
			groups[f.Kind] = g
		}
		g.n++
		g.min, g.max = min(g.min, f.After), max(g.max, f.After)
	}
	kinds := make([]string, 0, len(groups))
	for k := range groups {
		kinds = append(kinds, k)
	}
	slices.Sort(kinds)
	for _, k := range kinds {
		g := groups[k]
		fmt.Fprintf(w, "%s: %d failed %s handshake(s): %s, after %s–%s; e.g. %s\n",
			issuer, g.n, what, k, fmtDuration(g.min), fmtDuration(g.max), g.example)
	}
}

// storageRows are the rows of the storage work per issuance: every
// storage call (certmagic's and certflow's) by operation, certflow's own
// calls, and per backend the files created and left (file system) or the
// Redis commands and keys.
func storageRows(sc Scenario, st, cf Figures, count func(string, func(Figures) float64) row) []row {
	if st.Storage.Calls == nil && cf.Storage.Calls == nil {
		return nil
	}
	rows := []row{
		{fmt.Sprintf("storage per issuance (certificates issued: %d / %d):", st.Certificates, cf.Certificates), "", "", ""},
		count("  storage calls (certmagic's too)", func(f Figures) float64 { return f.perIssuance(f.Storage.total()) }),
	}
	for _, op := range countstore.Operations {
		if st.Storage.op(op) == 0 && cf.Storage.op(op) == 0 {
			continue
		}
		rows = append(rows, count("    "+op, func(f Figures) float64 { return f.perIssuance(f.Storage.op(op)) }))
	}
	rows = append(rows, count("  certflow's own calls (its metric)", func(f Figures) float64 { return f.perIssuance(f.Storage.certflowTotal()) }))
	for _, op := range countstore.Operations {
		if cf.Storage.Certflow[op] == 0 {
			continue
		}
		rows = append(rows, count("    "+op, func(f Figures) float64 { return f.perIssuance(f.Storage.Certflow[op]) }))
	}
	if sc.storage() == StorageFile {
		rows = append(rows,
			count("  files created (stores, locks, new dirs)", func(f Figures) float64 { return f.perIssuance(f.Storage.filesCreated()) }),
			count("  files left", func(f Figures) float64 { return f.perIssuance(float64(f.Storage.Files)) }),
			count("  directories left", func(f Figures) float64 { return f.perIssuance(float64(f.Storage.Dirs)) }))
		return rows
	}
	rows = append(rows, count("  Redis commands", func(f Figures) float64 { return f.perIssuance(float64(f.Storage.redisTotal())) }))
	cmds := map[string]int64{}
	for _, f := range []Figures{st, cf} {
		for c, n := range f.Storage.RedisCommands {
			cmds[c] += n
		}
	}
	names := make([]string, 0, len(cmds))
	for c := range cmds {
		names = append(names, c)
	}
	slices.SortFunc(names, func(a, b string) int {
		if cmds[a] != cmds[b] {
			return int(cmds[b] - cmds[a])
		}
		return strings.Compare(a, b)
	})
	for _, c := range names {
		rows = append(rows, count("    "+c, func(f Figures) float64 { return f.perIssuance(float64(f.Storage.RedisCommands[c])) }))
	}
	rows = append(rows, count("  Redis keys left", func(f Figures) float64 { return f.perIssuance(float64(f.Storage.RedisKeys)) }))
	return rows
}

// printAreas writes an issuer's storage calls per issuance by the area of
// the storage they touched, and by operation within it.
func printAreas(w io.Writer, issuer string, f Figures) {
	if f.Storage.Calls == nil || f.Certificates == 0 {
		return
	}
	byArea := map[string]map[string]float64{}
	for op, areas := range f.Storage.Calls {
		for area, v := range areas {
			if byArea[area] == nil {
				byArea[area] = map[string]float64{}
			}
			byArea[area][op] += v
		}
	}
	areas := make([]string, 0, len(byArea))
	for a := range byArea {
		areas = append(areas, a)
	}
	slices.Sort(areas)
	var parts []string
	for _, a := range areas {
		var ops []string
		for _, op := range countstore.Operations {
			if v := byArea[a][op]; v > 0 {
				ops = append(ops, fmt.Sprintf("%s %.2f", op, f.perIssuance(v)))
			}
		}
		parts = append(parts, a+": "+strings.Join(ops, " "))
	}
	fmt.Fprintf(w, "%s storage calls per issuance by area: %s\n", issuer, strings.Join(parts, "; "))
}
