package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"time"

	"github.com/certflow/certflow/integration/rig"
)

// caCloseTimeout bounds how long stopping Pebble may take. Its HTTPS server
// waits for requests in flight; a handler that never returns would hang the
// benchmark.
const caCloseTimeout = 15 * time.Second

// closeCA stops Pebble, waiting at most caCloseTimeout. If it does not
// stop, the goroutines of this process (Pebble's among them) are written to
// the run's directory, which is kept, and the error names the file; the
// stuck server is left behind so the benchmark can go on or end.
func (r *run) closeCA(ca *rig.CA) error {
	done := make(chan error, 1)
	go func() { done <- ca.Close() }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("stopping Pebble: %w", err)
		}
		return nil
	case <-time.After(caCloseTimeout):
	}
	r.keepDir = true
	dump := filepath.Join(r.dir, "pebble-hang-goroutines.txt")
	f, err := os.Create(dump)
	if err != nil {
		return fmt.Errorf("pebble did not stop within %s (requests still in flight), and its goroutines could not be dumped: %w", caCloseTimeout, err)
	}
	werr := pprof.Lookup("goroutine").WriteTo(f, 2)
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return fmt.Errorf("pebble did not stop within %s (requests still in flight); dumping goroutines to %s: %w", caCloseTimeout, dump, werr)
	}
	return fmt.Errorf("pebble did not stop within %s (requests still in flight); goroutines of the benchmark process, Pebble's among them, are in %s", caCloseTimeout, dump)
}
