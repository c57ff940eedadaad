package certflow

import (
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/certflow/certflow/issuer"
)

// observer is the issuer.Observer of one issuer instance: it turns each
// transition the engine reports into a Caddy event (see events.go), updates
// the Prometheus metrics (see metrics.go) and logs a debug line for every
// CA response. The engine logs one line per transition itself.
//
// It is safe for concurrent use, and nil-safe (a nil *observer does
// nothing), as the engine calls it from every workflow goroutine.
type observer struct {
	ctx    caddy.Context       // the issuer's: events carry it as their origin
	events *caddyevents.App    // nil when the events app is not available
	logger *zap.Logger         // for CA request lines (debug)
	orders orderChallengeTypes // challenge types seen per order, for the orders metric
}

// newObserver returns the observer for an issuer instance provisioned with
// ctx, and registers the metrics in ctx's registry.
func newObserver(ctx caddy.Context, logger *zap.Logger) *observer {
	o := &observer{ctx: ctx, logger: zap.NewNop()}
	if logger != nil {
		o.logger = logger.Named("ca")
	}
	if app, err := ctx.App("events"); err == nil {
		if ev, ok := app.(*caddyevents.App); ok {
			o.events = ev
		}
	} else if logger != nil {
		logger.Warn("Caddy's events app is not available; certflow events are not emitted", zap.Error(err))
	}
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil && logger != nil {
		logger.Error("registering certflow metrics", zap.Error(err))
	}
	return o
}

// emit sends a Caddy event if anything can observe it; data is built only
// then. Events of a config that was unloaded meanwhile (work in flight
// finishing after a reload) are not emitted: their subscribers are gone.
func (o *observer) emit(name string, data func() map[string]any) {
	if o == nil || o.events == nil || o.ctx.Context == nil || o.ctx.Err() != nil {
		return
	}
	if !o.events.ShouldEmit(name) {
		return
	}
	o.events.Emit(o.ctx, name, data())
}

// RequestChanged implements issuer.Observer.
func (o *observer) RequestChanged(cr issuer.CertificateRequest) {
	if o == nil {
		return
	}
	var event string
	switch cr.State {
	case issuer.RequestPending:
		event = EventRequestCreated
	case issuer.RequestReady:
		event = EventRequestReady
		countRequest(cr)
	case issuer.RequestFailed:
		event = EventRequestFailed
		countRequest(cr)
	default:
		return
	}
	o.emit(event, func() map[string]any {
		d := map[string]any{
			"name":        cr.Name,
			"identifiers": append([]string(nil), cr.Identifiers...),
			"request":     cr.ID,
			"state":       cr.State,
			"on_demand":   cr.OnDemand,
			"attempt":     cr.Attempt,
		}
		if cr.Order != "" {
			d["order"] = cr.Order
		}
		if cr.Kind != "" {
			d["kind"] = cr.Kind
		}
		if r := cr.Renews; r != nil {
			d["renews"] = r.Serial
			d["renewal_reason"] = r.Reason
		}
		if cr.State != issuer.RequestPending {
			d["took"] = time.Duration(cr.Took).Seconds()
		}
		if cr.Reason != "" {
			d["reason"] = cr.Reason
		}
		if !cr.NextAttempt.IsZero() {
			d["next_attempt"] = cr.NextAttempt
		}
		return d
	})
}

// countRequest counts a finished CertificateRequest, and as a first
// issuance or a renewal (by why it renewed).
func countRequest(cr issuer.CertificateRequest) {
	metrics.requests.WithLabelValues(cr.State).Inc()
	metrics.issuance.WithLabelValues(cr.State).Observe(time.Duration(cr.Took).Seconds())
	if r := cr.Renews; r != nil {
		metrics.renewals.WithLabelValues(cr.State, r.Reason).Inc()
	} else {
		metrics.firstIssuances.WithLabelValues(cr.State).Inc()
	}
}

