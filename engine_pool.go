package certflow

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/certflow/certflow/issuer"
)

// What certflow shares process-wide, as Caddy's own modules do, through
// caddy.UsagePool (counted by the issuer instances holding each value, and
// destructed when the last one is cleaned up):
//
//   - one engine per CA, account and HTTP client settings
//     (issuer.AccountConfig.PoolKey): one ACME account, HTTP client, nonce
//     pool and circuit breaker, shared by every policy and config
//     generation using them. What differs per policy (challenge types,
//     self-check, DNS provider, storage, backoff, retention) travels with
//     each request in issuer.Options;
//   - one challenge scheduler, whose cap is per process: the most recently
//     provisioned instance's max_concurrent_challenges and
//     max_queued_challenges are in force; and for each engine, the most
//     recently provisioned order_rate_limit.
var (
	enginePool    = caddy.NewUsagePool()
	schedulerPool = caddy.NewUsagePool()
)

const schedulerPoolKey = "scheduler"

type pooledScheduler struct{ *issuer.Scheduler }

func (pooledScheduler) Destruct() error { return nil }

// acquireEngine takes a hold on the process's scheduler and on the engine
// for the instance's account, creating them on first use.
func (iss *Issuer) acquireEngine() error {
	v, _, err := schedulerPool.LoadOrNew(schedulerPoolKey, func() (caddy.Destructor, error) {
		return pooledScheduler{issuer.NewScheduler(issuer.SchedulerLimits{})}, nil
	})
	if err != nil {
		return err
	}
	iss.scheduler = v.(pooledScheduler).Scheduler
	iss.scheduler.Configure(issuer.SchedulerLimits{MaxLive: iss.MaxConcurrentChallenges, MaxQueued: iss.MaxQueuedChallenges})

	account := issuer.AccountConfig{
		CA:                   iss.CA,
		Email:                iss.Email,
		AccountKeyFile:       iss.AccountKeyFile,
		AccountKeyPEM:        iss.AccountKey,
		EAB:                  iss.ExternalAccount,
		TrustedRootsPEMFiles: iss.TrustedRootsPEMFiles,
		RequestTimeout:       time.Duration(iss.RequestTimeout),
		Proxy:                iss.proxy,
		ProxyKey:             iss.proxyKey,
	}
	key := account.PoolKey()
	e, _, err := enginePool.LoadOrNew(key, func() (caddy.Destructor, error) {
		return issuer.NewEngine(account, nil, iss.scheduler, iss.logger)
	})
	if err != nil {
		_, _ = schedulerPool.Delete(schedulerPoolKey)
		return fmt.Errorf("setting up the ACME client for %s: %w", iss.CA, err)
	}
	iss.engine, iss.engineKey = e.(*issuer.Engine), key
	var limit issuer.OrderRateLimit
	if l := iss.OrderRateLimit; l != nil {
		limit = issuer.OrderRateLimit{Orders: l.Orders, Window: time.Duration(l.Window), Disabled: l.Disabled}
	}
	iss.engine.SetOrderRateLimit(limit)
	return nil
}

// releaseEngine drops the instance's holds (at Cleanup); work in flight
// is not interrupted.
func (iss *Issuer) releaseEngine() error {
	if iss.engineKey == "" {
		return nil
	}
	_, err := enginePool.Delete(iss.engineKey)
	iss.engineKey = ""
	if _, serr := schedulerPool.Delete(schedulerPoolKey); err == nil {
		err = serr
	}
	return err
}

// policyID names the settings that decide how this instance's challenges
// are presented and cleaned up (CA, challenge types and DNS provider,
// self-check), so maintenance cleans a leftover with the solver of the
// policy that made it. Secrets are not part of them.
func (iss *Issuer) policyID() string {
	b, _ := json.Marshal(struct {
		CA         string
		Challenges *ChallengesConfig
		SelfCheck  *SelfCheckConfig
	}{iss.CA, iss.Challenges, iss.SelfCheck})
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// Scheduler returns the process's challenge scheduler while a certflow
// issuer is provisioned, else nil (for tests and status views).
func Scheduler() *issuer.Scheduler {
	var s *issuer.Scheduler
	schedulerPool.Range(func(_, v any) bool {
		s = v.(pooledScheduler).Scheduler
		return false
	})
	return s
}
