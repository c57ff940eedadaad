package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

func TestMain(m *testing.M) {
	// in-process Caddy writes its config and data dirs under XDG_*: keep
	// them in a directory of this run, removed at the end
	xdg, err := os.MkdirTemp("", "certflow-integration-xdg-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "creating a directory for Caddy's config and data:", err)
		os.Exit(1)
	}
	_ = os.Setenv("XDG_CONFIG_HOME", filepath.Join(xdg, "config"))
	_ = os.Setenv("XDG_DATA_HOME", filepath.Join(xdg, "data"))
	code := m.Run()
	if caddyBinDir != "" {
		_ = os.RemoveAll(caddyBinDir)
	}
	_ = os.RemoveAll(xdg)
	os.Exit(code)
}
