package certflow

import (
	"testing"

	"github.com/caddyserver/certmagic"
)

// TestCertCacheOf: the cache a certmagic config keeps unexported is found
// (certmagic is pinned; a rename fails this test before it fails a forced
// renewal's cache update in production).
func TestCertCacheOf(t *testing.T) {
	cache := certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: func(certmagic.Certificate) (*certmagic.Config, error) { return nil, nil },
	})
	defer cache.Stop()
	cfg := certmagic.New(cache, certmagic.Config{})
	if got := certCacheOf(cfg); got != cache {
		t.Fatalf("certCacheOf = %p, want the config's cache %p", got, cache)
	}
	if certCacheOf(nil) != nil {
		t.Error("a nil config has a cache")
	}
}
