package rig

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
)

// Resource kinds certflow persists, for LoadResources.
const (
	ResourceRequests   = "requests"
	ResourceOrders     = "orders"
	ResourceChallenges = "challenges"
)

// LoadResources reads the resources of kind ("requests", "orders" or
// "challenges") that certflow persisted in the file-system storage at
// storageRoot, i.e. the JSON objects in <storageRoot>/certflow/*/<kind>/*.json,
// sorted by file path. No such files is no error.
func LoadResources(storageRoot, kind string) ([]map[string]any, error) {
	pattern := filepath.Join(storageRoot, "certflow", "*", kind, "*.json")
	paths, err := filepath.Glob(pattern)
	if err != nil {
		return nil, fmt.Errorf("listing %s resources (%s): %w", kind, pattern, err)
	}
	sort.Strings(paths)
	out := make([]map[string]any, 0, len(paths))
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("reading %s resource: %w", kind, err)
		}
		var res map[string]any
		if err := json.Unmarshal(data, &res); err != nil {
			return nil, fmt.Errorf("decoding %s resource %s: %w", kind, p, err)
		}
		out = append(out, res)
	}
	return out, nil
}
