package rig

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"time"
)

// StartAsk starts an on-demand permission endpoint on 127.0.0.1 for Caddy's
// "http" permission module: GET ?domain=<name> is answered 200 when allow
// returns true for name, else 403 (400 without a domain). A nil allow allows
// every name. It returns the endpoint's URL and a function stopping it.
func StartAsk(allow func(name string) bool) (url string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, fmt.Errorf("starting ask endpoint: listening on 127.0.0.1:0: %w", err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			name := r.URL.Query().Get("domain")
			switch {
			case name == "":
				http.Error(w, "missing domain", http.StatusBadRequest)
			case allow == nil || allow(name):
				w.WriteHeader(http.StatusOK)
			default:
				http.Error(w, "not allowed", http.StatusForbidden)
			}
		}),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(discardWriter{}, "", 0),
	}
	go func() {
		// Serve returns http.ErrServerClosed after stop; nothing to report.
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Printf("rig: ask endpoint on %s stopped: %v", ln.Addr(), err)
		}
	}()
	stop = func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		// An error means the timeout passed; the listener is closed anyway.
		_ = srv.Shutdown(ctx)
	}
	return "http://" + ln.Addr().String() + "/ask", stop, nil
}

// discardWriter drops everything written to it.
type discardWriter struct{}

// Write discards p.
func (discardWriter) Write(p []byte) (int, error) { return len(p), nil }
