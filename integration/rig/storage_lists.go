package rig

import (
	"context"
	"path"
	"sync"
)

// storageLists counts the List calls of every CountingStorage of the
// process, by the folder listed.
var storageLists struct {
	mu       sync.Mutex
	byFolder map[string]int64
}

// StorageLists returns how many times the CountingStorage modules of this
// process listed a folder named folder (the last element of the prefix
// listed: "challenges" for certflow's stored challenges), so far.
func StorageLists(folder string) int64 {
	storageLists.mu.Lock()
	defer storageLists.mu.Unlock()
	return storageLists.byFolder[folder]
}

func (c *countingFileStorage) List(ctx context.Context, prefix string, recursive bool) ([]string, error) {
	storageLists.mu.Lock()
	if storageLists.byFolder == nil {
		storageLists.byFolder = map[string]int64{}
	}
	storageLists.byFolder[path.Base(prefix)]++
	storageLists.mu.Unlock()
	return c.FileStorage.List(ctx, prefix, recursive)
}
