package rig

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/caddyserver/certmagic"

	"github.com/certflow/certflow/issuer"
)

// Resource kinds certflow persists, for LoadResources.
const (
	ResourceRequests   = "requests"
	ResourceOrders     = "orders"
	ResourceChallenges = "challenges"
)

// LoadResources reads the resources of kind ("requests", "orders" or
// "challenges") that certflow persisted in the file-system storage at
// storageRoot, for every issuer key under <storageRoot>/certflow/, wherever
// certflow keeps them (issuer.StoredResources: under their own key, in
// their request's record, in their name's record), each once, sorted by
// issuer key and ID. No resources is no error.
func LoadResources(storageRoot, kind string) ([]map[string]any, error) {
	dirs, err := filepath.Glob(filepath.Join(storageRoot, "certflow", "*"))
	if err != nil {
		return nil, fmt.Errorf("listing certflow's issuer keys under %s: %w", storageRoot, err)
	}
	sort.Strings(dirs)
	storage := &certmagic.FileStorage{Path: storageRoot}
	var out []map[string]any
	for _, dir := range dirs {
		if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
			continue
		}
		raws, err := issuer.StoredResources(context.Background(), storage, filepath.Base(dir), kind)
		if err != nil {
			return nil, fmt.Errorf("reading %s resources under %s: %w", kind, dir, err)
		}
		for _, raw := range raws {
			var res map[string]any
			if err := json.Unmarshal(raw, &res); err != nil {
				return nil, fmt.Errorf("decoding a %s resource under %s: %w", kind, dir, err)
			}
			out = append(out, res)
		}
	}
	return out, nil
}
