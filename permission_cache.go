package certflow

import (
	"time"

	"github.com/caddyserver/caddy/v2"
	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/sync/semaphore"
	"golang.org/x/sync/singleflight"
)

// admissionPool holds the admission state of every permission module
// instance of this process, keyed by its configuration: a reload that keeps
// the settings keeps the cached answers, the ask slots and the budgets
// (Caddy provisions the new config before it cleans up the old one).
var admissionPool = caddy.NewUsagePool()

// admissionState is what permission modules with one configuration share.
type admissionState struct {
	source  string // the endpoint or module, for messages and status
	cache   *decisionCache
	flights singleflight.Group  // one ask per name at a time
	slots   *semaphore.Weighted // max_concurrent_asks
	budget  *clientBudget       // nil when client_new_names is off
}

func newAdmissionState(p *Permission) *admissionState {
	st := &admissionState{
		source: p.asker.source(),
		cache:  newDecisionCache(p.CacheSize, time.Duration(p.CacheAllowed), time.Duration(p.CacheDenied)),
		slots:  semaphore.NewWeighted(int64(p.MaxConcurrentAsks)),
	}
	if b := p.ClientNewNames; b != nil && !b.Disabled {
		st.budget = newClientBudget(b.Names, time.Duration(b.Window))
	}
	return st
}

// Destruct implements caddy.Destructor; the state holds nothing to release.
func (*admissionState) Destruct() error { return nil }

// decision is a cached answer.
type decision struct {
	allowed bool
	decided time.Time
	expires time.Time
}

// decisionCache keeps answers, each until its own expiry, in a bounded LRU
// cache. hashicorp/golang-lru's plain LRU is used with the expiry checked
// on read rather than its expirable variant: that one has a single TTL per
// cache and starts a cleanup goroutine that never ends, which would leak
// one per config load. An expired entry costs its slot until it is read or
// pushed out by newer ones.
type decisionCache struct {
	lru             *lru.Cache[string, decision]
	allowed, denied time.Duration
}

func newDecisionCache(size int, allowed, denied time.Duration) *decisionCache {
	c, err := lru.New[string, decision](size)
	if err != nil {
		// only for a size below 1, which setDefaults rules out
		panic(err)
	}
	return &decisionCache{lru: c, allowed: allowed, denied: denied}
}

// get returns name's cached answer if it has not expired.
func (c *decisionCache) get(name string, now time.Time) (decision, bool) {
	d, ok := c.lru.Get(name)
	if !ok {
		return decision{}, false
	}
	if !now.Before(d.expires) {
		c.lru.Remove(name)
		return decision{}, false
	}
	return d, true
}

// peek is get without touching the entry's recency or removing it.
func (c *decisionCache) peek(name string, now time.Time) (decision, bool) {
	d, ok := c.lru.Peek(name)
	if !ok || !now.Before(d.expires) {
		return decision{}, false
	}
	return d, true
}

// put caches an answer and returns it.
func (c *decisionCache) put(name string, allowed bool, now time.Time) decision {
	ttl := c.denied
	if allowed {
		ttl = c.allowed
	}
	d := decision{allowed: allowed, decided: now, expires: now.Add(ttl)}
	c.lru.Add(name, d)
	return d
}

func (c *decisionCache) len() int { return c.lru.Len() }
