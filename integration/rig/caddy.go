package rig

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/certflow/certflow/issuer"
)

// xdgMu guards the one-time setup of Caddy's config and data directories.
var (
	xdgMu   sync.Mutex
	xdgDone bool
)

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago. It
// picks from 10000–31999, below Linux's ephemeral range (32768–60999): a
// port taken from that range and released again is soon handed to some
// other socket (any outgoing connection on the machine), and the test that
// meant to listen on it fails with "address already in use".
func FreePort() (int, error) {
	const lo, hi, tries = 10000, 32000, 200
	var lastErr error
	for range tries {
		port := lo + rand.IntN(hi-lo)
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			lastErr = err
			continue
		}
		if err := ln.Close(); err != nil {
			return 0, fmt.Errorf("releasing free port %d: %w", port, err)
		}
		return port, nil
	}
	return 0, fmt.Errorf("no free port on 127.0.0.1 in %d-%d after %d tries: %w", lo, hi-1, tries, lastErr)
}

// RunCaddy loads cfgJSON into this process's Caddy instance, replacing any
// running config (caddy.Load with forced reload). Caddy is a process
// singleton: do not call RunCaddy or StopCaddy concurrently.
//
// Before the first run it points XDG_CONFIG_HOME and XDG_DATA_HOME, when
// unset, at a new temporary directory kept for the life of the process, so
// Caddy writes nothing under $HOME.
func RunCaddy(cfgJSON []byte) error {
	if err := isolateCaddyDirs(); err != nil {
		return err
	}
	if err := caddy.Load(cfgJSON, true); err != nil {
		return fmt.Errorf("loading Caddy config: %w", err)
	}
	return nil
}

// StopCaddy stops this process's Caddy instance and all its apps, and waits
// for the index updates certflow queued to be written and for its
// heartbeats to stop, so nothing writes to the storage once it returns (a
// test may remove it next).
func StopCaddy() error {
	err := caddy.Stop()
	issuer.FlushIndex(30 * time.Second)
	issuer.AwaitHeartbeatsStopped(30 * time.Second)
	if err != nil {
		return fmt.Errorf("stopping Caddy: %w", err)
	}
	return nil
}

// isolateCaddyDirs sets XDG_CONFIG_HOME and XDG_DATA_HOME, those not yet
// set, to directories under a new temporary directory, once per process.
func isolateCaddyDirs() error {
	xdgMu.Lock()
	defer xdgMu.Unlock()
	if xdgDone {
		return nil
	}
	_, haveConfig := os.LookupEnv("XDG_CONFIG_HOME")
	_, haveData := os.LookupEnv("XDG_DATA_HOME")
	if !haveConfig || !haveData {
		dir, err := os.MkdirTemp("", "certflow-rig-caddy-")
		if err != nil {
			return fmt.Errorf("creating a directory for Caddy's config and data: %w", err)
		}
		if !haveConfig {
			if err := os.Setenv("XDG_CONFIG_HOME", filepath.Join(dir, "config")); err != nil {
				return fmt.Errorf("setting XDG_CONFIG_HOME: %w", err)
			}
		}
		if !haveData {
			if err := os.Setenv("XDG_DATA_HOME", filepath.Join(dir, "data")); err != nil {
				return fmt.Errorf("setting XDG_DATA_HOME: %w", err)
			}
		}
	}
	xdgDone = true
	return nil
}
