package solvers

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mholt/acmez/v3/acme"
	"github.com/miekg/dns"
)

// resolvConf is where the system's resolvers are read from.
const resolvConf = "/etc/resolv.conf"

// nameserver is one server the propagation check asks.
type nameserver struct {
	// label names the server in reasons: its address, or for an
	// authoritative nameserver its host name and address.
	label string
	// addrs are tried in order until one answers.
	addrs []string
	// err, if set, says why the server cannot be asked at all.
	err error
}

// txtAnswer is one server's answer to the TXT query.
type txtAnswer struct {
	values []string
	nx     bool // NXDOMAIN
	err    error
}

// SelfCheck checks that the TXT record carries our value everywhere the CA
// may look. With resolvers configured it asks each of them; otherwise it
// follows a CNAME on the record name, finds the zone of the target and its
// authoritative nameservers through the system's resolvers, and asks each
// nameserver directly (no recursion, no cache). It passes only when every
// server returns our value; the reason names the servers that did not, and
// says so when our value vanished from a server that had shown it (another
// writer replaced the record).
func (s *DNS01) SelfCheck(ctx context.Context, chal acme.Challenge) error {
	fqdn, err := s.recordName(chal)
	if err != nil {
		return fmt.Errorf("dns-01 self-check: %w", err)
	}
	if chal.KeyAuthorization == "" {
		return errors.New("dns-01 self-check: challenge has no key authorization")
	}
	want := chal.DNS01KeyAuthorization()
	ctx, cancel := context.WithTimeout(ctx, s.attemptTimeout())
	defer cancel()

	target, recursive := fqdn, true
	var servers []nameserver
	if len(s.resolvers) > 0 {
		for _, r := range s.resolvers {
			servers = append(servers, nameserver{label: r, addrs: []string{r}})
		}
	} else {
		recursive = false
		if target, err = s.followCNAME(ctx, fqdn); err != nil {
			return fmt.Errorf("dns-01 self-check: %s TXT: following a CNAME: %w", fqdn, err)
		}
		if servers, err = s.authoritativeNameservers(ctx, target); err != nil {
			return fmt.Errorf("dns-01 self-check: %s TXT: %w", describeName(fqdn, target), err)
		}
	}

	answers := make([]txtAnswer, len(servers))
	var wg sync.WaitGroup
	for i, srv := range servers {
		wg.Go(func() { answers[i] = s.askTXT(ctx, srv, target, recursive) })
	}
	wg.Wait()

	var have, lack []string
	var missing, failed []string
	details := map[string]string{}
	for i, srv := range servers {
		a := answers[i]
		switch {
		case a.err != nil:
			failed = append(failed, fmt.Sprintf("%s (%s)", srv.label, dnsErrText(a.err)))
		case slices.Contains(a.values, want):
			have = append(have, srv.label)
		default:
			lack = append(lack, srv.label)
			details[srv.label] = a.detail()
		}
	}
	vanished := s.noteSeen(seenKey(fqdn, want), have, lack)
	if len(lack) == 0 && len(failed) == 0 {
		return nil
	}

	var gone []string
	for _, label := range lack {
		if vanished[label] {
			gone = append(gone, fmt.Sprintf("%s (%s)", label, details[label]))
		} else {
			missing = append(missing, fmt.Sprintf("%s (%s)", label, details[label]))
		}
	}
	var parts []string
	if len(gone) > 0 {
		parts = append(parts, "our value vanished after it had been seen at "+strings.Join(gone, ", ")+
			": another writer replaced the record (dns_serialize makes challenges for one record take turns)")
	}
	if len(missing) > 0 {
		parts = append(parts, "not yet visible at "+strings.Join(missing, ", "))
	}
	if len(failed) > 0 {
		parts = append(parts, "could not be checked at "+strings.Join(failed, ", "))
	}
	msg := fmt.Sprintf("dns-01 self-check: %s TXT %s", describeName(fqdn, target), strings.Join(parts, "; "))
	if len(have) > 0 {
		msg += fmt.Sprintf(" (visible at %d of %d servers)", len(have), len(servers))
	}
	return errors.New(msg)
}

