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
}

// String returns the scenario as written on the command line: "1" for a
// single name, else "<names>x<concurrency>".
func (s Scenario) String() string {
	if s.Names == 1 && s.Concurrency == 1 {
		return "1"
	}
	return fmt.Sprintf("%dx%d", s.Names, s.Concurrency)
}

// Single reports whether the scenario is one name at a time, the case that
// is repeated for several rounds and reported as a median.
func (s Scenario) Single() bool { return s.Names == 1 }

// Scenario sets the command line knows by name.
const (
	// DefaultScenarios are run when no -scenarios flag is given. 1000x100
	// is left out: stock Caddy needs many minutes for it.
	DefaultScenarios = "1,50x50,100x100,200x50"
	// QuickScenarios are run by -quick.
	QuickScenarios = "1,10x10"
)

// maxNames bounds the names of one scenario, so a typo cannot start an
// endless run.
const maxNames = 100000

// ParseScenarios parses a comma-separated list such as "1,50x50,1000x100":
// "N" is N names one at a time, "NxC" is N names with at most C in flight.
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

// parseScenario parses one "N" or "NxC".
func parseScenario(field string) (Scenario, error) {
	namesText, concText, hasConc := strings.Cut(strings.ToLower(field), "x")
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
	return Scenario{Names: names, Concurrency: min(conc, names)}, nil
}
