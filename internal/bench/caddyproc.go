package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/certflow/certflow/integration/rig"
)

// Bounds of starting and stopping Caddy.
const (
	readyTimeout    = 30 * time.Second
	readyPoll       = 20 * time.Millisecond
	stopGrace       = 10 * time.Second
	stopAfterSignal = 5 * time.Second
	adminTimeout    = 5 * time.Second
)

// caddyProcess is one `caddy run` this package started, with its admin
// endpoint. It is stopped by its PID only.
type caddyProcess struct {
	*rig.Process
	adminAddr string // "127.0.0.1:<port>"
}

// startCaddy runs `binary run --config configPath` in dir, with Caddy's
// config and data directories inside dir and its output in dir/caddy.out.
// The child gets its own process group, so a Ctrl-C at the terminal reaches
// only the benchmark, which then stops it, and it is killed if the
// benchmark dies first (Linux parent-death signal).
func startCaddy(binary, configPath, dir, adminAddr string) (*caddyProcess, error) {
	proc, err := rig.StartProcess(binary, configPath, dir, filepath.Join(dir, "caddy.out"))
	if err != nil {
		return nil, err
	}
	return &caddyProcess{Process: proc, adminAddr: adminAddr}, nil
}

// waitReady waits until Caddy's admin endpoint answers GET /config/ and its
// HTTPS listener accepts connections, or it exits, or readyTimeout passes.
func (p *caddyProcess) waitReady(ctx context.Context, httpsAddr string) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	client := &http.Client{Timeout: adminTimeout}
	var lastErr error
	for {
		if lastErr = p.probe(ctx, client, httpsAddr); lastErr == nil {
			return nil
		}
		select {
		case <-p.Exited():
			return fmt.Errorf("caddy (pid %d) exited while starting: %v; its output is in %s", p.PID, p.ExitErr(), p.LogPath)
		case <-ctx.Done():
			return fmt.Errorf("caddy (pid %d) not ready: %w; last probe: %w; its output is in %s", p.PID, ctx.Err(), lastErr, p.LogPath)
		case <-time.After(readyPoll):
		}
	}
}

// probe checks the admin endpoint and the HTTPS listener once.
func (p *caddyProcess) probe(ctx context.Context, client *http.Client, httpsAddr string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.adminAddr+"/config/", nil)
	if err != nil {
		return fmt.Errorf("building admin request: %w", err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("admin endpoint %s: %w", p.adminAddr, err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("admin endpoint %s: GET /config/ answered %s", p.adminAddr, resp.Status)
	}
	conn, err := (&net.Dialer{Timeout: adminTimeout}).DialContext(ctx, "tcp", httpsAddr)
	if err != nil {
		return fmt.Errorf("HTTPS listener %s: %w", httpsAddr, err)
	}
	return conn.Close()
}

// stop asks Caddy to stop through its admin endpoint (POST /stop) and waits
// for it to exit; if it does not within stopGrace, it sends SIGTERM and then
// SIGKILL to its PID. It returns once the process is gone, or an error if
// even SIGKILL did not end it in time.
func (p *caddyProcess) stop() error {
	select {
	case <-p.Exited():
		return nil
	default:
	}
	var stopErr error
	client := &http.Client{Timeout: adminTimeout}
	resp, err := client.Post("http://"+p.adminAddr+"/stop", "application/json", nil)
	if err != nil {
		stopErr = fmt.Errorf("POST /stop to %s: %w", p.adminAddr, err)
	} else {
		_ = resp.Body.Close()
	}
	if p.waitExit(stopGrace) {
		return nil
	}
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		if err := p.Signal(sig); err != nil {
			stopErr = errors.Join(stopErr, err)
		}
		if p.waitExit(stopAfterSignal) {
			return nil
		}
	}
	return errors.Join(stopErr, fmt.Errorf("caddy (pid %d) did not exit after SIGKILL", p.PID))
}

// waitExit reports whether the process exited within d.
func (p *caddyProcess) waitExit(d time.Duration) bool {
	select {
	case <-p.Exited():
		return true
	case <-time.After(d):
		return false
	}
}

// running reports whether the process has not exited yet.
func (p *caddyProcess) running() bool {
	select {
	case <-p.Exited():
		return false
	default:
		return true
	}
}

// raceMarker starts every report of Go's race detector.
const raceMarker = "WARNING: DATA RACE"

// maxRaceExcerpt bounds how much of a race report an error carries.
const maxRaceExcerpt = 4 << 10

// raceReport returns an error carrying the start of the first data race
// report in Caddy's output, if a Caddy built with -race printed one; call
// it after the process exited.
func (p *caddyProcess) raceReport() error {
	out, err := os.ReadFile(p.LogPath)
	if err != nil {
		return fmt.Errorf("reading Caddy's output for race reports: %w", err)
	}
	i := bytes.Index(out, []byte(raceMarker))
	if i < 0 {
		return nil
	}
	excerpt := out[i:]
	if len(excerpt) > maxRaceExcerpt {
		excerpt = excerpt[:maxRaceExcerpt]
	}
	return fmt.Errorf("caddy (pid %d) reported a data race:\n%s", p.PID, excerpt)
}
