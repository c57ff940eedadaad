package bench

import (
	"os"
	"testing"
	"time"
)

func TestParseProcFiles(t *testing.T) {
	status := "Name:\tcaddy\nVmPeak:\t 900 kB\nVmHWM:\t   2048 kB\nVmRSS:\t   1024 kB\n"
	m, err := parseMemStatus([]byte(status))
	if err != nil {
		t.Fatal(err)
	}
	if m.RSS != 1<<20 || m.HWM != 2<<20 {
		t.Errorf("parseMemStatus = %+v", m)
	}
	if _, err := parseMemStatus([]byte("Name:\tx\nVmRSS:\t1 kB\n")); err == nil {
		t.Error("parseMemStatus without VmHWM succeeded")
	}

	// a command name with spaces and parentheses
	stat := "123 (we (ird) name) S 1 2 3 4 5 6 7 8 9 10 250 130 0 0 20 0 1 0"
	d, err := parseCPU([]byte(stat))
	if err != nil {
		t.Fatal(err)
	}
	if d != 3800*time.Millisecond {
		t.Errorf("parseCPU = %v, want 3.8s", d)
	}
	if _, err := parseCPU([]byte("123 (x) S 1 2")); err == nil {
		t.Error("parseCPU of a short line succeeded")
	}
}

func TestReadOwnProcess(t *testing.T) {
	pid := os.Getpid()
	m, err := readMemStatus(pid)
	if err != nil {
		t.Fatal(err)
	}
	if m.RSS <= 0 || m.HWM < m.RSS {
		t.Errorf("readMemStatus(self) = %+v", m)
	}
	if _, err := readCPU(pid); err != nil {
		t.Fatal(err)
	}
	s := startRSSSampler(t.Context(), pid)
	// the sampler's first sample and one on its interval
	for deadline := time.Now().Add(10 * time.Second); s.sampled() < 2; time.Sleep(rssSampleInterval / 4) {
		if time.Now().After(deadline) {
			t.Fatalf("the sampler took %d samples in 10s, want 2", s.sampled())
		}
	}
	if peak, err := s.Stop(); err != nil || peak <= 0 {
		t.Errorf("sampler Stop = %d, %v", peak, err)
	}
}

// sampled is how many samples s has taken so far.
func (s *rssSampler) sampled() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.samples
}
