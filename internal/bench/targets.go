package bench

import (
	"fmt"
	"io"
	"time"

	"github.com/certflow/certflow/internal/bench/countstore"
)

// target is one of issue 6's goals, checked against the report.
type target struct {
	what   string
	ratio  string // the measured ratio (or figure), for the reader
	met    bool
	absent bool // the scenario it needs was not run
}

// figureFinder finds the figures of a scenario by name (without its
// ":issuer" suffix) in a report.
type figureFinder map[string]*ScenarioResult

func (r *Report) finder() figureFinder {
	byName := figureFinder{}
	for _, s := range r.Scenarios {
		byName[s.Scenario.withoutOnly().String()] = s
	}
	return byName
}

func (byName figureFinder) of(name, issuer string) (Figures, bool) {
	s := byName[name]
	if s == nil {
		return Figures{}, false
	}
	return s.Figures(issuer)
}

func (byName figureFinder) both(name string) (st, cf Figures, ok bool) {
	st, okS := byName.of(name, Stock)
	cf, okC := byName.of(name, Certflow)
	return st, cf, okS && okC
}

// printTargets compares the ratios with the targets of issue 6 ("Fastest
// on-demand issuance there is") and issue 14 ("Cheap at fleet scale").
// They are benchmark figures, not tests.
func (r *Report) printTargets(w io.Writer) {
	byName := r.finder()
	figsOf, figs := byName.of, byName.both
	var ts []target

	if st, cf, ok := figs("1"); ok {
		ts = append(ts, target{what: "1 name: issuance p50 ≤ 0.10 × stock", ratio: fmtTargetRatio(float64(cf.P50), float64(st.P50)),
			met: float64(cf.P50) <= 0.10*float64(st.P50)})
	} else {
		ts = append(ts, target{what: "1 name: issuance p50 ≤ 0.10 × stock", absent: true})
	}
	for _, name := range []string{"50x50", "100x100"} {
		what := name + ": wall ≤ 0.02 × stock, 0 failed handshakes"
		st, cf, ok := figs(name)
		if !ok {
			ts = append(ts, target{what: what, absent: true})
			continue
		}
		ts = append(ts, target{what: what,
			ratio: fmt.Sprintf("%s, %d/%d failed (stock %d/%d)", fmtTargetRatio(float64(cf.Wall), float64(st.Wall)),
				len(cf.Failures), cf.Names, len(st.Failures), st.Names),
			met: float64(cf.Wall) <= 0.02*float64(st.Wall) && len(cf.Failures) == 0})
	}
	{
		what := "1000x100: 0 failed; peak RSS ≤ 1.5 × stock's at 200x50"
		cf, ok := figsOf("1000x100", Certflow)
		st200, ok200 := figsOf("200x50", Stock)
		switch {
		case !ok:
			ts = append(ts, target{what: what, absent: true})
		case !ok200:
			ts = append(ts, target{what: what, ratio: fmt.Sprintf("%d/%d failed; no 200x50 run to compare RSS with", len(cf.Failures), cf.Names)})
		default:
			ts = append(ts, target{what: what,
				ratio: fmt.Sprintf("%d/%d failed, RSS %s", len(cf.Failures), cf.Names, fmtTargetRatio(float64(cf.PeakRSS), float64(st200.PeakRSS))),
				met:   len(cf.Failures) == 0 && float64(cf.PeakRSS) <= 1.5*float64(st200.PeakRSS)})
		}
	}
	for _, s := range r.Scenarios {
		st, cf, ok := figs(s.Scenario.withoutOnly().String())
		if !ok {
			continue
		}
		name := s.Scenario.String()
		ts = append(ts,
			target{what: name + ": cached handshake p50 ≤ 1.05 × stock", ratio: fmtTargetRatio(float64(cf.CachedP50), float64(st.CachedP50)),
				met: float64(cf.CachedP50) <= 1.05*float64(st.CachedP50)},
			target{what: name + ": peak RSS ≤ 1.2 × stock", ratio: fmtTargetRatio(float64(cf.PeakRSS), float64(st.PeakRSS)),
				met: float64(cf.PeakRSS) <= 1.2*float64(st.PeakRSS)})
	}

	printTargetList(w, "== issue 6 targets (certflow/stock, this run) ==", ts)
	fmt.Fprintln(w)
	printTargetList(w, "== issue 14 targets (storage work per issuance; this run) ==", r.issue14Targets())
}

func printTargetList(w io.Writer, title string, ts []target) {
	fmt.Fprintln(w, title)
	for _, t := range ts {
		verdict := "missed"
		switch {
		case t.absent:
			verdict, t.ratio = "not run", "-"
		case t.met:
			verdict = "met"
		}
		fmt.Fprintf(w, "%-66s %-44s %s\n", t.what, t.ratio, verdict)
	}
}

// Issue 14's scenarios.
const (
	fleetRedisScenario = "300x100/redis3"
	fleetFileScenario  = "200x50"
	burstScenario      = "1000x100"
	burstRedisScenario = "1000x100/redis3"
)

