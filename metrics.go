package certflow

import (
	"errors"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/certflow/certflow/issuer"
)

// Prometheus metrics, served on Caddy's /metrics (admin endpoint or the
// metrics handler) from the config's registry. The collectors are
// process-wide, so their values survive config reloads; each config load
// registers them in its new registry. No label carries a domain name: label
// values come from small fixed sets (outcomes, challenge types, status
// classes). The metrics are listed for users in docs/metrics-and-events.md,
// which TestDocumentedMetrics holds to the collectors below.
const metricsNamespace = "certflow"

// stepBuckets cover a fast local CA (tens of milliseconds) up to the
// minutes a slow DNS propagation can take.
var stepBuckets = []float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600}

// caBuckets are for single HTTP requests to the CA.
var caBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}

// metricSet holds certflow's collectors.
type metricSet struct {
	requests          *prometheus.CounterVec
	firstIssuances    *prometheus.CounterVec
	renewals          *prometheus.CounterVec
	orderReplaces     *prometheus.CounterVec
	orders            *prometheus.CounterVec
	challenges        *prometheus.CounterVec
	orderCreation     prometheus.Histogram
	presentToValid    *prometheus.HistogramVec
	selfCheckWait     *prometheus.HistogramVec
	finalize          prometheus.Histogram
	issuance          *prometheus.HistogramVec
	backoffs          prometheus.Counter
	caResponses       *prometheus.CounterVec
	caRateLimited     prometheus.Counter
	caDuration        *prometheus.HistogramVec
	schedulerLive     prometheus.GaugeFunc
	schedulerQueued   prometheus.GaugeFunc
	storageOps        *prometheus.CounterVec
	storageCalls      [][]prometheus.Counter // storageOps' series by operation and outcome, resolved once: a call costs an atomic add
	allCollectorsList []prometheus.Collector
}

var metrics metricSet

func init() {
	m := &metrics
	m.initOutcomes()
	m.initDurations()
	m.initCA()
	m.initScheduler()
	m.initStorage()
	m.allCollectorsList = []prometheus.Collector{
		m.requests, m.firstIssuances, m.renewals, m.orderReplaces, m.orders, m.challenges, m.orderCreation, m.presentToValid, m.selfCheckWait,
		m.finalize, m.issuance, m.backoffs, m.caResponses, m.caRateLimited, m.caDuration,
		m.schedulerLive, m.schedulerQueued, m.storageOps,
	}
}

func counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metricsNamespace, Name: name, Help: help}, labels)
}

func histogramVec(name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
	return prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: metricsNamespace, Name: name, Help: help, Buckets: buckets}, labels)
}

func histogram(name, help string, buckets []float64) prometheus.Histogram {
	return prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: metricsNamespace, Name: name, Help: help, Buckets: buckets})
}

func counter(name, help string) prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{Namespace: metricsNamespace, Name: name, Help: help})
}

// initOutcomes: how requests, orders and challenges ended.
func (m *metricSet) initOutcomes() {
	m.requests = counterVec("certificate_requests_total",
		"CertificateRequests that finished, by outcome (ready, failed).", "outcome")
	m.firstIssuances = counterVec("first_issuances_total",
		"CertificateRequests for a name that had no certificate stored, by outcome (ready, failed).", "outcome")
	m.renewals = counterVec("renewals_total",
		"CertificateRequests that renewed a stored certificate, by outcome (ready, failed) and why it was renewed (ari_window, lifetime, expired, forced).",
		"outcome", "reason")
	m.orderReplaces = counterVec("order_replaces_total",
		"New orders sent with replaces (RFC 9773), by result: accepted by the CA, or refused and made again at once without.", "result")
	m.orders = counterVec("orders_total",
		"ACME orders that reached a final state, by outcome (valid, invalid, errored) and the type of the challenges they needed (none when every authorization was reused).",
		"outcome", "challenge_type")
	m.challenges = counterVec("challenges_total",
		"Challenges that reached a final state, by outcome (valid, invalid, errored) and challenge type.", "outcome", "challenge_type")
	m.backoffs = counter("backoffs_total",
		"Times a name started backing off after a failure, or was held back by a rate limit or the CA's Retry-After.")
}

