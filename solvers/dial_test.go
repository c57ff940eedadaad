package solvers

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"syscall"
	"testing"
)

func TestResolverAddr(t *testing.T) {
	tests := []struct{ in, want string }{
		{"127.0.0.1:5353", "127.0.0.1:5353"},
		{"8.8.8.8", "8.8.8.8:53"},
		{" 1.1.1.1 ", "1.1.1.1:53"},
		{"2001:db8::53", "[2001:db8::53]:53"},
		{"[2001:db8::53]", "[2001:db8::53]:53"},
		{"[2001:db8::53]:5353", "[2001:db8::53]:5353"},
		{"ns.example.test", "ns.example.test:53"},
		{"", ""},
	}
	for _, tt := range tests {
		if got := resolverAddr(tt.in); got != tt.want {
			t.Errorf("resolverAddr(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestPickAddrs(t *testing.T) {
	ip := net.ParseIP
	tests := []struct {
		name string
		in   []net.IP
		want []string
	}{
		{"v4 only", []net.IP{ip("192.0.2.1"), ip("192.0.2.2")}, []string{"192.0.2.1"}},
		{"v6 only", []net.IP{ip("2001:db8::1"), ip("2001:db8::2")}, []string{"2001:db8::1"}},
		{"v6 first, whatever the order", []net.IP{ip("192.0.2.1"), ip("2001:db8::1"), ip("192.0.2.2")}, []string{"2001:db8::1", "192.0.2.1"}},
		{"none", nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, a := range pickAddrs(tt.in) {
				got = append(got, a.String())
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("pickAddrs = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestLookupReason(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"not found", &net.DNSError{Err: "no such host", Name: "x.", Server: "10.0.0.1:53", IsNotFound: true}, "no such host"},
		{"timeout", &net.DNSError{Err: "i/o timeout", IsTimeout: true}, "timeout"},
		{"refused", &net.DNSError{Err: "read udp 127.0.0.1:53812->127.0.0.1:50296: read: connection refused"}, "connection refused"},
		{"misbehaving", &net.DNSError{Err: "server misbehaving"}, "server misbehaving"},
		{"not a DNSError", errors.New("boom"), "boom"},
	}
	for _, tt := range tests {
		if got := lookupReason(tt.err); got != tt.want {
			t.Errorf("%s: lookupReason = %q, want %q", tt.name, got, tt.want)
		}
	}
}

func TestStableError(t *testing.T) {
	remote := &net.TCPAddr{IP: net.ParseIP("192.0.2.1"), Port: 80}
	local := &net.TCPAddr{IP: net.ParseIP("10.0.0.2"), Port: 53124}
	readErr := &net.OpError{Op: "read", Net: "tcp", Source: local, Addr: remote, Err: syscall.ECONNRESET}
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"nil", nil, ""},
		{"plain", errors.New("status 404"), "status 404"},
		{"op error", readErr, "read tcp 192.0.2.1:80: connection reset by peer"},
		{"wrapped op error", fmt.Errorf("handshake: %w", readErr), "handshake: read tcp 192.0.2.1:80: connection reset by peer"},
		{"dial error", &net.OpError{Op: "dial", Net: "tcp", Addr: remote, Err: syscall.ECONNREFUSED}, "dial tcp 192.0.2.1:80: connection refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := stableError(tt.err)
			if tt.err == nil {
				if got != nil {
					t.Fatalf("stableError(nil) = %v", got)
				}
				return
			}
			if got.Error() != tt.want {
				t.Errorf("stableError = %q, want %q", got, tt.want)
			}
			if !errors.Is(got, tt.err) {
				t.Error("stableError lost the wrapped error")
			}
		})
	}
}

// TestDialerContextDone checks that a dialer with a resolver that never
// answers gives up when the context is done.
func TestDialerContextDone(t *testing.T) {
	// A UDP socket that reads nothing: queries go unanswered.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	d := newDialer([]string{pc.LocalAddr().String()})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := d.DialContext(ctx, "tcp", "example.test:80"); err == nil {
		t.Fatal("DialContext succeeded with a done context")
	}
}
