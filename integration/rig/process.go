package rig

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// CaddyPackage is the import path of the Caddy main with certflow compiled
// in, which BuildCaddy builds.
const CaddyPackage = "github.com/certflow/certflow/cmd/caddy"

// readyLogLine is what `caddy run` logs once its initial config is loaded.
const readyLogLine = "serving initial configuration"

// BuildCaddy builds CaddyPackage (the project's Caddy binary) into out with
// the go command on PATH. It must run inside the certflow module (tests do).
func BuildCaddy(ctx context.Context, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, CaddyPackage)
	var output bytes.Buffer
	cmd.Stdout, cmd.Stderr = &output, &output
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build -o %s %s: %w\n%s", out, CaddyPackage, err, output.String())
	}
	return nil
}

// Process is one `caddy run --config <file>` started by StartProcess. It is
// signalled by its own PID only, never by name.
type Process struct {
	// PID is the process ID of the child.
	PID int
	// LogPath is the file holding the child's stdout and stderr.
	LogPath string

	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error // set before exited is closed
}

// StartProcess runs `binary run --config configPath` with its working
// directory, XDG config and data directories inside dir, and its stdout and
// stderr appended to logPath. The child gets its own process group and is
// killed if the test process dies first (Linux parent-death signal).
func StartProcess(binary, configPath, dir, logPath string) (*Process, error) {
	out, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening Caddy's log file: %w", err)
	}
	cmd := exec.Command(binary, "run", "--config", configPath)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = out, out
	cmd.Env = append(os.Environ(),
		"XDG_CONFIG_HOME="+filepath.Join(dir, "xdg-config"),
		"XDG_DATA_HOME="+filepath.Join(dir, "xdg-data"),
	)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		_ = out.Close()
		return nil, fmt.Errorf("starting %s: %w", binary, err)
	}
	p := &Process{PID: cmd.Process.Pid, LogPath: logPath, cmd: cmd, exited: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		_ = out.Close()
		close(p.exited)
	}()
	return p, nil
}

// WaitReady waits until the child has logged that it serves its initial
// config and httpsAddr accepts TCP connections, or it exits, or timeout
// passes.
func (p *Process) WaitReady(httpsAddr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		logged := false
		if b, err := os.ReadFile(p.LogPath); err == nil {
			logged = bytes.Contains(b, []byte(readyLogLine))
		}
		if logged {
			conn, err := net.DialTimeout("tcp", httpsAddr, time.Second)
			if err == nil {
				_ = conn.Close()
				return nil
			}
		}
		select {
		case <-p.exited:
			return fmt.Errorf("caddy (pid %d) exited while starting: %v; its log is %s", p.PID, p.waitErr, p.LogPath)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("caddy (pid %d) not ready after %s; its log is %s", p.PID, timeout, p.LogPath)
		}
	}
}

// Kill sends SIGKILL to the child's PID and waits for it to exit.
func (p *Process) Kill() error { return p.signalAndWait(syscall.SIGKILL, 10*time.Second) }

// Stop sends SIGTERM to the child's PID and waits up to grace for it to
// exit, then sends SIGKILL.
func (p *Process) Stop(grace time.Duration) error {
	if err := p.signalAndWait(syscall.SIGTERM, grace); err == nil {
		return nil
	}
	return p.Kill()
}

// SignalKill sends SIGKILL to the child's PID without waiting: for use where
// waiting is not possible (e.g. inside a CA fault hook).
func (p *Process) SignalKill() error { return p.Signal(syscall.SIGKILL) }

// Signal sends sig to the child's PID without waiting.
func (p *Process) Signal(sig syscall.Signal) error {
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("sending %s to caddy (pid %d): %w", sig, p.PID, err)
	}
	return nil
}

// Exited is closed once the child has exited.
func (p *Process) Exited() <-chan struct{} { return p.exited }

// ExitErr is how the child exited; valid once Exited is closed.
func (p *Process) ExitErr() error { return p.waitErr }

// Log returns what the child has written so far.
func (p *Process) Log() string {
	b, _ := os.ReadFile(p.LogPath)
	return string(b)
}

func (p *Process) signalAndWait(sig syscall.Signal, wait time.Duration) error {
	select {
	case <-p.exited:
		return nil
	default:
	}
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("sending %s to caddy (pid %d): %w", sig, p.PID, err)
	}
	select {
	case <-p.exited:
		return nil
	case <-time.After(wait):
		return fmt.Errorf("caddy (pid %d) did not exit within %s of %s", p.PID, wait, sig)
	}
}
