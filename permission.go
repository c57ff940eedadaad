package certflow

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/certflow/certflow/issuer"
)

func init() {
	caddy.RegisterModule(Permission{})
}

// Permission is the on-demand TLS permission module tls.permission.certflow:
// it decides whether a certificate may be obtained for a name during a TLS
// handshake by asking an `ask` endpoint (or any other tls.permission
// module), and spares that endpoint, the CA and the handshake what they
// need not pay:
//
//   - answers are cached, allowed and denied each for their own duration,
//     in a bounded in-memory cache; concurrent handshakes for one name share
//     one ask. An endpoint that fails (timeout, 5xx, refused connection) is
//     not a denial: nothing is cached and the handshake fails with an error
//     naming the endpoint;
//   - at most max_concurrent_asks asks are in flight in the process, and a
//     handshake waits at most ask_timeout for its answer, a free slot
//     included;
//   - during a handshake, a name with no certificate in storage that
//     certflow's issuers would refuse now (a name they can never obtain, or
//     one they hold back) is refused before the endpoint is asked, with the
//     reason and the time it may be tried again. A name with a certificate
//     in storage is never refused for that, and calls without a handshake
//     (background renewals) always go to the endpoint;
//   - one client address (IPv4, or IPv6 /64) may trigger at most
//     client_new_names handshakes for new names per window; past that its
//     new names are refused until the window ends.
//
// Each process (each node of a cluster) caches and counts for itself.
type Permission struct {
	// The URL of the permission endpoint, asked like Caddy's `http`
	// permission module: GET <ask>?domain=<name>; a 2xx status allows the
	// name, any other status below 500 denies it; a 5xx status, a redirect,
	// a timeout or a failed connection is an error, never a denial.
	// Placeholders are expanded once, when the module is provisioned.
	// Set either this or permission.
	Ask string `json:"ask,omitempty"`

	// Any other tls.permission module to wrap instead of an ask URL. A
	// wrapped `http` module is asked the way ask is. For other modules, an
	// error wrapping caddytls.ErrPermissionDenied is a denial; any other
	// error is a failure and is not cached.
	PermissionRaw json.RawMessage `json:"permission,omitempty" caddy:"namespace=tls.permission inline_key=module"`

	// How long an "allowed" answer is kept. Default: 10m.
	CacheAllowed caddy.Duration `json:"cache_allowed,omitempty"`

	// How long a "denied" answer is kept. Default: 1m.
	CacheDenied caddy.Duration `json:"cache_denied,omitempty"`

	// The most names whose answer is kept; past it the least recently used
	// is dropped. An entry costs about 200 bytes. Default: 100000.
	CacheSize int `json:"cache_size,omitempty"`

	// The most asks in flight at once in this process. Default: 32.
	MaxConcurrentAsks int `json:"max_concurrent_asks,omitempty"`

	// The longest a handshake waits for an answer, waiting for a free ask
	// slot included; an ask still running then is abandoned (for ask URLs,
	// its request is cancelled). Default: 3s.
	AskTimeout caddy.Duration `json:"ask_timeout,omitempty"`

	// The longest a handshake waits for a free ask slot when
	// max_concurrent_asks asks are in flight, before it fails. At most
	// ask_timeout. Default: 1s.
	AskQueueTimeout caddy.Duration `json:"ask_queue_timeout,omitempty"`

	// The budget of new names per client address: handshakes for names
	// with no certificate in storage and no cached "allowed" answer. The
	// address is the connection's peer (behind an L4 load balancer, the
	// balancer's, unless the PROXY protocol is used), IPv4 as is and IPv6
	// per /64. Default: 20 per 1m.
	ClientNewNames *ClientBudgetConfig `json:"client_new_names,omitempty"`

	ctx     caddy.Context
	logger  *zap.Logger
	asker   asker
	state   *admissionState
	poolKey string
	events  *caddyevents.App
	certs   certLookup
}

// ClientBudgetConfig is a budget of new names per client address and
// window.
type ClientBudgetConfig struct {
	// How many new names one client address may trigger per window.
	Names int `json:"names,omitempty"`
	// The window, starting at the client's first counted name.
	Window caddy.Duration `json:"window,omitempty"`
	// Turn the budget off.
	Disabled bool `json:"disabled,omitempty"`
}

// Defaults of the permission module.
const (
	defaultCacheAllowed      = 10 * time.Minute
	defaultCacheDenied       = time.Minute
	defaultCacheSize         = 100000
	defaultMaxConcurrentAsks = 32
	defaultAskTimeout        = 3 * time.Second
	defaultAskQueueTimeout   = time.Second
	defaultClientNewNames    = 20
	defaultClientWindow      = time.Minute
)

