package issuer

import (
	"fmt"
	"strings"
	"sync"
	"time"
)

// Refusal is why the engine would not try a name now, and until when.
type Refusal struct {
	Reason string
	Until  time.Time
}

// RefusalFor reports, from memory only, whether the engine would refuse an
// on-demand request for name under issuerKey at now: the name's failure
// backoff (as this process last saw it), a rate-limit hold on the name,
// its registered domain or the account, or an open circuit to the CA. It
// never touches storage or the CA.
func (e *Engine) RefusalFor(issuerKey, name string, now time.Time) (Refusal, bool) {
	if r, ok := e.backoffs.refusal(issuerKey, name, now); ok {
		return r, true
	}
	// a hold a handshake cannot wait out (a shorter one is waited for)
	var held Hold
	e.holdTables.Range(func(k, v any) bool {
		if !strings.HasSuffix(k.(string), "|"+issuerKey) {
			return true
		}
		if h, ok := v.(*holdTable).covering([]string{name}, e.cfg.accountUser(), now); ok && h.Until.After(held.Until) {
			held = h
		}
		return true
	})
	if held.Until.Sub(now) > OnDemandBudget {
		return Refusal{Reason: fmt.Sprintf("new orders for %s are held (%s): %s", held.Scope, held.Limit, held.Reason), Until: held.Until}, true
	}
	if err := e.breaker.refusesNow(now); err != nil {
		_, until := chargedTo(err)
		return Refusal{Reason: err.Error(), Until: until}, true
	}
	return Refusal{}, false
}

// maxRememberedBackoffs bounds the names whose backoff the engine keeps in
// memory; past it, expired entries are dropped, then the new one is not
// kept (the stored name record stays the authority).
const maxRememberedBackoffs = 100000

// backoffMemory is what this process last saw of names' failure backoffs,
// for answers that must not touch storage.
type backoffMemory struct {
	mu     sync.Mutex
	byName map[string]Refusal // by issuer key and name
}

func backoffKey(issuerKey, name string) string { return issuerKey + "|" + name }

// note records that name backs off until until (a zero or past until
// forgets it).
func (m *backoffMemory) note(issuerKey, name string, until time.Time, reason string, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	key := backoffKey(issuerKey, name)
	if !until.After(now) {
		delete(m.byName, key)
		return
	}
	if m.byName == nil {
		m.byName = map[string]Refusal{}
	}
	if _, ok := m.byName[key]; !ok && len(m.byName) >= maxRememberedBackoffs {
		for k, r := range m.byName {
			if !r.Until.After(now) {
				delete(m.byName, k)
			}
		}
		if len(m.byName) >= maxRememberedBackoffs {
			return
		}
	}
	m.byName[key] = Refusal{Reason: reason, Until: until}
}

func (m *backoffMemory) refusal(issuerKey, name string, now time.Time) (Refusal, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.byName[backoffKey(issuerKey, name)]
	if !ok || !r.Until.After(now) {
		return Refusal{}, false
	}
	return r, true
}

// Forget drops what the engine remembers of name's backoff under
// issuerKey, after an operator cleared it (POST /certflow/retry/<name>).
func (e *Engine) Forget(issuerKey, name string) {
	e.backoffs.note(issuerKey, name, time.Time{}, "", time.Now())
}
