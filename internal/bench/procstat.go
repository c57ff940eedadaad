package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat:
// 100 on every Linux architecture Go supports.
const clockTicks = 100

// rssSampleInterval is how often the RSS sampler reads VmRSS.
const rssSampleInterval = 100 * time.Millisecond

// memStatus holds the memory figures of /proc/<pid>/status, in bytes.
type memStatus struct {
	// RSS is VmRSS, the resident set size now.
	RSS int64
	// HWM is VmHWM, the peak resident set size of the process's life.
	HWM int64
}

// readMemStatus reads VmRSS and VmHWM of process pid.
func readMemStatus(pid int) (memStatus, error) {
	path := fmt.Sprintf("/proc/%d/status", pid)
	data, err := os.ReadFile(path)
	if err != nil {
		return memStatus{}, fmt.Errorf("reading %s: %w", path, err)
	}
	m, err := parseMemStatus(data)
	if err != nil {
		return memStatus{}, fmt.Errorf("parsing %s: %w", path, err)
	}
	return m, nil
}

// parseMemStatus extracts VmRSS and VmHWM (given in kB) from the text of a
// /proc/<pid>/status file.
func parseMemStatus(data []byte) (memStatus, error) {
	var m memStatus
	var haveRSS, haveHWM bool
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		key, value, ok := strings.Cut(sc.Text(), ":")
		if !ok || (key != "VmRSS" && key != "VmHWM") {
			continue
		}
		fields := strings.Fields(value)
		if len(fields) != 2 || fields[1] != "kB" {
			return m, fmt.Errorf("unexpected %s line %q", key, sc.Text())
		}
		kb, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			return m, fmt.Errorf("%s value %q: %w", key, fields[0], err)
		}
		if key == "VmRSS" {
			m.RSS, haveRSS = kb<<10, true
		} else {
			m.HWM, haveHWM = kb<<10, true
		}
	}
	if err := sc.Err(); err != nil {
		return m, err
	}
	if !haveRSS || !haveHWM {
		return m, fmt.Errorf("VmRSS or VmHWM missing")
	}
	return m, nil
}

// readCPU returns the CPU time (user + system) process pid has used.
func readCPU(pid int) (time.Duration, error) {
	path := fmt.Sprintf("/proc/%d/stat", pid)
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("reading %s: %w", path, err)
	}
	d, err := parseCPU(data)
	if err != nil {
		return 0, fmt.Errorf("parsing %s: %w", path, err)
	}
	return d, nil
}

// parseCPU returns utime+stime from the text of a /proc/<pid>/stat file.
// The command name (field 2) may hold spaces and parentheses, so fields are
// counted from the last ')'.
func parseCPU(data []byte) (time.Duration, error) {
	end := bytes.LastIndexByte(data, ')')
	if end < 0 {
		return 0, fmt.Errorf("no ')' after the command name")
	}
	// fields after the name start with field 3 (state); utime is field
	// 14 and stime field 15
	fields := strings.Fields(string(data[end+1:]))
	const utimeIndex, stimeIndex = 14 - 3, 15 - 3
	if len(fields) <= stimeIndex {
		return 0, fmt.Errorf("only %d fields after the command name", len(fields))
	}
	var ticks int64
	for _, i := range []int{utimeIndex, stimeIndex} {
		n, err := strconv.ParseInt(fields[i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("field %d %q: %w", i+3, fields[i], err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// rssSampler polls VmRSS of a process and keeps the largest value seen.
type rssSampler struct {
	pid  int
	stop context.CancelFunc
	done chan struct{}

	mu      sync.Mutex
	max     int64
	samples int
	lastErr error
}

// startRSSSampler starts polling the RSS of pid every rssSampleInterval
// until Stop is called or ctx ends.
func startRSSSampler(ctx context.Context, pid int) *rssSampler {
	ctx, cancel := context.WithCancel(ctx)
	s := &rssSampler{pid: pid, stop: cancel, done: make(chan struct{})}
	go s.loop(ctx)
	return s
}

// loop samples until ctx ends.
func (s *rssSampler) loop(ctx context.Context) {
	defer close(s.done)
	ticker := time.NewTicker(rssSampleInterval)
	defer ticker.Stop()
	for {
		s.sample()
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

// sample reads the RSS once.
func (s *rssSampler) sample() {
	m, err := readMemStatus(s.pid)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.lastErr = err
		return
	}
	s.samples++
	s.max = max(s.max, m.RSS)
}

// Stop takes a last sample, ends the polling and returns the largest RSS
// seen; it is an error if no sample could be read.
func (s *rssSampler) Stop() (int64, error) {
	s.stop()
	<-s.done
	s.sample()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.samples == 0 {
		return 0, fmt.Errorf("sampling the RSS of process %d: %w", s.pid, s.lastErr)
	}
	return s.max, nil
}
