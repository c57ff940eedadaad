package bench

import (
	"os"
	"strings"
	"testing"
)

func TestDescribeDir(t *testing.T) {
	dir := t.TempDir()
	if got := describeDir(dir); !strings.HasPrefix(got, dir+" (") {
		t.Errorf("describeDir(%s) = %q", dir, got)
	}
	if got := describeDir(""); !strings.HasPrefix(got, os.TempDir()) {
		t.Errorf("describeDir(\"\") = %q, want it to name %s", got, os.TempDir())
	}
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		if got := describeDir("/dev/shm"); !strings.Contains(got, "tmpfs") {
			t.Logf("describeDir(/dev/shm) = %q (not tmpfs here)", got)
		}
	}
}
