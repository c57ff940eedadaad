package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestVanishedStateHeals (file system): everything under certflow's prefix
// — the sentinel that proves the store answers, names, resources, index —
// is deleted under a running Caddy (an operator deleting the folder). The
// next new name is still issued: a missing sentinel is probed (a value
// written and read back now) and written again, instead of every new name
// failing until a reload.
func TestVanishedStateHeals(t *testing.T) {
	schedulerIdle(t)
	e := newEnv(t, envOptions{})
	e.run(e.config(e.issuer(nil)))
	e.mustHandshake("before.test")
	prefix := filepath.Join(e.storage, "certflow")
	// a background write (an index marker, the heartbeat) may land in a
	// folder while it is removed: try again, a few times
	var err error
	for range 5 {
		if err = os.RemoveAll(prefix); err == nil {
			break
		}
		time.Sleep(pollEvery)
	}
	if err != nil {
		t.Fatal(err)
	}
	e.mustHandshake("after.test")
	// a probe's verdict stands for a second: the sentinel is back by the
	// first new name after that
	n := 0
	waitFor(t, "the sentinel to be written again", pollMax, func() bool {
		n++
		e.mustHandshake(fmt.Sprintf("after-%d.test", n))
		sentinels, _ := filepath.Glob(filepath.Join(prefix, "*", "sentinel"))
		return len(sentinels) == 1
	})
	probes, _ := filepath.Glob(filepath.Join(prefix, "*", "probe-*"))
	if len(probes) != 0 {
		t.Errorf("probes were left behind: %v", probes)
	}
}

// TestRedisFlushedStateHeals: a Redis without persistence flushed under a
// running node (FLUSHDB: every key, the sentinel and certmagic's too) —
// the next new name is issued without a reload.
func TestRedisFlushedStateHeals(t *testing.T) {
	re := newRedisEnv(t, redisEnvOptions{nodes: 1})
	re.start(0)
	nd := re.nodes[0]
	if _, err := re.handshakeAt(nd.addr(), "before-flush.test", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := re.redis.Client().FlushDB(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := re.handshakeAt(nd.addr(), "after-flush.test", 30*time.Second); err != nil {
		t.Fatalf("a new name after FLUSHDB: %v\n%s", err, re.logTails(30))
	}
	n := 0
	waitFor(t, "the sentinel to be written again", pollMax, func() bool {
		n++
		if _, err := re.handshakeAt(nd.addr(), fmt.Sprintf("after-flush-%d.test", n), 30*time.Second); err != nil {
			t.Fatalf("a new name after FLUSHDB: %v", err)
		}
		keys, err := re.redis.Keys(ctx, "*sentinel*")
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range keys {
			if strings.HasSuffix(k, "sentinel") {
				return true
			}
		}
		return false
	})
}