// OrderCreated implements issuer.Observer.
func (o *observer) OrderCreated(ord issuer.Order, took time.Duration) {
	if o == nil {
		return
	}
	o.orders.note(ord.ID, "")
	metrics.orderCreation.Observe(took.Seconds())
	switch {
	case ord.Replaces != "":
		metrics.orderReplaces.WithLabelValues("accepted").Inc()
	case ord.ReplacesRefused != "":
		metrics.orderReplaces.WithLabelValues("refused").Inc()
	}
	if issuer.IsFinal(issuer.KindOrder, ord.State) {
		metrics.orders.WithLabelValues(ord.State, o.orders.finish(ord)).Inc()
	}
	o.emitOrder(EventOrderCreated, ord, took, true)
}

// OrderChanged implements issuer.Observer.
func (o *observer) OrderChanged(ord issuer.Order, took time.Duration) {
	if o == nil {
		return
	}
	if ord.State == issuer.OrderValid {
		metrics.finalize.Observe(took.Seconds())
	}
	if issuer.IsFinal(issuer.KindOrder, ord.State) {
		metrics.orders.WithLabelValues(ord.State, o.orders.finish(ord)).Inc()
	}
	o.emitOrder(OrderEventName(ord.State), ord, took, false)
}

func (o *observer) emitOrder(event string, ord issuer.Order, took time.Duration, created bool) {
	o.emit(event, func() map[string]any {
		d := map[string]any{
			"name":        ord.Name,
			"identifiers": append([]string(nil), ord.Identifiers...),
			"order":       ord.ID,
			"request":     ord.Request,
			"state":       ord.State,
			"took":        took.Seconds(),
		}
		if ord.URL != "" {
			d["url"] = ord.URL
		}
		if ord.Reason != "" {
			d["reason"] = ord.Reason
		}
		if created {
			d["reused_authorizations"] = ord.ReusedAuthzs
			if ord.Replaces != "" {
				d["replaces"] = ord.Replaces
			}
		}
		return d
	})
}

// ChallengeChanged implements issuer.Observer.
func (o *observer) ChallengeChanged(ch issuer.Challenge, took time.Duration) {
	if o == nil {
		return
	}
	o.orders.note(ch.Order, ch.Type)
	t := ch.Times
	switch ch.State {
	case issuer.ChallengeSelfChecked:
		if !t.Presented.IsZero() && !t.SelfChecked.IsZero() {
			metrics.selfCheckWait.WithLabelValues(ch.Type).Observe(t.SelfChecked.Sub(t.Presented).Seconds())
		}
	case issuer.ChallengeValid:
		end := t.Finished
		if end.IsZero() {
			end = time.Now()
		}
		if !t.Presented.IsZero() {
			metrics.presentToValid.WithLabelValues(ch.Type).Observe(end.Sub(t.Presented).Seconds())
		}
	}
	switch ch.State {
	case issuer.ChallengeValid, issuer.ChallengeInvalid, issuer.ChallengeErrored:
		metrics.challenges.WithLabelValues(ch.State, ch.Type).Inc()
	}
	o.emit(ChallengeEventName(ch.State), func() map[string]any {
		d := map[string]any{
			"name":           ch.Name,
			"challenge":      ch.ID,
			"order":          ch.Order,
			"state":          ch.State,
			"challenge_type": ch.Type,
			"wildcard":       ch.Wildcard,
			"on_demand":      ch.OnDemand,
			"took":           took.Seconds(),
		}
		if ch.Reason != "" {
			d["reason"] = ch.Reason
		}
		return d
	})
}

// CAResponded implements issuer.Observer.
func (o *observer) CAResponded(status int, took time.Duration) {
	if o == nil {
		return
	}
	class := statusClass(status)
	metrics.caResponses.WithLabelValues(class).Inc()
	metrics.caDuration.WithLabelValues(class).Observe(took.Seconds())
	if status == 429 {
		metrics.caRateLimited.Inc()
	}
	msg := "CA responded"
	if status == 0 {
		msg = "CA request failed without a response"
	}
	if ce := o.logger.Check(zap.DebugLevel, msg); ce != nil {
		ce.Write(zap.Int("status", status), zap.String("status_class", class), zap.Duration("took", took))
	}
}

