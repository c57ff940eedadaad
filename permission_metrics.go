package certflow

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics of the permission module (tls.permission.certflow), on Caddy's
// registry like certflow's other metrics. No label carries a name or a
// client address. They are listed for users in docs/metrics-and-events.md
// (TestDocumentedMetrics).
const (
	askOutcomeAllowed = "allowed"
	askOutcomeDenied  = "denied"
	askOutcomeError   = "error"

	refusedDenied       = "denied"
	refusedHeld         = "held"
	refusedCannotIssue  = "cannot_issue"
	refusedClientBudget = "client_budget"
	refusedAskError     = "ask_error"
	refusedAskBusy      = "ask_busy"
)

// askBuckets cover a local endpoint (milliseconds) to a stuck one.
var askBuckets = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

var permissionMetrics = struct {
	asks         *prometheus.CounterVec
	askDuration  *prometheus.HistogramVec
	inFlight     prometheus.Gauge
	cache        *prometheus.CounterVec
	cacheEntries prometheus.GaugeFunc
	refusals     *prometheus.CounterVec
	all          []prometheus.Collector
}{}

func init() {
	m := &permissionMetrics
	m.asks = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: metricsNamespace, Name: "admission_asks_total",
		Help: "Asks of the on-demand permission endpoint (or wrapped module) made by tls.permission.certflow, by outcome (allowed, denied, error).",
	}, []string{"outcome"})
	m.askDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: metricsNamespace, Name: "admission_ask_duration_seconds",
		Help:    "Duration of asks of the permission endpoint, by outcome.",
		Buckets: askBuckets,
	}, []string{"outcome"})
	m.inFlight = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: metricsNamespace, Name: "admission_asks_in_flight",
		Help: "Asks of the permission endpoint in flight in this process.",
	})
	m.cache = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: metricsNamespace, Name: "admission_cache_total",
		Help: "Lookups of the admission cache, by result (hit, miss).",
	}, []string{"result"})
	m.cacheEntries = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: metricsNamespace, Name: "admission_cache_entries",
		Help: "Answers held in the admission caches of this process (expired ones included until they are read or pushed out).",
	}, func() float64 {
		n := 0
		admissionPool.Range(func(_, v any) bool {
			n += v.(*admissionState).cache.len()
			return true
		})
		return float64(n)
	})
	m.refusals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: metricsNamespace, Name: "admission_refusals_total",
		Help: "Certificates refused by tls.permission.certflow, by reason (denied, held, cannot_issue, client_budget, ask_error, ask_busy).",
	}, []string{"reason"})
	for _, o := range []string{askOutcomeAllowed, askOutcomeDenied, askOutcomeError} {
		m.asks.WithLabelValues(o)
	}
	for _, r := range []string{"hit", "miss"} {
		m.cache.WithLabelValues(r)
	}
	for _, r := range []string{refusedDenied, refusedHeld, refusedCannotIssue, refusedClientBudget, refusedAskError, refusedAskBusy} {
		m.refusals.WithLabelValues(r)
	}
	m.all = []prometheus.Collector{m.asks, m.askDuration, m.inFlight, m.cache, m.cacheEntries, m.refusals}
}

// registerPermissionMetrics adds the permission module's collectors to a
// config's registry (already registered is fine).
func registerPermissionMetrics(reg prometheus.Registerer) error {
	return registerCollectors(reg, permissionMetrics.all)
}