// detail says what a server answered instead of our value.
func (a txtAnswer) detail() string {
	switch n := len(a.values); {
	case n == 1:
		return "has 1 other value"
	case n > 1:
		return fmt.Sprintf("has %d other values", n)
	case a.nx:
		return "no such name"
	default:
		return "no TXT record"
	}
}

func describeName(fqdn, target string) string {
	if target == fqdn {
		return fqdn
	}
	return fmt.Sprintf("%s (CNAME to %s)", fqdn, target)
}

func (s *DNS01) attemptTimeout() time.Duration {
	if s.cfg.AttemptTimeout > 0 {
		return s.cfg.AttemptTimeout
	}
	return defaultAttemptTimeout
}

func (s *DNS01) dnsQueryTimeout() time.Duration {
	if s.queryTimeout > 0 {
		return s.queryTimeout
	}
	return defaultDNSQueryTimeout
}

// askTXT asks one server for the TXT values of name, following a CNAME
// the server returns by asking it for the target.
func (s *DNS01) askTXT(ctx context.Context, srv nameserver, name string, recursive bool) txtAnswer {
	if srv.err != nil {
		return txtAnswer{err: srv.err}
	}
	var errs []error
	for _, addr := range srv.addrs {
		a := s.txtAt(ctx, addr, name, recursive)
		if a.err == nil {
			return a
		}
		errs = append(errs, a.err)
		if ctx.Err() != nil {
			break
		}
	}
	if len(errs) == 0 {
		return txtAnswer{err: errors.New("no address")}
	}
	return txtAnswer{err: errs[len(errs)-1]}
}

func (s *DNS01) txtAt(ctx context.Context, addr, name string, recursive bool) txtAnswer {
	current := name
	for range maxCNAMEHops {
		resp, err := s.exchange(ctx, addr, newQuery(current, dns.TypeTXT, recursive))
		if err != nil {
			return txtAnswer{err: err}
		}
		switch resp.Rcode {
		case dns.RcodeSuccess:
		case dns.RcodeNameError:
			return txtAnswer{nx: true}
		default:
			return txtAnswer{err: fmt.Errorf("answered %s", dns.RcodeToString[resp.Rcode])}
		}
		final, values := followAnswer(resp, current)
		if len(values) > 0 || final == current {
			return txtAnswer{values: values}
		}
		current = final // a CNAME to a name the server did not answer for
	}
	return txtAnswer{err: fmt.Errorf("CNAME chain from %s longer than %d", name, maxCNAMEHops)}
}

// followAnswer follows the CNAME chain from name within resp's answer and
// returns the final name and its TXT values.
func followAnswer(resp *dns.Msg, name string) (string, []string) {
	current := name
	for range maxCNAMEHops {
		next := ""
		for _, rr := range resp.Answer {
			if c, ok := rr.(*dns.CNAME); ok && strings.EqualFold(c.Hdr.Name, current) {
				next = strings.ToLower(dns.Fqdn(c.Target))
				break
			}
		}
		if next == "" || next == current {
			break
		}
		current = next
	}
	var values []string
	for _, rr := range resp.Answer {
		if t, ok := rr.(*dns.TXT); ok && strings.EqualFold(t.Hdr.Name, current) {
			values = append(values, strings.Join(t.Txt, ""))
		}
	}
	return current, values
}

// followCNAME returns the name the CA will end up reading the TXT record
// of: fqdn, or the end of the CNAME chain on it, resolved through the
// lookup servers.
func (s *DNS01) followCNAME(ctx context.Context, fqdn string) (string, error) {
	servers, err := s.lookupServers()
	if err != nil {
		return "", err
	}
	current := fqdn
	for range maxCNAMEHops {
		resp, err := s.queryAny(ctx, servers, current, dns.TypeTXT, true)
		if err != nil {
			return "", err
		}
		final, values := followAnswer(resp, current)
		if len(values) > 0 || final == current {
			return final, nil
		}
		current = final
	}
	return "", fmt.Errorf("CNAME chain from %s longer than %d", fqdn, maxCNAMEHops)
}

