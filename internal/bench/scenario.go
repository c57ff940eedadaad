package bench

import (
	"fmt"
	"strconv"
	"strings"
)

// Scenario is one benchmark case: Names new on-demand names handshaked with
// at most Concurrency handshakes in flight, on Nodes Caddy processes
// sharing one storage.
type Scenario struct {
	// Names is how many new names are handshaked after the warm-up.
	Names int
	// Concurrency is the most handshakes in flight at once.
	Concurrency int
	// Only, when set, runs the scenario with this issuer alone (written
	// "NxC:certflow"): 1000x100 compares certflow's memory with stock's
	// at 200x50, and stock would need many minutes for it.
	Only string
	// Storage is StorageFile (the default) or StorageRedis (written
	// "NxC/redis3"): Caddy's file_system storage on the local disk, or
	// the caddy.storage.redis module on a redis-server the run starts.
	Storage string
	// Nodes is how many Caddy processes share the storage (1 when zero),
	// behind a TCP balancer for the handshakes and the CA's validations.
	Nodes int
}

// Storage backends of a scenario.
const (
	StorageFile  = "file"
	StorageRedis = "redis"
)

func (s Scenario) withoutOnly() Scenario { s.Only = ""; return s }

// nodes is how many Caddy processes the scenario runs.
func (s Scenario) nodes() int { return max(s.Nodes, 1) }

// storage is the scenario's storage backend.
func (s Scenario) storage() string {
	if s.Storage == "" {
		return StorageFile
	}
	return s.Storage
}

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
	if s.storage() != StorageFile || s.nodes() > 1 {
		out += "/" + s.storage()
		if s.nodes() > 1 {
			out += strconv.Itoa(s.nodes())
		}
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
	// target compares with stock's 200x50. 300x100/redis3 is three nodes
	// on one Redis with both issuers (stock's issuance rate limit, 10 per
	// 10 s per process, makes it take about 100 s).
	DefaultScenarios = "1,50x50,100x100,200x50,1000x100:certflow,300x100/redis3,1000x100/redis3:certflow"
	// QuickScenarios are run by -quick.
	QuickScenarios = "1,10x10"
)

// maxNames bounds the names of one scenario, so a typo cannot start an
// endless run; maxNodes its Caddy processes.
const (
	maxNames = 100000
	maxNodes = 16
)

// ParseScenarios parses a comma-separated list such as "1,50x50,1000x100":
// "N" is N names one at a time, "NxC" is N names with at most C in flight;
// "/redisK" (or "/fileK") after it runs K Caddy processes (1 when K is
// left out) on one Redis (or one storage directory); a suffix ":stock" or
// ":certflow" runs that issuer alone.
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

// parseScenario parses one "N" or "NxC", with an optional "/<storage><nodes>"
// and ":<issuer>".
func parseScenario(field string) (Scenario, error) {
	spec, only, hasOnly := strings.Cut(strings.ToLower(field), ":")
	if hasOnly && only != Stock && only != Certflow {
		return Scenario{}, fmt.Errorf("scenario %q: the issuer after ':' must be %q or %q", field, Stock, Certflow)
	}
	spec, backend, hasBackend := strings.Cut(spec, "/")
	storage, nodes := StorageFile, 1
	if hasBackend {
		var err error
		if storage, nodes, err = parseBackend(backend); err != nil {
			return Scenario{}, fmt.Errorf("scenario %q: %w", field, err)
		}
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
	sc := Scenario{Names: names, Concurrency: min(conc, names), Only: only}
	if storage != StorageFile || nodes > 1 {
		sc.Storage, sc.Nodes = storage, nodes
	}
	return sc, nil
}

// parseBackend parses "redis", "redis3", "file2": a storage backend and
// how many nodes share it.
func parseBackend(text string) (storage string, nodes int, err error) {
	for _, b := range []string{StorageRedis, StorageFile} {
		rest, ok := strings.CutPrefix(text, b)
		if !ok {
			continue
		}
		if rest == "" {
			return b, 1, nil
		}
		n, err := strconv.Atoi(rest)
		if err != nil || n < 1 || n > maxNodes {
			return "", 0, fmt.Errorf("the number of nodes after %q must be an integer from 1 to %d", b, maxNodes)
		}
		return b, n, nil
	}
	return "", 0, fmt.Errorf("the storage after '/' must be %q or %q, with an optional number of nodes", StorageFile, StorageRedis)
}
