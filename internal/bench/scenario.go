package bench

import (
	"fmt"
	"strconv"
	"strings"
)

// Scenario is one benchmark case: Names new on-demand names handshaked with
// at most Concurrency handshakes in flight.
type Scenario struct {
	// Names is how many new names are handshaked after the warm-up.
	Names int
	// Concurrency is the most handshakes in flight at once.
	Concurrency int
	// Only, when set, runs the scenario with this issuer alone (written
	// "NxC:certflow"): 1000x100 compares certflow's memory with stock's
	// at 200x50, and stock would need many minutes for it.
	Only string
}

func (s Scenario) withoutOnly() Scenario { s.Only = ""; return s }

// issuers returns which of the run's issuers this scenario runs.
func (s Scenario) issuers(all []string) []string {
	if s.Only == "" {
		return all
	}
	for _, iss := range all {
		if iss == s.Only {
			return []string{iss}
		}
	}
	return nil
}

// String returns the scenario as written on the command line: "1" for a
// single name, else "<names>x<concurrency>".
func (s Scenario) String() string {
	out := fmt.Sprintf("%dx%d", s.Names, s.Concurrency)
	if s.Names == 1 && s.Concurrency == 1 {
		out = "1"
	}
	if s.Only != "" {
		out += ":" + s.Only
	}
	return out
}

// Single reports whether the scenario is one name at a time, the case that
// is repeated for several rounds and reported as a median.
func (s Scenario) Single() bool { return s.Names == 1 }

// Scenario sets the command line knows by name.
const (
	// DefaultScenarios are run when no -scenarios flag is given. 1000x100
	// runs certflow alone: stock Caddy needs many minutes for it, and its
	// target compares with stock's 200x50.
	DefaultScenarios = "1,50x50,100x100,200x50,1000x100:certflow"
	// QuickScenarios are run by -quick.
	QuickScenarios = "1,10x10"
)

// maxNames bounds the names of one scenario, so a typo cannot start an
// endless run.
const maxNames = 100000

// ParseScenarios parses a comma-separated list such as "1,50x50,1000x100":
// "N" is N names one at a time, "NxC" is N names with at most C in flight;
// a suffix ":stock" or ":certflow" runs that issuer alone.
func ParseScenarios(list string) ([]Scenario, error) {
	var out []Scenario
	for _, field := range strings.Split(list, ",") {
		field = strings.TrimSpace(field)
		if field == "" {
			continue
		}
		s, err := parseScenario(field)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no scenarios in %q", list)
	}
	return out, nil
}

// parseScenario parses one "N" or "NxC", with an optional ":<issuer>".
func parseScenario(field string) (Scenario, error) {
	spec, only, hasOnly := strings.Cut(strings.ToLower(field), ":")
	if hasOnly && only != Stock && only != Certflow {
		return Scenario{}, fmt.Errorf("scenario %q: the issuer after ':' must be %q or %q", field, Stock, Certflow)
	}
	namesText, concText, hasConc := strings.Cut(spec, "x")
	names, err := strconv.Atoi(namesText)
	if err != nil || names < 1 || names > maxNames {
		return Scenario{}, fmt.Errorf("scenario %q: the number of names must be an integer from 1 to %d", field, maxNames)
	}
	conc := 1
	if hasConc {
		conc, err = strconv.Atoi(concText)
		if err != nil || conc < 1 {
			return Scenario{}, fmt.Errorf("scenario %q: the concurrency must be a positive integer", field)
		}
	}
	return Scenario{Names: names, Concurrency: min(conc, names), Only: only}, nil
}