// findZone returns the zone (lower case, fully qualified) that holds fqdn:
// the closest name upwards with an SOA record, as the lookup servers see it.
func (s *DNS01) findZone(ctx context.Context, fqdn string) (string, error) {
	servers, err := s.lookupServers()
	if err != nil {
		return "", err
	}
	fqdn = strings.ToLower(dns.Fqdn(fqdn))
	for _, off := range dns.Split(fqdn) {
		domain := fqdn[off:]
		resp, err := s.queryAny(ctx, servers, domain, dns.TypeSOA, true)
		if err != nil {
			return "", err
		}
		switch resp.Rcode {
		case dns.RcodeSuccess:
			cname := false
			for _, rr := range resp.Answer {
				switch rr := rr.(type) {
				case *dns.SOA:
					if strings.EqualFold(rr.Hdr.Name, domain) {
						return domain, nil
					}
				case *dns.CNAME:
					cname = cname || strings.EqualFold(rr.Hdr.Name, domain)
				}
			}
			if cname {
				continue // a zone's apex cannot be a CNAME
			}
			if zone := authoritySOA(resp, domain); zone != "" {
				return zone, nil // NODATA: the SOA of the zone comes along
			}
		case dns.RcodeNameError:
			if zone := authoritySOA(resp, domain); zone != "" {
				return zone, nil
			}
		default:
			return "", fmt.Errorf("%s SOA: answered %s", domain, dns.RcodeToString[resp.Rcode])
		}
	}
	return "", fmt.Errorf("no SOA record for %s or any name above it", fqdn)
}

// authoritySOA returns the owner of an SOA record in the authority section
// of a negative answer for name, if it is name or above it.
func authoritySOA(resp *dns.Msg, name string) string {
	for _, rr := range resp.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			zone := strings.ToLower(dns.Fqdn(soa.Hdr.Name))
			if dns.IsSubDomain(zone, name) {
				return zone
			}
		}
	}
	return ""
}

// authoritativeNameservers finds the zone of name and its nameservers,
// with their addresses (glue, else A/AAAA lookups), through the lookup
// servers.
func (s *DNS01) authoritativeNameservers(ctx context.Context, name string) ([]nameserver, error) {
	zone, err := s.findZone(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("finding the zone: %w", err)
	}
	servers, err := s.lookupServers()
	if err != nil {
		return nil, err
	}
	resp, err := s.queryAny(ctx, servers, zone, dns.TypeNS, true)
	if err != nil {
		return nil, fmt.Errorf("looking up the nameservers of %s: %w", zone, err)
	}
	if resp.Rcode != dns.RcodeSuccess {
		return nil, fmt.Errorf("looking up the nameservers of %s: answered %s", zone, dns.RcodeToString[resp.Rcode])
	}
	var hosts []string
	for _, rr := range resp.Answer {
		if ns, ok := rr.(*dns.NS); ok && strings.EqualFold(ns.Hdr.Name, zone) {
			hosts = append(hosts, strings.ToLower(dns.Fqdn(ns.Ns)))
		}
	}
	slices.Sort(hosts)
	hosts = slices.Compact(hosts)
	if len(hosts) == 0 {
		return nil, fmt.Errorf("zone %s has no NS records", zone)
	}
	if len(hosts) > maxNameservers {
		hosts = hosts[:maxNameservers]
	}
	glue := map[string][]net.IP{}
	for _, rr := range resp.Extra {
		switch rr := rr.(type) {
		case *dns.A:
			glue[strings.ToLower(rr.Hdr.Name)] = append(glue[strings.ToLower(rr.Hdr.Name)], rr.A)
		case *dns.AAAA:
			glue[strings.ToLower(rr.Hdr.Name)] = append(glue[strings.ToLower(rr.Hdr.Name)], rr.AAAA)
		}
	}

	out := make([]nameserver, len(hosts))
	var wg sync.WaitGroup
	for i, host := range hosts {
		wg.Go(func() {
			ips := glue[host]
			var err error
			if len(ips) == 0 {
				ips, err = s.lookupAddrs(ctx, servers, host)
			}
			out[i] = s.nameserverAt(host, ips, err)
		})
	}
	wg.Wait()
	return out, nil
}

