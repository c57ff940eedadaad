package rig

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/redis/go-redis/v9"
)

// RedisServerPath returns the path of redis-server (Debian's redis-server
// package), or an error saying how to install it.
func RedisServerPath() (string, error) {
	if p, err := exec.LookPath("redis-server"); err == nil {
		return p, nil
	}
	for _, p := range []string{"/usr/bin/redis-server", "/usr/sbin/redis-server", "/usr/local/bin/redis-server"} {
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p, nil
		}
	}
	return "", errors.New("redis-server not found (apt-get install -y --no-install-recommends redis-server)")
}

// BuildPackage builds the Go package pkg into out with the go command on
// PATH, from inside the certflow module.
func BuildPackage(ctx context.Context, pkg, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	var output bytes.Buffer
	cmd.Stdout, cmd.Stderr = &output, &output
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build -o %s %s: %w\n%s", out, pkg, err, output.String())
	}
	return nil
}

// Redis is a redis-server child process on 127.0.0.1:Port with its data
// (an append-only file, no RDB snapshots) in Dir. It is signalled by its own
// PID only. Start it again on the same port and directory with Restart.
type Redis struct {
	// Port is the TCP port on 127.0.0.1; Addr is "127.0.0.1:<Port>".
	Port int
	Addr string
	// Dir holds the append-only file; LogPath the server's log.
	Dir, LogPath string

	binary string
	cmd    *exec.Cmd
	exited chan struct{}
	client *redis.Client
}

// StartRedis starts redis-server on a free loopback port with
// `--save ” --appendonly yes --dir dir` and waits until it answers PING.
func StartRedis(dir string) (*Redis, error) {
	bin, err := RedisServerPath()
	if err != nil {
		return nil, err
	}
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	r := &Redis{Port: port, Addr: loopback(port), Dir: dir, LogPath: filepath.Join(dir, "redis.log"), binary: bin}
	r.client = redis.NewClient(&redis.Options{
		Addr: r.Addr, DialTimeout: time.Second, ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second,
		MaxRetries: -1, PoolSize: 4,
	})
	if err := r.start(); err != nil {
		_ = r.client.Close()
		return nil, err
	}
	return r, nil
}

func (r *Redis) start() error {
	if err := checkPortFree(r.Port); err != nil {
		return fmt.Errorf("starting redis-server: %w", err)
	}
	out, err := os.OpenFile(r.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("opening redis-server's log: %w", err)
	}
	cmd := exec.Command(r.binary,
		"--port", strconv.Itoa(r.Port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "yes", "--dir", r.Dir,
		"--daemonize", "no", "--protected-mode", "no", "--logfile", "",
	)
	cmd.Dir = r.Dir
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		_ = out.Close()
		return fmt.Errorf("starting %s: %w", r.binary, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); _ = out.Close(); close(exited) }()
	r.cmd, r.exited = cmd, exited

	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := r.client.Ping(ctx).Err()
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(r.LogPath)
			return fmt.Errorf("redis-server (pid %d) exited while starting: %s", cmd.Process.Pid, tailLines(string(b), 20))
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = r.kill()
			return fmt.Errorf("redis-server (pid %d) not answering PING on %s after 10s: %v", cmd.Process.Pid, r.Addr, err)
		}
	}
}

// PID is the process ID of the running server (0 when stopped).
func (r *Redis) PID() int {
	if r.cmd == nil {
		return 0
	}
	return r.cmd.Process.Pid
}

// Stop sends SIGTERM to the server's PID (it writes its append-only file
// and exits) and waits up to 10s, then SIGKILLs it.
func (r *Redis) Stop() error {
	if r.cmd == nil {
		return nil
	}
	select {
	case <-r.exited:
		r.cmd = nil
		return nil
	default:
	}
	if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("sending SIGTERM to redis-server (pid %d): %w", r.cmd.Process.Pid, err)
	}
	select {
	case <-r.exited:
		r.cmd = nil
		return nil
	case <-time.After(10 * time.Second):
		return r.kill()
	}
}

func (r *Redis) kill() error {
	if r.cmd == nil {
		return nil
	}
	if err := r.cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("sending SIGKILL to redis-server (pid %d): %w", r.cmd.Process.Pid, err)
	}
	<-r.exited
	r.cmd = nil
	return nil
}

// Restart starts a stopped server again on the same port and directory, so
// it reloads its append-only file.
func (r *Redis) Restart() error {
	if r.cmd != nil {
		return fmt.Errorf("redis-server (pid %d) is still running", r.cmd.Process.Pid)
	}
	return r.start()
}

// Close stops the server and closes the rig's client.
func (r *Redis) Close() error {
	err := r.Stop()
	return errors.Join(err, r.client.Close())
}