// StorageCalled implements issuer.StorageObserver: certflow's own storage
// calls, counted process-wide (see metrics.go). It is called for every
// storage call, nil observer included, so it only adds to a counter.
func (o *observer) StorageCalled(op issuer.StorageOp, outcome issuer.StorageOutcome) {
	countStorageCall(op, outcome)
}

// BackoffStarted implements issuer.Observer.
func (o *observer) BackoffStarted(name string, until time.Time, reason string) {
	if o == nil {
		return
	}
	metrics.backoffs.Inc()
	o.emit(EventBackoff, func() map[string]any {
		return map[string]any{
			"name":   name,
			"until":  until,
			"reason": reason,
			"wait":   time.Until(until).Seconds(),
		}
	})
}

// orderChallengeTypes remembers, per order in flight, which challenge
// types its challenges used, so
// an order's final outcome can be counted by challenge type without a
// per-domain label. Entries go when the order is final; the map is bounded
// by the orders in flight in this process (themselves bounded by the
// scheduler), and stale entries of orders never finished here (a transient
// failure left them pending) are swept.
type orderChallengeTypes struct {
	mu sync.Mutex
	m  map[string]*orderNote
}

type orderNote struct {
	types map[string]bool
	seen  time.Time
}

const (
	orderNotesSweepAt = 4096
	orderNoteMaxAge   = 24 * time.Hour
)

func (t *orderChallengeTypes) note(orderID, typ string) {
	if orderID == "" {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.noteLocked(orderID, typ)
}

func (t *orderChallengeTypes) noteLocked(orderID, typ string) {
	now := time.Now()
	if t.m == nil {
		t.m = map[string]*orderNote{}
	}
	n, ok := t.m[orderID]
	if !ok {
		if len(t.m) >= orderNotesSweepAt {
			for id, old := range t.m {
				if now.Sub(old.seen) > orderNoteMaxAge {
					delete(t.m, id)
				}
			}
		}
		n = &orderNote{types: map[string]bool{}}
		t.m[orderID] = n
	}
	n.seen = now
	if typ != "" {
		n.types[typ] = true
	}
}

// finish forgets a final order and returns its challenge_type label: the
// single type its challenges used, "mixed", "none" when it needed no
// challenge, or "unknown" when its challenges ran before this process saw it.
func (t *orderChallengeTypes) finish(o issuer.Order) string {
	t.mu.Lock()
	n := t.m[o.ID]
	delete(t.m, o.ID)
	t.mu.Unlock()
	var types []string
	if n != nil {
		for typ := range n.types {
			types = append(types, typ)
		}
	}
	switch {
	case len(types) == 1:
		return types[0]
	case len(types) > 1:
		return "mixed"
	case len(o.Challenges) == 0:
		return "none"
	default:
		return "unknown"
	}
}

var (
	_ issuer.Observer        = (*observer)(nil)
	_ issuer.StorageObserver = (*observer)(nil)
)

// startObserving is called at the end of Provision: it creates the
// instance's observer (events through ctx's events app, metrics in ctx's
// registry).
func (iss *Issuer) startObserving(ctx caddy.Context) {
	iss.observer = newObserver(ctx, iss.logger)
}

// observe is called by SetConfig for the options it is about to publish:
// it sets their Observer and registers the policy's storage and issuer key
// for the admin API.
func (iss *Issuer) observe(opts *issuer.Options, storage certmagic.Storage) {
	if iss.observer != nil {
		opts.Observer = iss.observer
	}
	registerSource(iss, storage, iss.issuerKey)
}

// countedStorage is called by SetConfig with the policy's storage: what
// certflow uses in its place, so that every storage call certflow makes
// (workflow, index, maintenance, tokens, admin reads) is counted in
// certflow_storage_operations_total. certmagic keeps the storage itself.
func (iss *Issuer) countedStorage(storage certmagic.Storage) certmagic.Storage {
	if iss.observer == nil {
		return issuer.CountStorageCalls(storage, nil)
	}
	return issuer.CountStorageCalls(storage, iss.observer)
}

// stopObserving is called by Cleanup. Work in flight keeps the observer its
// options carry; its events are dropped once the config is unloaded.
func (iss *Issuer) stopObserving() {
	unregisterSource(iss)
}