// nameserverAt builds the nameserver entry of host: its addresses with the
// DNS port, IPv4 first.
func (s *DNS01) nameserverAt(host string, ips []net.IP, err error) nameserver {
	port := 53
	if p, ok := s.nameserverPorts[host]; ok {
		port = p
	}
	label := strings.TrimSuffix(host, ".")
	if err != nil {
		return nameserver{label: label, err: err}
	}
	slices.SortStableFunc(ips, func(a, b net.IP) int {
		a4, b4 := a.To4() != nil, b.To4() != nil
		switch {
		case a4 == b4:
			return 0
		case a4:
			return -1
		default:
			return 1
		}
	})
	ns := nameserver{label: label}
	for _, ip := range ips {
		ns.addrs = append(ns.addrs, net.JoinHostPort(ip.String(), strconv.Itoa(port)))
	}
	if len(ns.addrs) == 0 {
		ns.err = fmt.Errorf("no address for %s", label)
		return ns
	}
	ns.label = fmt.Sprintf("%s (%s)", label, ns.addrs[0])
	return ns
}

// lookupAddrs resolves host's A and AAAA records through servers.
func (s *DNS01) lookupAddrs(ctx context.Context, servers []string, host string) ([]net.IP, error) {
	var ips []net.IP
	var errs []error
	for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA} {
		resp, err := s.queryAny(ctx, servers, host, qtype, true)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, rr := range resp.Answer {
			switch rr := rr.(type) {
			case *dns.A:
				ips = append(ips, rr.A)
			case *dns.AAAA:
				ips = append(ips, rr.AAAA)
			}
		}
	}
	if len(ips) == 0 {
		if len(errs) > 0 {
			return nil, fmt.Errorf("resolving %s: %w", strings.TrimSuffix(host, "."), errs[0])
		}
		return nil, fmt.Errorf("no address for %s", strings.TrimSuffix(host, "."))
	}
	return ips, nil
}

// lookupServers are the servers zones and nameservers are looked up with:
// the configured resolvers, else the system's.
func (s *DNS01) lookupServers() ([]string, error) {
	if len(s.resolvers) > 0 {
		return s.resolvers, nil
	}
	if len(s.systemResolvers) > 0 {
		return s.systemResolvers, nil
	}
	conf, err := dns.ClientConfigFromFile(resolvConf)
	if err != nil {
		return nil, fmt.Errorf("no resolvers configured, and reading %s: %w", resolvConf, err)
	}
	var out []string
	for _, srv := range conf.Servers {
		out = append(out, net.JoinHostPort(srv, conf.Port))
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no resolvers configured and none in %s", resolvConf)
	}
	return out, nil
}

// queryAny sends the query to each server in turn until one answers.
func (s *DNS01) queryAny(ctx context.Context, servers []string, name string, qtype uint16, recursive bool) (*dns.Msg, error) {
	var errs []error
	for _, srv := range servers {
		resp, err := s.exchange(ctx, srv, newQuery(name, qtype, recursive))
		if err == nil {
			return resp, nil
		}
		errs = append(errs, fmt.Errorf("%s %s at %s: %s", name, dns.TypeToString[qtype], srv, dnsErrText(err)))
		if ctx.Err() != nil {
			break
		}
	}
	if len(errs) == 0 {
		return nil, errors.New("no DNS server to ask")
	}
	return nil, joinErrors(errs)
}

func newQuery(name string, qtype uint16, recursive bool) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	m.RecursionDesired = recursive
	m.SetEdns0(1232, false)
	return m
}

// exchange sends m to addr over UDP, and again over TCP if the answer was
// truncated or UDP timed out.
func (s *DNS01) exchange(ctx context.Context, addr string, m *dns.Msg) (*dns.Msg, error) {
	udp := &dns.Client{Net: "udp", Timeout: s.dnsQueryTimeout()}
	resp, _, err := udp.ExchangeContext(ctx, m, addr)
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if (err == nil && resp.Truncated) || isTimeout(err) {
		tcp := &dns.Client{Net: "tcp", Timeout: s.dnsQueryTimeout()}
		resp, _, err = tcp.ExchangeContext(ctx, m, addr)
	}
	if err != nil {
		return nil, err
	}
	return resp, nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return err != nil && (errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()))
}

// dnsErrText returns why a query failed, without socket addresses (which
// change at every attempt).
func dnsErrText(err error) string {
	switch {
	case isTimeout(err):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	}
	var op *net.OpError
	if errors.As(err, &op) {
		return op.Err.Error()
	}
	return err.Error()
}
