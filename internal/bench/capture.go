package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// captureStartDelay is how long the burst waits after asking for a trace and
// a profile, so both are running when the first handshake arrives.
const captureStartDelay = 200 * time.Millisecond

// capture is a Go execution trace, a CPU profile and a heap profile of a
// Caddy process being taken through its admin endpoint.
type capture struct {
	done chan error
}

// startCapture asks Caddy's admin endpoint for /debug/pprof/trace and
// /debug/pprof/profile, each lasting seconds, written to <dir>/<base>.trace
// and <dir>/<base>.cpu.pprof, and when they end for /debug/pprof/heap (what
// is live then, and what was allocated since the start), written to
// <dir>/<base>.heap.pprof. Wait returns when all three are written.
func startCapture(ctx context.Context, adminAddr, dir, base string, seconds int) *capture {
	c := &capture{done: make(chan error, 1)}
	client := &http.Client{Timeout: time.Duration(seconds)*time.Second + 30*time.Second}
	fetch := func(path, query, file string) error {
		url := fmt.Sprintf("http://%s/debug/pprof/%s%s", adminAddr, path, query)
		return fetchToFile(ctx, client, url, filepath.Join(dir, base+file))
	}
	window := fmt.Sprintf("?seconds=%d", seconds)
	go func() {
		traceErr := make(chan error, 1)
		go func() { traceErr <- fetch("trace", window, ".trace") }()
		profErr := fetch("profile", window, ".cpu.pprof")
		heapErr := fetch("heap", "", ".heap.pprof")
		c.done <- errors.Join(<-traceErr, profErr, heapErr)
	}()
	select {
	case <-ctx.Done():
	case <-time.After(captureStartDelay):
	}
	return c
}

// Wait waits for the trace and the profile to be written.
func (c *capture) Wait() error { return <-c.done }

// fetchToFile GETs url and writes the body to path.
func fetchToFile(ctx context.Context, client *http.Client, url, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("building request for %s: %w", url, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, body)
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("creating %s: %w", path, err)
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		_ = f.Close()
		return fmt.Errorf("writing %s from %s: %w", path, url, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("closing %s: %w", path, err)
	}
	return nil
}
