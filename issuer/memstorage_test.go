package issuer

import (
	"context"
	"io/fs"
	"strings"
	"sync"

	"github.com/caddyserver/certmagic"
)

// memStorage is an in-memory certmagic.Storage, fast enough for fuzzing.
type memStorage struct {
	mu sync.Mutex
	m  map[string][]byte
	// failStore, when set, fails the Store of the keys it returns an
	// error for.
	failStore func(key string) error
}

func newMemStorage() *memStorage { return &memStorage{m: map[string][]byte{}} }

func (s *memStorage) Lock(context.Context, string) error   { return nil }
func (s *memStorage) Unlock(context.Context, string) error { return nil }

func (s *memStorage) Store(_ context.Context, key string, value []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failStore != nil {
		if err := s.failStore(key); err != nil {
			return err
		}
	}
	s.m[key] = append([]byte(nil), value...)
	return nil
}

func (s *memStorage) Load(_ context.Context, key string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.m[key]
	if !ok {
		return nil, fs.ErrNotExist
	}
	return append([]byte(nil), v...), nil
}

func (s *memStorage) Delete(_ context.Context, key string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.m[key]; !ok {
		return fs.ErrNotExist
	}
	delete(s.m, key)
	return nil
}

func (s *memStorage) Exists(_ context.Context, key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.m[key]
	return ok
}

func (s *memStorage) List(_ context.Context, prefix string, recursive bool) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	dirs := map[string]bool{}
	for k := range s.m {
		rest, ok := strings.CutPrefix(k, prefix+"/")
		switch {
		case !ok:
		case recursive || !strings.Contains(rest, "/"):
			out = append(out, k)
		default:
			// a folder, listed once, as certmagic.FileStorage does
			dir, _, _ := strings.Cut(rest, "/")
			if !dirs[dir] {
				dirs[dir] = true
				out = append(out, prefix+"/"+dir)
			}
		}
	}
	if len(out) == 0 {
		return nil, fs.ErrNotExist
	}
	return out, nil
}

func (s *memStorage) Stat(_ context.Context, key string) (certmagic.KeyInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.m[key]
	if !ok {
		return certmagic.KeyInfo{}, fs.ErrNotExist
	}
	return certmagic.KeyInfo{Key: key, Size: int64(len(v)), IsTerminal: true}, nil
}