// CaddyModule returns the Caddy module information.
func (Permission) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "tls.permission.certflow",
		New: func() caddy.Module { return new(Permission) },
	}
}

// Provision loads the wrapped module or prepares the ask URL, and joins
// the admission state (cache, ask slots, client budgets) of any config of
// this process with the same settings, so a reload that leaves them as
// they were keeps the cached answers.
func (p *Permission) Provision(ctx caddy.Context) error {
	if err := p.checkConfig(); err != nil {
		return err
	}
	p.ctx = ctx
	p.logger = ctx.Logger()
	p.setDefaults()

	// the pool key is the configuration itself, taken before LoadModule
	// empties PermissionRaw
	key, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("encoding the permission configuration: %w", err)
	}

	if p.Ask != "" {
		endpoint, err := caddy.NewReplacer().ReplaceOrErr(p.Ask, true, true)
		if err != nil {
			return fmt.Errorf("expanding placeholders in ask %q: %w", p.Ask, err)
		}
		if p.asker, err = newHTTPAsker(endpoint, p.MaxConcurrentAsks); err != nil {
			return err
		}
	} else {
		val, err := ctx.LoadModule(p, "PermissionRaw")
		if err != nil {
			return fmt.Errorf("loading the wrapped permission module: %w", err)
		}
		if p.asker, err = wrapPermission(val, p.MaxConcurrentAsks); err != nil {
			return err
		}
	}

	// the TLS app is being provisioned (it provisions its permission
	// module): its policies are read at request time, once provisioned
	p.certs = newCertLookup(ctx)
	if app, err := ctx.App("events"); err == nil {
		p.events, _ = app.(*caddyevents.App)
	}
	if err := registerPermissionMetrics(ctx.GetMetricsRegistry()); err != nil {
		p.logger.Error("registering certflow admission metrics", zap.Error(err))
	}

	p.poolKey = string(key)
	st, _, err := admissionPool.LoadOrNew(p.poolKey, func() (caddy.Destructor, error) {
		return newAdmissionState(p), nil
	})
	if err != nil {
		return err
	}
	p.state = st.(*admissionState)
	return nil
}

// Validate checks the configuration.
func (p *Permission) Validate() error { return p.checkConfig() }

// checkConfig reports settings that cannot work. Zero values mean the
// defaults.
func (p *Permission) checkConfig() error {
	switch {
	case p.Ask == "" && p.PermissionRaw == nil && p.asker == nil:
		return errors.New("certflow permission: set ask (an endpoint URL) or permission (a tls.permission module)")
	case p.Ask != "" && p.PermissionRaw != nil:
		return errors.New("certflow permission: set ask or permission, not both")
	case p.CacheAllowed < 0 || p.CacheDenied < 0:
		return errors.New("certflow permission: cache_allowed and cache_denied must not be negative")
	case p.CacheSize < 0:
		return fmt.Errorf("certflow permission: cache_size must not be negative, got %d", p.CacheSize)
	case p.MaxConcurrentAsks < 0:
		return fmt.Errorf("certflow permission: max_concurrent_asks must not be negative, got %d", p.MaxConcurrentAsks)
	case p.AskTimeout < 0 || p.AskQueueTimeout < 0:
		return errors.New("certflow permission: ask_timeout and ask_queue_timeout must not be negative")
	case p.AskTimeout > 0 && p.AskQueueTimeout > p.AskTimeout:
		return fmt.Errorf("certflow permission: ask_queue_timeout %s is longer than ask_timeout %s",
			time.Duration(p.AskQueueTimeout), time.Duration(p.AskTimeout))
	}
	if b := p.ClientNewNames; b != nil && !b.Disabled && (b.Names < 0 || b.Window < 0) {
		return fmt.Errorf("certflow permission: client_new_names needs a positive count and window, got %d per %s",
			b.Names, time.Duration(b.Window))
	}
	if p.PermissionRaw != nil {
		var head struct {
			Module string `json:"module"`
		}
		if json.Unmarshal(p.PermissionRaw, &head) == nil && head.Module == "certflow" {
			return errors.New("certflow permission: the wrapped permission module cannot be certflow itself")
		}
	}
	return nil
}

