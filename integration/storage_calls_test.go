package integration

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/certflow/certflow/integration/rig"
)

// storageCallsMetric is certflow's count of its own storage calls.
const storageCallsMetric = "certflow_storage_operations_total"

// maxListsPerNodePass bounds the storage lists a node makes that do not
// belong to any handshake. Its first maintenance pass (3s after start)
// lists the processes' heartbeats (1), every stored challenge for
// leftovers (1) and the challenge tokens (1), and for its hourly work the
// previous version's index (1), the requests, orders and challenges for
// retention (3, maintenancePassLists), the catalog (1), the holds (1),
// the names' expiry notes (1), the records set aside (1) and, for their
// first sweep, the names' records (1): 12. The catalog writer lists the
// folder of each hour it starts writing in (1). The passes of every minute
// after it list the heartbeats, the catalog's recent hours, the previous
// version's index and the tokens: fewer.
const maxListsPerNodePass = 13

// holdsRefreshEvery is how often, at most, a node that issues lists the
// stored rate-limit holds (the issuer's holdRefresh): the one list on the
// handshake path, once per period whatever the number of names.
const holdsRefreshEvery = 5 * time.Second

// maxListsWhileIssuing bounds the storage lists nodes make while issuing
// for d: a maintenance pass each, and each node's look at the stored holds
// once per holdsRefreshEvery (once more for its first). Never one per name.
func maxListsWhileIssuing(nodes int, d time.Duration) float64 {
	return float64(nodes * (maxListsPerNodePass + int(d/holdsRefreshEvery) + 1))
}

// maintenancePassLists is what one maintenance pass lists, by folder: the
// challenges (for leftovers, then for retention), the requests and the
// orders. Nothing else certflow does lists these folders.
var maintenancePassLists = map[string]int64{"challenges": 2, "requests": 1, "orders": 1}

// maintenanceLists snapshots the lists of maintenancePassLists' folders the
// counting storage (rig.CaddyConfig.CountingStorage) got so far.
func maintenanceLists() map[string]int64 {
	out := map[string]int64{}
	for folder := range maintenancePassLists {
		out[folder] = rig.StorageLists(folder)
	}
	return out
}

// waitMaintenancePass waits until certflow's maintenance has made a whole
// pass of lists since the snapshot before (what the pass stores or deletes
// follows each list at once, so with nothing to trim past the last one,
// the pass is over) and its first sweep of the names' records, which runs
// beside the pass, has ended in the file storage at root.
func waitMaintenancePass(t *testing.T, root string, before map[string]int64) {
	t.Helper()
	waitFor(t, "certflow's maintenance pass", pollMax, func() bool {
		for folder, n := range maintenancePassLists {
			if rig.StorageLists(folder)-before[folder] < n {
				return false
			}
		}
		return true
	})
	waitFor(t, "certflow's sweep of the names' records", pollMax, func() bool { return namesSweepEnded(t, root) })
}

// namesSweepEnded tells whether the file storage at root holds the record
// of a sweep of the names' records and no sweep holds its lock.
func namesSweepEnded(t *testing.T, root string) bool {
	recorded, locked := false, false
	for f := range storageFiles(t, root) {
		f = filepath.ToSlash(f)
		recorded = recorded || strings.HasSuffix(f, "/maintenance/names-swept.json")
		locked = locked || strings.HasPrefix(f, "locks/certflow_names_sweep_")
	}
	return recorded && !locked
}
