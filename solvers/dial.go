package solvers

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"
)

// dialer connects to host:port the way a validating CA does: it resolves
// the name itself (with the configured resolvers, else the system's), then
// tries the first IPv6 address and, if that fails, the first IPv4 address,
// as Let's Encrypt's validation authority does. Trying every address would
// let a self-check pass where the CA fails.
type dialer struct {
	// resolvers are tried in turn; empty means the system's resolver.
	resolvers []resolver
}

// resolver is one configured DNS server.
type resolver struct {
	addr string
	r    *net.Resolver
}

func newDialer(addrs []string) *dialer {
	d := new(dialer)
	for _, a := range addrs {
		a = resolverAddr(a)
		if a == "" {
			continue
		}
		d.resolvers = append(d.resolvers, resolver{
			addr: a,
			r: &net.Resolver{
				PreferGo: true,
				// The Go resolver dials the servers of resolv.conf; send
				// every query to this resolver instead.
				Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
					var nd net.Dialer
					return nd.DialContext(ctx, network, a)
				},
			},
		})
	}
	return d
}

// resolverAddr returns addr as host:port, adding port 53 when it has none.
func resolverAddr(addr string) string {
	addr = strings.TrimSpace(addr)
	if addr == "" {
		return ""
	}
	if _, _, err := net.SplitHostPort(addr); err == nil {
		return addr
	}
	return net.JoinHostPort(strings.Trim(addr, "[]"), "53")
}

// DialContext has the signature of http.Transport.DialContext.
func (d *dialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	var ips []net.IP
	if ip := net.ParseIP(host); ip != nil {
		ips = []net.IP{ip}
	} else {
		all, err := d.lookup(ctx, host)
		if err != nil {
			return nil, err
		}
		ips = pickAddrs(all)
	}
	var errs []error
	for i, ip := range ips {
		dctx := ctx
		if i < len(ips)-1 {
			// A blackholed IPv6 address must not use up the time the
			// IPv4 fallback needs.
			var cancel context.CancelFunc
			dctx, cancel = shareDeadline(ctx, len(ips)-i)
			defer cancel()
		}
		var nd net.Dialer
		conn, err := nd.DialContext(dctx, tcpNetwork(network), net.JoinHostPort(ip.String(), port))
		if err == nil {
			return conn, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, joinErrors(errs)
}

// tcpNetwork keeps the caller's network unless it pins an address family
// that may not match the address picked.
func tcpNetwork(network string) string {
	if network == "" || strings.HasPrefix(network, "tcp") {
		return "tcp"
	}
	return network
}

// lookup returns the addresses of host. With configured resolvers, each is
// asked in turn until one answers; an authoritative "no such host" ends the
// search, as it would for the CA.
func (d *dialer) lookup(ctx context.Context, host string) ([]net.IP, error) {
	if len(d.resolvers) == 0 {
		addrs, err := net.DefaultResolver.LookupIPAddr(ctx, host)
		if err != nil {
			return nil, &lookupError{host: host, err: err}
		}
		return ipsOf(host, "", addrs)
	}
	// The name is absolute: the CA applies no search domains.
	fqdn := host
	if !strings.HasSuffix(fqdn, ".") {
		fqdn += "."
	}
	var errs []error
	for i, r := range d.resolvers {
		rctx, cancel := shareDeadline(ctx, len(d.resolvers)-i)
		addrs, err := r.r.LookupIPAddr(rctx, fqdn)
		cancel()
		if err == nil {
			return ipsOf(host, r.addr, addrs)
		}
		errs = append(errs, &lookupError{host: host, via: r.addr, err: err})
		var dnsErr *net.DNSError
		if (errors.As(err, &dnsErr) && dnsErr.IsNotFound) || ctx.Err() != nil {
			break
		}
	}
	return nil, joinErrors(errs)
}

func ipsOf(host, via string, addrs []net.IPAddr) ([]net.IP, error) {
	ips := make([]net.IP, 0, len(addrs))
	for _, a := range addrs {
		ips = append(ips, a.IP)
	}
	if len(ips) == 0 {
		return nil, &lookupError{host: host, via: via, err: errors.New("no addresses")}
	}
	return ips, nil
}

// pickAddrs returns the first IPv6 and the first IPv4 address, in that order.
func pickAddrs(ips []net.IP) []net.IP {
	var v6, v4 net.IP
	for _, ip := range ips {
		if ip.To4() != nil {
			if v4 == nil {
				v4 = ip
			}
		} else if v6 == nil {
			v6 = ip
		}
	}
	var out []net.IP
	if v6 != nil {
		out = append(out, v6)
	}
	if v4 != nil {
		out = append(out, v4)
	}
	return out
}

// shareDeadline gives one of n remaining tries its share of ctx's time.
func shareDeadline(ctx context.Context, n int) (context.Context, context.CancelFunc) {
	deadline, ok := ctx.Deadline()
	if !ok || n <= 1 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, time.Until(deadline)/time.Duration(n))
}

// lookupError says which name failed with which resolver. Go's DNSError
// names the resolv.conf server even when Dial sent the query elsewhere, so
// only its reason is kept in the text.
type lookupError struct {
	host string
	via  string // "" for the system's resolver
	err  error
}

func (e *lookupError) Error() string {
	reason := lookupReason(e.err)
	if e.via == "" {
		return fmt.Sprintf("lookup %s: %s", e.host, reason)
	}
	return fmt.Sprintf("lookup %s via %s: %s", e.host, e.via, reason)
}

func (e *lookupError) Unwrap() error { return e.err }

// lookupReason returns why a lookup failed, without the socket addresses
// (ephemeral ports) that would make the reason change at every attempt.
func lookupReason(err error) string {
	var dnsErr *net.DNSError
	if !errors.As(err, &dnsErr) {
		return err.Error()
	}
	switch {
	case dnsErr.IsNotFound:
		return "no such host"
	case dnsErr.IsTimeout:
		return "timeout"
	}
	reason := dnsErr.Err
	for _, op := range []string{"read ", "write ", "dial "} {
		if strings.HasPrefix(reason, op) {
			if i := strings.LastIndex(reason, ": "); i >= 0 {
				return reason[i+2:]
			}
		}
	}
	return reason
}

// stableError drops the local address from a network error's text
// ("read tcp 127.0.0.1:53124->192.0.2.1:80: ...") so that the reason
// recorded for a failing check does not change at every attempt.
func stableError(err error) error {
	var op *net.OpError
	if err == nil || !errors.As(err, &op) || op.Source == nil {
		return err
	}
	cp := *op
	cp.Source = nil
	return rewordedError{msg: strings.Replace(err.Error(), op.Error(), cp.Error(), 1), err: err}
}

// rewordedError is err with another text.
type rewordedError struct {
	msg string
	err error
}

func (e rewordedError) Error() string { return e.msg }
func (e rewordedError) Unwrap() error { return e.err }

// multiError joins errors on one line, which a status field needs (unlike
// errors.Join, which uses newlines).
type multiError []error

func (m multiError) Error() string {
	s := make([]string, len(m))
	for i, err := range m {
		s[i] = err.Error()
	}
	return strings.Join(s, "; ")
}

func (m multiError) Unwrap() []error { return m }

func joinErrors(errs []error) error {
	switch len(errs) {
	case 0:
		return errors.New("no address to connect to")
	case 1:
		return errs[0]
	}
	return multiError(errs)
}
