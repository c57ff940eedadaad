package rig

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
)

// What the tests of certflow's on-demand permission module need: an ask
// endpoint whose behaviour can be switched and whose requests are counted,
// handshakes from a chosen loopback source address, and a storage module
// that counts writes.

// AskMode is how an AskServer answers.
type AskMode int

const (
	// AskAnswer answers 200 for names its allow function accepts, else 403.
	AskAnswer AskMode = iota
	// AskHang never answers (until the request is cancelled or the server
	// is stopped).
	AskHang
	// AskFail answers 500 Internal Server Error.
	AskFail
)

// AskServer is an on-demand permission endpoint on 127.0.0.1 (GET
// ?domain=<name>) that counts the requests it gets, by name, and the most
// it had in flight at once.
type AskServer struct {
	// URL is the endpoint, for ask or permission http.
	URL string

	allow func(name string) bool
	mode  atomic.Int64
	delay atomic.Int64 // nanoseconds added before every answer

	mu       sync.Mutex
	byName   map[string]int
	total    int
	inFlight int
	maxIn    int

	release chan struct{} // closed by Stop: hanging requests return
	srv     *http.Server
}

// StartAskServer starts an AskServer answering with allow (nil: every name
// is allowed) in mode AskAnswer.
func StartAskServer(allow func(name string) bool) (*AskServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("starting ask server: listening on 127.0.0.1:0: %w", err)
	}
	a := &AskServer{allow: allow, byName: map[string]int{}, release: make(chan struct{})}
	a.srv = &http.Server{
		Handler:           http.HandlerFunc(a.serve),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(discardWriter{}, "", 0),
	}
	go func() {
		if err := a.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Printf("rig: ask server on %s stopped: %v", ln.Addr(), err)
		}
	}()
	a.URL = "http://" + ln.Addr().String() + "/ask"
	return a, nil
}

func (a *AskServer) serve(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("domain")
	a.mu.Lock()
	a.total++
	a.byName[name]++
	a.inFlight++
	a.maxIn = max(a.maxIn, a.inFlight)
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		a.inFlight--
		a.mu.Unlock()
	}()

	if d := time.Duration(a.delay.Load()); d > 0 {
		select {
		case <-time.After(d):
		case <-r.Context().Done():
			return
		case <-a.release:
			return
		}
	}
	switch AskMode(a.mode.Load()) {
	case AskHang:
		select {
		case <-r.Context().Done():
		case <-a.release:
		}
		return
	case AskFail:
		http.Error(w, "the database is down", http.StatusInternalServerError)
		return
	}
	switch {
	case name == "":
		http.Error(w, "missing domain", http.StatusBadRequest)
	case a.allow == nil || a.allow(name):
		w.WriteHeader(http.StatusOK)
	default:
		http.Error(w, "not allowed", http.StatusForbidden)
	}
}

// SetMode switches how the server answers from now on.
func (a *AskServer) SetMode(m AskMode) { a.mode.Store(int64(m)) }

// SetDelay makes every answer wait d first (0: none).
func (a *AskServer) SetDelay(d time.Duration) { a.delay.Store(int64(d)) }

// Requests returns how many requests the server got in all.
func (a *AskServer) Requests() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.total
}

// RequestsFor returns how many requests named name.
func (a *AskServer) RequestsFor(name string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.byName[name]
}

// Names returns how many distinct names were asked about.
func (a *AskServer) Names() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.byName)
}

// InFlight returns the requests being served now.
func (a *AskServer) InFlight() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.inFlight
}

// MaxInFlight returns the most requests that were in flight at once.
func (a *AskServer) MaxInFlight() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.maxIn
}

// Reset forgets the counts (not the mode or delay).
func (a *AskServer) Reset() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.total, a.maxIn = 0, a.inFlight
	a.byName = map[string]int{}
}

// Stop releases hanging requests and stops the server.
func (a *AskServer) Stop() {
	select {
	case <-a.release:
	default:
		close(a.release)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = a.srv.Shutdown(ctx) // an error means the timeout passed; the listener is closed anyway
}

// HandshakeFrom is Handshake with the connection made from the loopback
// address from (e.g. 127.0.0.3), so the server sees that client address.
func HandshakeFrom(from, addr, sni string, roots *x509.CertPool, timeout time.Duration) (*tls.ConnectionState, error) {
	ip := net.ParseIP(from)
	if ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("handshake source %q is not a loopback address", from)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	d := tls.Dialer{
		NetDialer: &net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}},
		Config:    clientTLSConfig(sni, roots),
	}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("TLS handshake from %s with %s for %q: %w", from, addr, sni, err)
	}
	state := conn.(*tls.Conn).ConnectionState()
	if err := conn.Close(); err != nil {
		return &state, fmt.Errorf("closing TLS connection to %s for %q: %w", addr, sni, err)
	}
	return &state, nil
}

func init() {
	caddy.RegisterModule(CountingStorage{})
}

// storageWrites counts the writes of every CountingStorage of the process.
var storageWrites struct {
	stores, deletes, locks atomic.Int64
	heartbeats             atomic.Int64 // Stores of a process's heartbeat record
}

// StorageWrites returns how many Store, Delete and Lock/TryLock calls the
// CountingStorage modules of this process got so far. Stores of certflow's
// heartbeat records (owners/, written every 30 s whatever the traffic) are
// not counted here but by HeartbeatWrites.
func StorageWrites() (stores, deletes, locks int64) {
	return storageWrites.stores.Load(), storageWrites.deletes.Load(), storageWrites.locks.Load()
}

// HeartbeatWrites returns how many heartbeat records the CountingStorage
// modules stored so far.
func HeartbeatWrites() int64 { return storageWrites.heartbeats.Load() }

// CountingStorage is the storage module caddy.storage.certflow_rig_counting:
// Caddy's file_system storage at Root whose writes (Store, Delete, and
// locks, which are files too) are counted process-wide (StorageWrites).
// Use it as the config's "storage": {"module": "certflow_rig_counting",
// "root": dir}.
type CountingStorage struct {
	Root string `json:"root,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (CountingStorage) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "caddy.storage.certflow_rig_counting",
		New: func() caddy.Module { return new(CountingStorage) },
	}
}

// CertMagicStorage returns the counting file storage.
func (s CountingStorage) CertMagicStorage() (certmagic.Storage, error) {
	if s.Root == "" {
		return nil, errors.New("certflow_rig_counting storage: root is required")
	}
	return &countingFileStorage{FileStorage: &certmagic.FileStorage{Path: s.Root}}, nil
}

type countingFileStorage struct {
	*certmagic.FileStorage
}

func (c *countingFileStorage) Store(ctx context.Context, key string, value []byte) error {
	if strings.Contains(key, "/owners/") {
		storageWrites.heartbeats.Add(1)
	} else {
		storageWrites.stores.Add(1)
	}
	return c.FileStorage.Store(ctx, key, value)
}

func (c *countingFileStorage) Delete(ctx context.Context, key string) error {
	storageWrites.deletes.Add(1)
	return c.FileStorage.Delete(ctx, key)
}

func (c *countingFileStorage) Lock(ctx context.Context, name string) error {
	storageWrites.locks.Add(1)
	return c.FileStorage.Lock(ctx, name)
}

func (c *countingFileStorage) TryLock(ctx context.Context, name string) (bool, error) {
	storageWrites.locks.Add(1)
	return c.FileStorage.TryLock(ctx, name)
}

// Interface guards.
var (
	_ caddy.StorageConverter = CountingStorage{}
	_ certmagic.TryLocker    = (*countingFileStorage)(nil)
)