// issue14Targets are the targets of issue 14 ("Cheap at fleet scale:
// storage work per certificate close to stock Caddy's").
func (r *Report) issue14Targets() []target {
	byName := r.finder()
	var ts []target
	{
		what := fleetRedisScenario + ": Redis commands per issuance ≤ 1.25 × stock"
		st, cf, ok := byName.both(fleetRedisScenario)
		if !ok || st.Certificates == 0 || cf.Certificates == 0 {
			ts = append(ts, target{what: what, absent: true})
		} else {
			a, c := st.perIssuance(float64(st.Storage.redisTotal())), cf.perIssuance(float64(cf.Storage.redisTotal()))
			ts = append(ts, target{what: what, ratio: fmt.Sprintf("%.1f vs %.1f: %s", c, a, fmtTargetRatio(c, a)), met: c <= 1.25*a})
		}
	}
	{
		what := "certflow's own storage writes per issuance ≤ 6 (largest of scenarios)"
		worst, where := -1.0, ""
		for _, s := range r.Scenarios {
			cf, ok := s.Figures(Certflow)
			if !ok || cf.Certificates == 0 || cf.Storage.Calls == nil {
				continue
			}
			if v := cf.perIssuance(cf.Storage.Certflow[countstore.OpStore]); v > worst {
				worst, where = v, s.Scenario.String()
			}
		}
		if worst < 0 {
			ts = append(ts, target{what: what, absent: true})
		} else {
			ts = append(ts, target{what: what, ratio: fmt.Sprintf("%.2f (%s)", worst, where), met: worst <= 6})
		}
	}
	{
		what := fleetFileScenario + ": files created per issuance ≤ 1.5 × stock"
		st, cf, ok := byName.both(fleetFileScenario)
		if !ok || st.Certificates == 0 || cf.Certificates == 0 {
			ts = append(ts, target{what: what, absent: true})
		} else {
			a, c := st.perIssuance(st.Storage.filesCreated()), cf.perIssuance(cf.Storage.filesCreated())
			ts = append(ts, target{what: what, ratio: fmt.Sprintf("%.1f vs %.1f: %s", c, a, fmtTargetRatio(c, a)), met: c <= 1.5*a})
		}
	}
	cf1000, ok1000 := byName.of(burstScenario, Certflow)
	{
		what := burstScenario + ": wall ≤ 8 s, 0 failed, peak RSS ≤ 1.2 × stock's 200x50"
		st200, ok200 := byName.of(fleetFileScenario, Stock)
		switch {
		case !ok1000:
			ts = append(ts, target{what: what, absent: true})
		case !ok200:
			ts = append(ts, target{what: what, ratio: fmt.Sprintf("%s, %d/%d failed; no 200x50 run for RSS", fmtDuration(cf1000.Wall), len(cf1000.Failures), cf1000.Names)})
		default:
			ts = append(ts, target{what: what,
				ratio: fmt.Sprintf("%s, %d/%d failed, RSS %s", fmtDuration(cf1000.Wall), len(cf1000.Failures), cf1000.Names, fmtTargetRatio(float64(cf1000.PeakRSS), float64(st200.PeakRSS))),
				met:   cf1000.Wall <= 8*time.Second && len(cf1000.Failures) == 0 && float64(cf1000.PeakRSS) <= 1.2*float64(st200.PeakRSS)})
		}
	}
	{
		what := burstRedisScenario + ": wall ≤ 1.5 × 1000x100's, 0 failed"
		cf, ok := byName.of(burstRedisScenario, Certflow)
		switch {
		case !ok:
			ts = append(ts, target{what: what, absent: true})
		case !ok1000:
			ts = append(ts, target{what: what, ratio: fmt.Sprintf("%s, %d/%d failed; no 1000x100 run", fmtDuration(cf.Wall), len(cf.Failures), cf.Names)})
		default:
			ts = append(ts, target{what: what,
				ratio: fmt.Sprintf("%s, %d/%d failed: %s", fmtDuration(cf.Wall), len(cf.Failures), cf.Names, fmtTargetRatio(float64(cf.Wall), float64(cf1000.Wall))),
				met:   float64(cf.Wall) <= 1.5*float64(cf1000.Wall) && len(cf.Failures) == 0})
		}
	}
	{
		what := "1 name: issuance p50 ≤ 0.075 × stock (no worse than before)"
		if st, cf, ok := byName.both("1"); ok {
			ts = append(ts, target{what: what, ratio: fmtTargetRatio(float64(cf.P50), float64(st.P50)), met: float64(cf.P50) <= 0.075*float64(st.P50)})
		} else {
			ts = append(ts, target{what: what, absent: true})
		}
	}
	return ts
}

// fmtTargetRatio prints a ratio with four significant digits, enough to
// show on which side of a target such as 1.05 it falls.
func fmtTargetRatio(num, den float64) string {
	if den == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.4g", num/den)
}
