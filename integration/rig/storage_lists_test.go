package rig

import (
	"context"
	"encoding/json"
	"testing"
)

func TestCountingStorageCountsListsByFolder(t *testing.T) {
	s, err := CountingStorage{Root: t.TempDir()}.CertMagicStorage()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := s.Store(ctx, "certflow/k/rigtest-folder/a.json", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	before := StorageLists("rigtest-folder")
	for range 2 {
		keys, err := s.List(ctx, "certflow/k/rigtest-folder", false)
		if err != nil || len(keys) != 1 {
			t.Fatalf("List = %v, %v; want the one key", keys, err)
		}
	}
	if got := StorageLists("rigtest-folder") - before; got != 2 {
		t.Errorf("StorageLists(rigtest-folder) grew by %d, want 2", got)
	}
	if got := StorageLists("no-such-folder"); got != 0 {
		t.Errorf("StorageLists of a folder never listed = %d", got)
	}
}

func TestCaddyConfigCountingStorage(t *testing.T) {
	c := CaddyConfig{HTTPPort: 1, HTTPSPort: 2, StorageRoot: "/tmp/x", CountingStorage: true}
	b, err := c.JSON()
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		Storage map[string]any `json:"storage"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if m.Storage["module"] != "certflow_rig_counting" || m.Storage["root"] != "/tmp/x" {
		t.Errorf("storage = %v, want the counting module at the root", m.Storage)
	}
}
