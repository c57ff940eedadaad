package bench

import (
	"time"

	"github.com/certflow/certflow/integration/rig"
)

// ScenarioResult holds the runs of one scenario, both issuers, all rounds.
type ScenarioResult struct {
	Scenario Scenario
	Runs     []*RunResult
}

// Figures are the figures of one issuer in one scenario, over its runs:
// latency percentiles of the pooled new-name handshakes (for a single-name
// scenario, p50 is the median over the rounds), medians over the runs for
// per-run figures, and sums for counts.
type Figures struct {
	// Runs is how many runs the figures come from; Names how many new
	// names they tried, Issued how many first handshakes succeeded.
	Runs, Names, Issued int
	// P50, P90, P99 and Max are the new-name handshake latencies.
	P50, P90, P99, Max time.Duration
	// Failures are the failed new-name handshakes.
	Failures []Failure
	// Wall is the median burst wall time.
	Wall time.Duration
	// CachedP50 is the median over runs of the cached handshakes' p50;
	// CachedOK and CachedTried count them over all runs.
	CachedP50             time.Duration
	CachedOK, CachedTried int
	// CachedFailures are the failed cached handshakes.
	CachedFailures []Failure
	// PeakRSS and SampledRSS are medians of the runs' VmHWM and largest
	// sampled VmRSS, in bytes.
	PeakRSS, SampledRSS int64
	// CPU is the median CPU time from warm-up end to the end of the cached
	// handshakes; CPUPerName the median burst CPU time per new name.
	CPU, CPUPerName time.Duration
	// WarmUp is the median warm-up issuance, account registration included.
	WarmUp time.Duration
	// CAPerName is the CA requests per new name, by kind; CATotalPerName
	// counts every request.
	CAPerName      map[string]float64
	CATotalPerName float64
	// Certificates sums the runs' issued certificates; Storage sums their
	// storage work (divide by Certificates for a figure per issuance).
	Certificates int
	Storage      StorageFigures
	// Drain is the longest wait after a burst for its issuances to end.
	Drain time.Duration
}

// perIssuance divides a count by the certificates issued.
func (f Figures) perIssuance(n float64) float64 {
	if f.Certificates == 0 {
		return 0
	}
	return n / float64(f.Certificates)
}

// addStorage adds one run's storage work to the sum.
func (f *Figures) addStorage(s StorageFigures) {
	if f.Storage.Calls == nil {
		f.Storage = StorageFigures{Calls: map[string]map[string]float64{}, Certflow: map[string]float64{}, RedisCommands: map[string]int64{}}
	}
	for op, areas := range s.Calls {
		if f.Storage.Calls[op] == nil {
			f.Storage.Calls[op] = map[string]float64{}
		}
		for area, v := range areas {
			f.Storage.Calls[op][area] += v
		}
	}
	for op, v := range s.Certflow {
		f.Storage.Certflow[op] += v
	}
	for cmd, v := range s.RedisCommands {
		f.Storage.RedisCommands[cmd] += v
	}
	f.Storage.RedisKeys += s.RedisKeys
	f.Storage.Files += s.Files
	f.Storage.Dirs += s.Dirs
}

// Figures aggregates the runs of issuer; ok is false when it has none.
func (s *ScenarioResult) Figures(issuer string) (f Figures, ok bool) {
	var issued []time.Duration
	var walls, cachedP50s, cpus, perName, warmUps []time.Duration
	var peaks, sampled []int64
	caSums := map[string]int{}
	caTotal := 0
	for _, r := range s.Runs {
		if r.Issuer != issuer {
			continue
		}
		f.Runs++
		f.Names += r.Scenario.Names
		f.Issued += len(r.Issued)
		issued = append(issued, r.Issued...)
		f.Failures = append(f.Failures, r.Failures...)
		walls = append(walls, r.Wall)
		cachedP50s = append(cachedP50s, percentile(r.Cached, 50))
		f.CachedOK += len(r.Cached)
		f.CachedTried += len(r.Cached) + len(r.CachedFailures)
		f.CachedFailures = append(f.CachedFailures, r.CachedFailures...)
		peaks = append(peaks, r.PeakRSS)
		sampled = append(sampled, r.SampledRSS)
		cpus = append(cpus, r.CPU)
		perName = append(perName, r.BurstCPU/time.Duration(max(r.Scenario.Names, 1)))
		warmUps = append(warmUps, r.WarmUp)
		for kind, n := range r.CARequests {
			caSums[kind] += n
		}
		caTotal += r.CATotal
		f.Certificates += r.Certificates
		f.addStorage(r.Storage)
		f.Drain = max(f.Drain, r.Drain)
	}
	if f.Runs == 0 {
		return f, false
	}
	f.P50, f.P90, f.P99, f.Max = percentile(issued, 50), percentile(issued, 90), percentile(issued, 99), percentile(issued, 100)
	f.Wall, f.CachedP50 = median(walls), median(cachedP50s)
	f.PeakRSS, f.SampledRSS = median(peaks), median(sampled)
	f.CPU, f.CPUPerName, f.WarmUp = median(cpus), median(perName), median(warmUps)
	f.CAPerName = map[string]float64{}
	for _, kind := range countedKinds {
		f.CAPerName[kind] = float64(caSums[kind]) / float64(f.Names)
	}
	f.CATotalPerName = float64(caTotal) / float64(f.Names)
	return f, true
}

// caKindLabels names the counted CA request kinds in the report.
var caKindLabels = map[string]string{
	rig.KindNewOrder: "new-order",
	rig.KindAuthz:    "authz (POST-as-GET)",
	rig.KindChall:    "chall",
	rig.KindFinalize: "finalize",
	rig.KindOrder:    "order (POST-as-GET)",
	rig.KindCert:     "cert",
	rig.KindNonce:    "nonce",
}
