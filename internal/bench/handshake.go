package bench

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"syscall"
	"time"
)

// handshake connects to addr and completes a TLS handshake with SNI name,
// verifying the chain against roots and the leaf for name (Go's standard
// verification). It returns how long dialing and the handshake took; the
// connection is closed. timeout bounds the whole exchange.
func handshake(ctx context.Context, addr, name string, roots *x509.CertPool, timeout time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	d := tls.Dialer{
		NetDialer: &net.Dialer{},
		Config:    &tls.Config{ServerName: name, RootCAs: roots, MinVersion: tls.VersionTLS12},
	}
	start := time.Now()
	conn, err := d.DialContext(ctx, "tcp", addr)
	took := time.Since(start)
	if err != nil {
		return took, fmt.Errorf("TLS handshake for %s: %w", name, err)
	}
	state := conn.(*tls.Conn).ConnectionState()
	closeErr := conn.Close()
	if len(state.PeerCertificates) == 0 || !slices.Contains(state.PeerCertificates[0].DNSNames, name) {
		return took, fmt.Errorf("TLS handshake for %s: the certificate is not for %s", name, name)
	}
	if closeErr != nil {
		return took, fmt.Errorf("closing TLS connection for %s: %w", name, closeErr)
	}
	return took, nil
}

// errorKind sorts a handshake error into a short, stable kind for the
// report: "EOF", "timeout", "connection reset", "TLS alert: …",
// "certificate: …", "canceled" or "other".
func errorKind(err error) string {
	var alert tls.AlertError
	var unknownAuthority x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var invalid x509.CertificateInvalidError
	var netErr net.Error
	var opErr *net.OpError
	switch {
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "EOF"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.As(err, &opErr) && opErr.Op == "remote error":
		// an alert the server sent; crypto/tls keeps its type unexported
		return "TLS alert: " + opErr.Err.Error()
	case errors.As(err, &alert):
		return "TLS alert: " + alert.Error()
	case errors.As(err, &unknownAuthority):
		return "certificate: unknown authority"
	case errors.As(err, &hostname):
		return "certificate: wrong name"
	case errors.As(err, &invalid):
		return "certificate: invalid"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return "timeout"
	default:
		return "other"
	}
}