// Client is the rig's own client of the server (for inspection).
func (r *Redis) Client() *redis.Client { return r.client }

// CommandStats returns the calls per command from INFO commandstats, e.g.
// {"get": 12, "set": 3}.
func (r *Redis) CommandStats(ctx context.Context) (map[string]int64, error) {
	info, err := r.client.Info(ctx, "commandstats").Result()
	if err != nil {
		return nil, fmt.Errorf("INFO commandstats: %w", err)
	}
	out := map[string]int64{}
	for _, line := range strings.Split(info, "\n") {
		line = strings.TrimSpace(line)
		name, rest, ok := strings.Cut(line, ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		for _, f := range strings.Split(rest, ",") {
			if v, ok := strings.CutPrefix(f, "calls="); ok {
				n, err := strconv.ParseInt(v, 10, 64)
				if err == nil {
					out[strings.TrimPrefix(name, "cmdstat_")] = n
				}
			}
		}
	}
	return out, nil
}

// CommandsBetween returns the commands counted between two CommandStats
// snapshots, leaving out the rig's own inspection commands (info, ping,
// keys, scan, ttl, pttl, client, hello, command).
func CommandsBetween(before, after map[string]int64) (total int64, byCmd map[string]int64) {
	skip := map[string]bool{"info": true, "ping": true, "keys": true, "scan": true, "ttl": true, "pttl": true,
		"client|setinfo": true, "client": true, "hello": true, "command": true, "command|docs": true}
	byCmd = map[string]int64{}
	for k, v := range after {
		if skip[k] {
			continue
		}
		if d := v - before[k]; d > 0 {
			byCmd[k] = d
			total += d
		}
	}
	return total, byCmd
}

// Keys returns the keys matching a glob pattern (SCAN).
func (r *Redis) Keys(ctx context.Context, pattern string) ([]string, error) {
	var keys []string
	iter := r.client.Scan(ctx, 0, pattern, 1000).Iterator()
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	return keys, iter.Err()
}

// LoadValue reads a value the caddy-storage-redis module stored under the
// full key (prefix included): it decodes the module's JSON envelope
// (uncompressed, unencrypted values only).
func (r *Redis) LoadValue(ctx context.Context, key string) ([]byte, error) {
	raw, err := r.client.Get(ctx, key).Bytes()
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", key, err)
	}
	var sd struct {
		Value       []byte `json:"value"`
		Compression int    `json:"compression"`
		Encryption  int    `json:"encryption"`
	}
	if err := json.Unmarshal(raw, &sd); err != nil {
		return nil, fmt.Errorf("decoding %s: %w", key, err)
	}
	if sd.Compression != 0 || sd.Encryption != 0 {
		return nil, fmt.Errorf("%s is compressed or encrypted", key)
	}
	return sd.Value, nil
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// The caddy-storage-redis module (v1.8.1) keeps, besides each value (a JSON
// envelope under the prefixed key), a directory tree for List: every
// "directory" is a sorted set holding its files by name and its
// subdirectories by name and "/". Store adds the entries up the tree before
// SETting the value; Delete removes the entry (and empty parents' entries)
// before DELeting the value; neither is atomic, and Delete of a directory
// deletes only its set, not what is under it. Locks (<prefix>/locks/...)
// are plain redislock keys outside the tree.

// storageEnvelope is the module's StorageData.
type storageEnvelope struct {
	Value       []byte    `json:"value"`
	Modified    time.Time `json:"modified"`
	Size        int64     `json:"size"`
	Compression int       `json:"compression"`
	Encryption  int       `json:"encryption"`
}

// StoreValue writes value under the full key (prefix included) the way the
// module does: the directory entries up the tree, then the envelope.
func (r *Redis) StoreValue(ctx context.Context, key string, value []byte) error {
	env, err := json.Marshal(storageEnvelope{Value: value, Modified: time.Now(), Size: int64(len(value))})
	if err != nil {
		return fmt.Errorf("encoding the envelope of %s: %w", key, err)
	}
	return r.StoreRaw(ctx, key, env)
}

// StoreRaw writes raw bytes (not necessarily an envelope) under the full
// key, with its directory entries: a value the module may not decode.
func (r *Redis) StoreRaw(ctx context.Context, key string, raw []byte) error {
	if err := r.AddDirectoryEntries(ctx, key); err != nil {
		return err
	}
	if err := r.client.Set(ctx, key, raw, 0).Err(); err != nil {
		return fmt.Errorf("SET %s: %w", key, err)
	}
	return nil
}

// AddDirectoryEntries adds key's entries up the module's directory tree
// without a value: what the module leaves when it dies between the two
// halves of a Store.
func (r *Redis) AddDirectoryEntries(ctx context.Context, key string) error {
	score := float64(time.Now().Unix())
	member := path.Base(key)
	for dir := path.Dir(key); dir != "." && dir != "/"; dir = path.Dir(dir) {
		if err := r.client.ZAdd(ctx, dir, redis.Z{Score: score, Member: member}).Err(); err != nil {
			return fmt.Errorf("ZADD %s %s: %w", dir, member, err)
		}
		member = path.Base(dir) + "/"
	}
	return nil
}

// TreeProblems returns what is inconsistent in the module's directory tree
// under prefix (locks left out): a value no directory lists, a directory
// its parent does not list, and a directory entry with nothing behind it
// (an orphan a List returns though Load finds nothing).
func (r *Redis) TreeProblems(ctx context.Context, prefix string) ([]string, error) {
	keys, err := r.Keys(ctx, prefix+"*")
	if err != nil {
		return nil, fmt.Errorf("scanning %s*: %w", prefix, err)
	}
	locks := prefix + "/locks/"
	var problems []string
	for _, k := range keys {
		if strings.HasPrefix(k, locks) || (k != prefix && !strings.HasPrefix(k, prefix+"/")) {
			continue
		}
		typ, err := r.client.Type(ctx, k).Result()
		if err != nil {
			return nil, fmt.Errorf("TYPE %s: %w", k, err)
		}
		if typ == "none" {
			continue // deleted since the scan
		}
		parentMember := path.Base(k)
		if typ == "zset" {
			parentMember += "/"
		}
		if k != prefix {
			if _, err := r.client.ZScore(ctx, path.Dir(k), parentMember).Result(); errors.Is(err, redis.Nil) {
				problems = append(problems, fmt.Sprintf("%s %s is not listed in %s", typ, k, path.Dir(k)))
			} else if err != nil {
				return nil, fmt.Errorf("ZSCORE %s %s: %w", path.Dir(k), parentMember, err)
			}
		}
		if typ != "zset" {
			continue
		}
		members, err := r.client.ZRange(ctx, k, 0, -1).Result()
		if err != nil {
			return nil, fmt.Errorf("ZRANGE %s: %w", k, err)
		}
		for _, m := range members {
			child := k + "/" + strings.TrimSuffix(m, "/")
			want := "string"
			if strings.HasSuffix(m, "/") {
				want = "zset"
			}
			got, err := r.client.Type(ctx, child).Result()
			if err != nil {
				return nil, fmt.Errorf("TYPE %s: %w", child, err)
			}
			if got != want {
				problems = append(problems, fmt.Sprintf("directory %s lists %q, but %s is %s, not a %s", k, m, child, got, want))
			}
		}
	}
	return problems, nil
}

// StorageView returns a read-only certmagic.Storage over what the
// caddy-storage-redis module stored under prefix (its key_prefix), for
// reading certflow's records the way certflow does (issuer.StoredResources).
// Writes, deletes and locks fail.
func (r *Redis) StorageView(prefix string) certmagic.Storage {
	return &redisView{r: r, prefix: prefix}
}

type redisView struct {
	r      *Redis
	prefix string
}

func (v *redisView) full(key string) string { return path.Join(v.prefix, key) }

func (v *redisView) Load(ctx context.Context, key string) ([]byte, error) {
	b, err := v.r.LoadValue(ctx, v.full(key))
	if errors.Is(err, redis.Nil) {
		return nil, fs.ErrNotExist
	}
	return b, err
}

func (v *redisView) List(ctx context.Context, dir string, recursive bool) ([]string, error) {
	members, err := v.r.client.ZRange(ctx, v.full(dir), 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("ZRANGE %s: %w", v.full(dir), err)
	}
	if len(members) == 0 {
		return nil, fs.ErrNotExist
	}
	var out []string
	for _, m := range members {
		child := path.Join(dir, strings.TrimSuffix(m, "/"))
		if recursive && strings.HasSuffix(m, "/") {
			sub, err := v.List(ctx, child, true)
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				return nil, err
			}
			out = append(out, sub...)
			continue
		}
		out = append(out, child)
	}
	return out, nil
}

func (v *redisView) Exists(ctx context.Context, key string) bool {
	n, err := v.r.client.Exists(ctx, v.full(key)).Result()
	return err == nil && n > 0
}

func (v *redisView) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	if _, err := v.Load(ctx, key); err != nil {
		return certmagic.KeyInfo{}, err
	}
	return certmagic.KeyInfo{Key: key, IsTerminal: true}, nil
}

var errReadOnly = errors.New("the rig's view of Redis storage is read-only")

func (v *redisView) Store(context.Context, string, []byte) error { return errReadOnly }
func (v *redisView) Delete(context.Context, string) error        { return errReadOnly }
func (v *redisView) Lock(context.Context, string) error          { return errReadOnly }
func (v *redisView) Unlock(context.Context, string) error        { return errReadOnly }
