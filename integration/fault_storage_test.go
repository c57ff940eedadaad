package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"

	"github.com/certflow/certflow/integration/rig"
)

// A storage that fails, or holds, certflow's writes of a challenge around
// Present, for the tests of what is left behind (leftovers_test.go).

func init() {
	caddy.RegisterModule(faultyStorage{})
}

// Faults of faultyStorage.
const (
	// faultPlan fails the write of a challenge as presented with its plan,
	// the write before anything is published.
	faultPlan = "plan"
	// faultMemo fails every write of a challenge carrying the record the
	// DNS provider returned (the write right after Present).
	faultMemo = "memo"
	// faultMemoHold prints faultHoldLine and blocks that write instead:
	// the process is killed there, between Present and the write.
	faultMemoHold = "memo-hold"
)

const faultHoldLine = "CERTFLOW-FAULT-HOLD "

// faultyStorage is a caddy.storage module for these tests: the file
// system storage at Root, whose writes of certflow's challenges fail (or
// block) as Fault says.
type faultyStorage struct {
	Root  string `json:"root"`
	Fault string `json:"fault"`
}

func (faultyStorage) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "caddy.storage.certflow_test_faulty", New: func() caddy.Module { return new(faultyStorage) }}
}

func (f faultyStorage) CertMagicStorage() (certmagic.Storage, error) {
	return &faultyFS{FileStorage: &certmagic.FileStorage{Path: f.Root}, fault: f.Fault}, nil
}

type faultyFS struct {
	*certmagic.FileStorage
	fault string
}

// String names the storage for certflow's StorageIdentity: the same root is
// the same storage across reloads.
func (f *faultyFS) String() string { return "certflow_test_faulty:" + f.Path }

func (f *faultyFS) Store(ctx context.Context, key string, value []byte) error {
	if path.Base(path.Dir(key)) == "challenges" {
		v := string(value)
		switch {
		case f.fault == faultPlan && strings.Contains(v, `"state":"presented"`) && strings.Contains(v, `"planned":true`):
			return errors.New("injected: the plan's write fails")
		case f.fault == faultMemo && strings.Contains(v, `"zone":`):
			return errors.New("injected: the memo's write fails")
		case f.fault == faultMemoHold && strings.Contains(v, `"zone":`):
			fmt.Printf("%s%s\n", faultHoldLine, key)
			<-ctx.Done() // killed before
			return ctx.Err()
		}
	}
	return f.FileStorage.Store(ctx, key, value)
}

// config returns cfg as Caddy JSON with the faulty storage (at cfg's root).
func faultyConfig(t *testing.T, cfg rig.CaddyConfig, fault string) []byte {
	t.Helper()
	m, err := cfg.Build()
	if err != nil {
		t.Fatal(err)
	}
	m["storage"] = map[string]any{"module": "certflow_test_faulty", "root": cfg.StorageRoot, "fault": fault}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