func (p *Permission) setDefaults() {
	if p.CacheAllowed == 0 {
		p.CacheAllowed = caddy.Duration(defaultCacheAllowed)
	}
	if p.CacheDenied == 0 {
		p.CacheDenied = caddy.Duration(defaultCacheDenied)
	}
	if p.CacheSize == 0 {
		p.CacheSize = defaultCacheSize
	}
	if p.MaxConcurrentAsks == 0 {
		p.MaxConcurrentAsks = defaultMaxConcurrentAsks
	}
	if p.AskTimeout == 0 {
		p.AskTimeout = caddy.Duration(defaultAskTimeout)
	}
	if p.AskQueueTimeout == 0 {
		p.AskQueueTimeout = caddy.Duration(min(defaultAskQueueTimeout, time.Duration(p.AskTimeout)))
	}
	if p.ClientNewNames == nil {
		p.ClientNewNames = &ClientBudgetConfig{}
	}
	if b := p.ClientNewNames; !b.Disabled {
		if b.Names == 0 {
			b.Names = defaultClientNewNames
		}
		if b.Window == 0 {
			b.Window = caddy.Duration(defaultClientWindow)
		}
	}
}

// Cleanup leaves the shared admission state; the last config using it
// drops it.
func (p *Permission) Cleanup() error {
	if p.poolKey == "" {
		return nil
	}
	_, err := admissionPool.Delete(p.poolKey)
	return err
}

// CertificateAllowed decides whether a certificate for name may be loaded
// from storage or obtained now. Caddy calls it when a handshake needs a
// certificate that is not in memory, and before renewing an on-demand
// certificate (then without a ClientHello in ctx).
func (p *Permission) CertificateAllowed(ctx context.Context, name string) error {
	name = normalizeAdmissionName(name)
	now := time.Now()
	hello, _ := ctx.Value(certmagic.ClientHelloInfoCtxKey).(*tls.ClientHelloInfo)
	handshake := hello != nil
	st := p.state

	cached, hit := st.cache.get(name, now)
	if hit && !cached.allowed {
		permissionMetrics.cache.WithLabelValues("hit").Inc()
		permissionMetrics.refusals.WithLabelValues(refusedDenied).Inc()
		return st.deniedError(name, cached, now)
	}

	stored := storedOnce{p: p, ctx: ctx, name: name}
	if handshake {
		if r, refused := p.certflowRefusal(name, now); refused {
			if stored.get() {
				// refusing would cost the name its stored certificate:
				// certmagic loads it only once permission is given
				p.logger.Debug("certflow holds the name back, but it has a certificate in storage: not refused",
					zap.String("name", name), zap.Time("until", r.Until), zap.String("reason", r.Reason))
			} else {
				if r.Until.IsZero() {
					permissionMetrics.refusals.WithLabelValues(refusedCannotIssue).Inc()
				} else {
					permissionMetrics.refusals.WithLabelValues(refusedHeld).Inc()
				}
				return refusalError(name, r)
			}
		}
	}
	if hit {
		permissionMetrics.cache.WithLabelValues("hit").Inc()
		return nil
	}
	permissionMetrics.cache.WithLabelValues("miss").Inc()

	if handshake && st.budget != nil {
		if client := clientKey(hello); client != "" {
			if err := p.spendBudget(client, name, &stored, now); err != nil {
				return err
			}
		}
	}
	return p.decide(ctx, name, now)
}

// storedOnce reads whether name has a certificate in storage at most once
// per call.
type storedOnce struct {
	p          *Permission
	ctx        context.Context
	name       string
	done, have bool
}

func (s *storedOnce) get() bool {
	if !s.done {
		s.have, s.done = s.p.certs.certificateStored(s.ctx, s.name), true
	}
	return s.have
}

// certflowRefusal asks certflow's issuers whether they would refuse name
// now, when the policy that applies to name issues through certflow alone.
func (p *Permission) certflowRefusal(name string, now time.Time) (Refusal, bool) {
	if !p.certs.onlyCertflow(name) {
		return Refusal{}, false
	}
	return refusalFor(name, now)
}

// refusalError is the handshake's error for a name certflow refuses.
func refusalError(name string, r Refusal) error {
	if r.Until.IsZero() {
		return fmt.Errorf("%w: certflow refuses %s: %s", caddytls.ErrPermissionDenied, name, r.Reason)
	}
	return fmt.Errorf("%w: certflow holds back %s until %s: %s",
		caddytls.ErrPermissionDenied, name, r.Until.UTC().Format(time.RFC3339), r.Reason)
}

// normalizeAdmissionName returns the form certflow's issuers and the cache
// key use (issuer.NormalizeName). A name certflow does not accept is kept
// as it is: certflow's issuers refuse it (issuer.CheckName) before the ask.
func normalizeAdmissionName(name string) string {
	if norm, err := issuer.NormalizeName(name); err == nil {
		return norm
	}
	return name
}

// Interface guards.
var (
	_ caddytls.OnDemandPermission = (*Permission)(nil)
	_ caddy.Provisioner           = (*Permission)(nil)
	_ caddy.Validator             = (*Permission)(nil)
	_ caddy.CleanerUpper          = (*Permission)(nil)
	_ caddyfile.Unmarshaler       = (*Permission)(nil)
)
