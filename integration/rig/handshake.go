package rig

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// maxHelloBody bounds the response body HTTPSGet reads.
const maxHelloBody = 1 << 20

// Handshake connects to addr (e.g. "127.0.0.1:<HTTPSPort>") and does a TLS
// handshake with SNI sni, verifying the server's chain against roots and its
// certificate for sni. It returns the connection's state; the connection
// itself is closed. timeout bounds dialing and the handshake, which for an
// on-demand name includes issuing its certificate.
func Handshake(addr, sni string, roots *x509.CertPool, timeout time.Duration) (*tls.ConnectionState, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	d := tls.Dialer{
		NetDialer: &net.Dialer{},
		Config:    clientTLSConfig(sni, roots),
	}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("TLS handshake with %s for %q: %w", addr, sni, err)
	}
	state := conn.(*tls.Conn).ConnectionState()
	if err := conn.Close(); err != nil {
		return &state, fmt.Errorf("closing TLS connection to %s for %q: %w", addr, sni, err)
	}
	return &state, nil
}

// HTTPSGet sends GET https://<sni><path> over a connection to addr, with SNI
// and Host sni, verifying the server against roots, and returns the status
// and body. timeout bounds the whole exchange.
func HTTPSGet(addr, sni, path string, roots *x509.CertPool, timeout time.Duration) (int, string, error) {
	dialer := &net.Dialer{}
	transport := &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, network, addr)
		},
		TLSClientConfig:   clientTLSConfig(sni, roots),
		ForceAttemptHTTP2: true,
		DisableKeepAlives: true,
	}
	defer transport.CloseIdleConnections()
	client := &http.Client{Transport: transport, Timeout: timeout}
	url := "https://" + sni + path
	resp, err := client.Get(url)
	if err != nil {
		return 0, "", fmt.Errorf("GET %s via %s: %w", url, addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxHelloBody))
	if err != nil {
		return resp.StatusCode, "", fmt.Errorf("reading response to GET %s via %s: %w", url, addr, err)
	}
	return resp.StatusCode, string(body), nil
}

// clientTLSConfig returns a client config sending SNI sni and verifying the
// server's certificate for sni against roots.
func clientTLSConfig(sni string, roots *x509.CertPool) *tls.Config {
	return &tls.Config{
		ServerName: sni,
		RootCAs:    roots,
		MinVersion: tls.VersionTLS12,
	}
}
