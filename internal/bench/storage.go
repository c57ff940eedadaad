package bench

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/certflow/certflow/integration/rig"
	"github.com/certflow/certflow/internal/bench/countstore"
)

// certflowStorageMetric is certflow's count of its own storage calls.
const certflowStorageMetric = "certflow_storage_operations_total"

// metricsTimeout bounds one scrape of a node's /metrics.
const metricsTimeout = 10 * time.Second

// StorageFigures is the storage work of a run's burst, from the end of the
// warm-up until every issuance of the burst was over (written whole).
type StorageFigures struct {
	// Calls counts every storage call of the Caddy processes (certmagic's
	// and certflow's), by operation (countstore.Op*) and key area
	// (countstore.Area).
	Calls map[string]map[string]float64
	// Certflow counts certflow's own calls by operation, as its
	// certflow_storage_operations_total says (empty for stock).
	Certflow map[string]float64
	// RedisCommands counts the commands Redis executed, by command (Redis
	// storage only), and RedisKeys the keys added.
	RedisCommands map[string]int64
	RedisKeys     int64
	// Files and Dirs are the regular files and directories added to the
	// storage directory (file storage only).
	Files, Dirs int64
}

// op sums the calls of one operation over every area.
func (f StorageFigures) op(op string) float64 {
	var n float64
	for _, v := range f.Calls[op] {
		n += v
	}
	return n
}

// total sums every call.
func (f StorageFigures) total() float64 {
	var n float64
	for op := range f.Calls {
		n += f.op(op)
	}
	return n
}

// certflowTotal sums certflow's own calls.
func (f StorageFigures) certflowTotal() float64 {
	var n float64
	for _, v := range f.Certflow {
		n += v
	}
	return n
}

// redisTotal sums the Redis commands.
func (f StorageFigures) redisTotal() int64 {
	var n int64
	for _, v := range f.RedisCommands {
		n += v
	}
	return n
}

// filesCreated is how many files the file system got new: each Store
// writes a new file (certmagic's FileStorage writes a temporary file and
// renames it over the old one), each lock is a file, and the directories
// added.
func (f StorageFigures) filesCreated() float64 {
	return f.op(countstore.OpStore) + f.op(countstore.OpLock) + f.op(countstore.OpTryLock) + float64(f.Dirs)
}

// storageSnapshot is what a run's storage has seen so far.
type storageSnapshot struct {
	calls       map[string]map[string]float64
	certflow    map[string]float64
	redis       map[string]int64
	redisKeys   int64
	files, dirs int64
}

// minus is the work between two snapshots.
func (s storageSnapshot) minus(before storageSnapshot) StorageFigures {
	f := StorageFigures{Calls: map[string]map[string]float64{}, Certflow: map[string]float64{}}
	for op, areas := range s.calls {
		for area, v := range areas {
			if d := v - before.calls[op][area]; d > 0 {
				if f.Calls[op] == nil {
					f.Calls[op] = map[string]float64{}
				}
				f.Calls[op][area] = d
			}
		}
	}
	for op, v := range s.certflow {
		if d := v - before.certflow[op]; d > 0 {
			f.Certflow[op] = d
		}
	}
	if s.redis != nil {
		_, f.RedisCommands = rig.CommandsBetween(before.redis, s.redis)
		f.RedisKeys = s.redisKeys - before.redisKeys
	}
	f.Files, f.Dirs = s.files-before.files, s.dirs-before.dirs
	return f
}

// storageSnapshot reads every node's storage counts, Redis's command
// counts and the storage directory's files.
func (r *run) storageSnapshot(ctx context.Context) (storageSnapshot, error) {
	s := storageSnapshot{calls: map[string]map[string]float64{}, certflow: map[string]float64{}}
	for _, n := range r.nodes {
		if err := scrapeStorage(ctx, n.adminAddr(), s); err != nil {
			return s, err
		}
	}
	if r.redis != nil {
		var err error
		if s.redis, err = r.redis.CommandStats(ctx); err != nil {
			return s, err
		}
		if s.redisKeys, err = r.redis.Client().DBSize(ctx).Result(); err != nil {
			return s, fmt.Errorf("DBSIZE: %w", err)
		}
		return s, nil
	}
	err := filepath.WalkDir(r.storageRoot(), func(_ string, d fs.DirEntry, err error) error {
		switch {
		case err != nil:
			return nil // removed while walking (a lock file, a temporary file)
		case d.IsDir():
			s.dirs++
		case d.Type().IsRegular():
			s.files++
		}
		return nil
	})
	if err != nil {
		return s, fmt.Errorf("counting the storage's files: %w", err)
	}
	return s, nil
}

// storageCallTotal sums every node's storage calls.
func (r *run) storageCallTotal(ctx context.Context) (float64, error) {
	s := storageSnapshot{calls: map[string]map[string]float64{}, certflow: map[string]float64{}}
	for _, n := range r.nodes {
		if err := scrapeStorage(ctx, n.adminAddr(), s); err != nil {
			return 0, err
		}
	}
	var total float64
	for _, areas := range s.calls {
		for _, v := range areas {
			total += v
		}
	}
	return total, nil
}

// scrapeStorage adds a node's storage counts (countstore's metric and
// certflow's own) from its admin endpoint's /metrics to s.
func scrapeStorage(ctx context.Context, adminAddr string, s storageSnapshot) error {
	ctx, cancel := context.WithTimeout(ctx, metricsTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+adminAddr+"/metrics", nil)
	if err != nil {
		return fmt.Errorf("building a /metrics request: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("scraping %s/metrics: %w", adminAddr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 32<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		return fmt.Errorf("scraping %s/metrics: HTTP %d, %v", adminAddr, resp.StatusCode, err)
	}
	found := false
	for _, line := range strings.Split(string(body), "\n") {
		name, labels, value, ok := parseSample(line)
		if !ok {
			continue
		}
		switch name {
		case countstore.MetricName:
			op, area := labels["operation"], labels["area"]
			if s.calls[op] == nil {
				s.calls[op] = map[string]float64{}
			}
			s.calls[op][area] += value
			found = true
		case certflowStorageMetric:
			s.certflow[labels["operation"]] += value
		}
	}
	if !found {
		// the metric has series as soon as one call was made, and the
		// config load stores and loads: its absence is a wrong binary
		return fmt.Errorf("%s serves no %s on /metrics: %w (is the Caddy binary built from %s?)", adminAddr, countstore.MetricName, errNoMetric, CaddyPackage)
	}
	return nil
}

// parseSample parses one sample line of the Prometheus text format:
// name{label="value",…} value.
func parseSample(line string) (name string, labels map[string]string, value float64, ok bool) {
	if line == "" || line[0] == '#' {
		return "", nil, 0, false
	}
	open := strings.IndexByte(line, '{')
	closing := strings.LastIndexByte(line, '}')
	if open < 0 || closing < open {
		return "", nil, 0, false
	}
	name = line[:open]
	labels = map[string]string{}
	for _, kv := range strings.Split(line[open+1:closing], ",") {
		k, v, found := strings.Cut(kv, "=")
		if found {
			labels[k] = strings.Trim(v, `"`)
		}
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(line[closing+1:]), 64)
	if err != nil {
		return "", nil, 0, false
	}
	return name, labels, v, true
}
