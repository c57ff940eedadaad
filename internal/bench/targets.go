package bench

import (
	"fmt"
	"io"
)

// target is one of issue 6's goals, checked against the report.
type target struct {
	what   string
	ratio  string // the measured ratio (or figure), for the reader
	met    bool
	absent bool // the scenario it needs was not run
}

// printTargets compares the ratios with the targets of issue 6 ("Fastest
// on-demand issuance there is"). They are benchmark figures, not tests.
func (r *Report) printTargets(w io.Writer) {
	byName := map[string]*ScenarioResult{}
	for _, s := range r.Scenarios {
		byName[s.Scenario.withoutOnly().String()] = s
	}
	figsOf := func(name, issuer string) (Figures, bool) {
		s := byName[name]
		if s == nil {
			return Figures{}, false
		}
		return s.Figures(issuer)
	}
	figs := func(name string) (st, cf Figures, ok bool) {
		st, okS := figsOf(name, Stock)
		cf, okC := figsOf(name, Certflow)
		return st, cf, okS && okC
	}
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

	fmt.Fprintf(w, "== issue 6 targets (certflow/stock, this run) ==\n")
	for _, t := range ts {
		verdict := "missed"
		switch {
		case t.absent:
			verdict, t.ratio = "not run", "-"
		case t.met:
			verdict = "met"
		}
		fmt.Fprintf(w, "%-60s %-40s %s\n", t.what, t.ratio, verdict)
	}
}

// fmtTargetRatio prints a ratio with four significant digits, enough to
// show on which side of a target such as 1.05 it falls.
func fmtTargetRatio(num, den float64) string {
	if den == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.4g", num/den)
}