// initDurations: how long the workflow's steps took.
func (m *metricSet) initDurations() {
	m.orderCreation = histogram("order_creation_seconds",
		"Time to create an ACME order (the new-order request, including waits for the account's order rate limit).", stepBuckets)
	m.presentToValid = histogramVec("challenge_present_to_valid_seconds",
		"Time from presenting a challenge to the CA declaring it valid.", stepBuckets, "challenge_type")
	m.selfCheckWait = histogramVec("challenge_self_check_wait_seconds",
		"Time from presenting a challenge until its self-check passed (including any propagation delay).", stepBuckets, "challenge_type")
	m.finalize = histogram("order_finalize_seconds",
		"Time to finalize an order and download its certificate chain.", stepBuckets)
	m.issuance = histogramVec("issuance_seconds",
		"Time of a whole CertificateRequest, from Issue to the chain or the failure, by outcome (ready, failed).", stepBuckets, "outcome")
}

// initCA: what the CA answered, and how fast.
func (m *metricSet) initCA() {
	m.caResponses = counterVec("ca_responses_total",
		"HTTP responses from the ACME CA by status class (2xx, 3xx, 4xx, 5xx; error when no response arrived).", "status_class")
	m.caRateLimited = counter("ca_rate_limited_total",
		"HTTP 429 (rate limited) responses from the ACME CA; also counted in certflow_ca_responses_total{status_class=\"4xx\"}.")
	m.caDuration = histogramVec("ca_request_duration_seconds",
		"Duration of HTTP requests to the ACME CA, by status class.", caBuckets, "status_class")
}

// initScheduler: the process's challenge scheduler, read when scraped.
func (m *metricSet) initScheduler() {
	m.schedulerLive = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: metricsNamespace, Name: "scheduler_live_challenges",
		Help: "Challenges in flight (scheduled until final) in this process.",
	}, func() float64 {
		live, _ := schedulerStats()
		return float64(live)
	})
	m.schedulerQueued = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: metricsNamespace, Name: "scheduler_queued_challenges",
		Help: "Challenges waiting for a scheduler slot in this process.",
	}, func() float64 {
		_, queued := schedulerStats()
		return float64(queued)
	})
}

// initStorage: certflow's own storage calls, every series made up front.
func (m *metricSet) initStorage() {
	m.storageOps = counterVec("storage_operations_total",
		"certflow's own calls to its certmagic storage (resources, index, tokens, locks, admin reads; not certmagic's), by operation and outcome (ok, not_found, error). Some backends answer not_found when they cannot be reached.",
		"operation", "outcome")
	for _, op := range issuer.StorageOps() {
		row := make([]prometheus.Counter, len(issuer.StorageOutcomes()))
		for _, outcome := range issuer.StorageOutcomes() {
			row[outcome] = m.storageOps.WithLabelValues(op.String(), outcome.String())
		}
		m.storageCalls = append(m.storageCalls, row)
	}
}

// registerMetrics adds certflow's collectors to a config's registry. Every
// issuer instance of a config calls it; all but the first find them
// registered already, which is fine.
func registerMetrics(reg prometheus.Registerer) error {
	return registerCollectors(reg, metrics.allCollectorsList)
}

// registerCollectors adds collectors to a config's registry; one
// registered already (by another instance of the config) is fine.
func registerCollectors(reg prometheus.Registerer, collectors []prometheus.Collector) error {
	if reg == nil {
		return nil
	}
	var errs []error
	for _, c := range collectors {
		if err := reg.Register(c); err != nil {
			var already prometheus.AlreadyRegisteredError
			if errors.As(err, &already) {
				continue
			}
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// countStorageCall adds one storage call to its series.
func countStorageCall(op issuer.StorageOp, outcome issuer.StorageOutcome) {
	if int(op) < len(metrics.storageCalls) && int(outcome) < len(metrics.storageCalls[op]) {
		metrics.storageCalls[op][outcome].Inc()
	}
}

// statusClass buckets an HTTP status: "2xx" … "5xx", or "error" for no
// response (status 0) or a status outside 100–599.
func statusClass(status int) string {
	if status < 100 || status > 599 {
		return "error"
	}
	return strconv.Itoa(status/100) + "xx"
}

// schedulerStats are the process's scheduler's live and queued challenges
// (zero while no certflow issuer is provisioned).
func schedulerStats() (live, queued int) {
	if s := Scheduler(); s != nil {
		return s.Stats()
	}
	return 0, 0
}
