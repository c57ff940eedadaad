package solvers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/libdns/libdns"
	"github.com/mholt/acmez/v3/acme"
	"github.com/miekg/dns"
	"go.uber.org/zap"
)

// DNS-01 defaults.
const (
	// DefaultPropagationTimeout bounds how long the propagation check may
	// keep failing, as in the stock acme issuer.
	DefaultPropagationTimeout = 2 * time.Minute

	// DefaultPropagationInterval is the wait between failed propagation
	// checks. cert-manager waits 10 s and certmagic 2 s; a check is a few
	// small queries to a handful of servers, so certflow checks every
	// second: a record that is visible costs at most a second more.
	DefaultPropagationInterval = time.Second

	// defaultDNSQueryTimeout bounds one DNS exchange.
	defaultDNSQueryTimeout = 3 * time.Second

	// maxCNAMEHops bounds the CNAME chain the self-check follows.
	maxCNAMEHops = 8

	// maxNameservers bounds how many authoritative servers one check asks.
	maxNameservers = 16

	// maxSeenChallenges bounds the memory of which servers have shown a
	// challenge's value (for the "vanished" diagnosis).
	maxSeenChallenges = 4096
)

// DNS01Config configures a DNS-01 solver: the provider that writes the TXT
// records and how their propagation is checked. The names mirror the stock
// acme issuer's challenges.dns settings.
type DNS01Config struct {
	// Provider adds and deletes the TXT records: a caddy-dns module (any
	// libdns RecordAppender and RecordDeleter). Required.
	Provider certmagic.DNSProvider

	// TTL of the TXT records. Zero leaves it to the provider.
	TTL time.Duration

	// PropagationDelay is a fixed wait after presenting, before the first
	// propagation check (or before accepting when the check is skipped).
	PropagationDelay time.Duration

	// PropagationTimeout bounds how long the propagation check may keep
	// failing. Negative (-1) skips the check. Zero means 2m.
	PropagationTimeout time.Duration

	// Resolvers, when set, are the DNS servers (host or host:port) the
	// propagation check asks instead of the zone's authoritative
	// nameservers: each of them must return our value. They are also used
	// to find the zone. Empty means: find the zone and its authoritative
	// nameservers through the system's resolvers (/etc/resolv.conf), and
	// ask each nameserver.
	Resolvers []string

	// OverrideDomain, when set, is the name the TXT record is written at,
	// instead of _acme-challenge.<name> (for a delegated challenge, where
	// _acme-challenge.<name> is a CNAME to it).
	OverrideDomain string

	// Serialize makes the record name an exclusion key, so challenges
	// writing the same record (a wildcard and its apex) take turns, for a
	// provider whose AppendRecords replaces existing values.
	Serialize bool

	// Interval between failed propagation checks. Zero means 1s.
	Interval time.Duration

	// AttemptTimeout bounds one propagation check (all its queries).
	// Zero means 10s.
	AttemptTimeout time.Duration

	// Logger, if set, receives debug logs of records added and deleted.
	Logger *zap.Logger
}

// DNS01 solves dns-01 challenges through a libdns provider. What it added is
// returned by Present as a memo (the zone and the record as the provider
// returned it) that the engine persists, so CleanUp deletes exactly that
// record, in this process or in another one after a restart.
type DNS01 struct {
	cfg       DNS01Config
	resolvers []string // cfg.Resolvers as host:port
	logger    *zap.Logger

	// Test-only hooks (unexported, set by tests of this package).
	//
	// systemResolvers replaces the servers of /etc/resolv.conf.
	systemResolvers []string
	// nameserverPorts maps an authoritative nameserver's host name
	// (lower case, fully qualified) to the port it is asked on: NS records
	// carry no port, and test servers cannot listen on 53.
	nameserverPorts map[string]int
	// queryTimeout replaces defaultDNSQueryTimeout.
	queryTimeout time.Duration

	mu   sync.Mutex
	seen map[string]map[string]bool // record|value → servers that showed it
}

var (
	_ Solver         = (*DNS01)(nil)
	_ Planner        = (*DNS01)(nil)
	_ ExclusionKeyer = (*DNS01)(nil)
	_ SelfCheckTuner = (*DNS01)(nil)
)

// NewDNS01 returns a DNS-01 solver for cfg.
func NewDNS01(cfg DNS01Config) *DNS01 {
	s := &DNS01{cfg: cfg, logger: cfg.Logger, seen: map[string]map[string]bool{}}
	if s.logger == nil {
		s.logger = zap.NewNop()
	}
	for _, r := range cfg.Resolvers {
		if a := resolverAddr(r); a != "" {
			s.resolvers = append(s.resolvers, a)
		}
	}
	return s
}

// dnsMemo is what Present returns for the engine to persist: the zone and
// the record as the provider returned it. It holds nothing secret: the
// record's value is published in the DNS anyway.
//
// A plan (see Plan) is a memo written before Present: it has no zone (the
// zone is looked up when it is needed) and its record's name is fully
// qualified.
type dnsMemo struct {
	Zone    string     `json:"zone,omitempty"`
	Record  memoRecord `json:"record"`
	Planned bool       `json:"planned,omitempty"`
}

type memoRecord struct {
	Name string `json:"name"`
	Type string `json:"type"`
	Data string `json:"data"`
	TTL  string `json:"ttl,omitempty"` // a Go duration, e.g. "1m0s"
}

func (m memoRecord) record() (libdns.Record, error) {
	var ttl time.Duration
	if m.TTL != "" {
		var err error
		if ttl, err = time.ParseDuration(m.TTL); err != nil {
			return nil, fmt.Errorf("invalid ttl %q: %w", m.TTL, err)
		}
	}
	if m.Type == "TXT" {
		return libdns.TXT{Name: m.Name, TTL: ttl, Text: m.Data}, nil
	}
	return libdns.RR{Name: m.Name, TTL: ttl, Type: m.Type, Data: m.Data}, nil
}

func memoOf(rr libdns.RR) memoRecord {
	m := memoRecord{Name: rr.Name, Type: rr.Type, Data: rr.Data}
	if rr.TTL != 0 {
		m.TTL = rr.TTL.String()
	}
	return m
}

// recordName returns the fully qualified, lower-case name of the TXT
// record for chal: the override domain, else _acme-challenge.<name>.
func (s *DNS01) recordName(chal acme.Challenge) (string, error) {
	if s.cfg.OverrideDomain != "" {
		name := strings.ToLower(strings.TrimSuffix(s.cfg.OverrideDomain, "."))
		if !isHostname(name) {
			return "", fmt.Errorf("invalid override domain %q", s.cfg.OverrideDomain)
		}
		return dns.Fqdn(name), nil
	}
	if chal.Identifier.Type != "dns" && chal.Identifier.Type != "" {
		return "", fmt.Errorf("a %s identifier cannot be validated with dns-01", chal.Identifier.Type)
	}
	name := strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(chal.Identifier.Value, "*."), "."))
	if !isHostname(name) {
		return "", fmt.Errorf("invalid dns identifier %q", chal.Identifier.Value)
	}
	return dns.Fqdn("_acme-challenge." + name), nil
}

// ExclusionKey returns the TXT record's name when serialize is on, so that
// challenges writing the same record take turns; otherwise "".
func (s *DNS01) ExclusionKey(chal acme.Challenge) string {
	if !s.cfg.Serialize {
		return ""
	}
	name, err := s.recordName(chal)
	if err != nil {
		return ""
	}
	return "dns-01:" + name
}

// SelfCheckTuning returns the propagation schedule: propagation_delay,
// propagation_timeout (-1 skips the check) and a 1 s interval.
func (s *DNS01) SelfCheckTuning() SelfCheckTuning {
	t := SelfCheckTuning{
		Delay:    max(s.cfg.PropagationDelay, 0),
		Interval: s.cfg.Interval,
		Timeout:  s.cfg.PropagationTimeout,
	}
	if t.Interval <= 0 {
		t.Interval = DefaultPropagationInterval
	}
	switch {
	case t.Timeout < 0:
		t.Skip, t.Timeout = true, 0
	case t.Timeout == 0:
		t.Timeout = DefaultPropagationTimeout
	}
	return t
}

// Present adds a TXT record with the challenge's value at the record name,
// in the zone found by an SOA lookup, without touching other values of the
// record. It returns the zone and the record as the provider returned it.
// Calling it again for the same challenge adds nothing new: DNS holds a set
// of values, and a provider that refuses a duplicate is checked for the
// value already being there.
func (s *DNS01) Present(ctx context.Context, chal acme.Challenge) (json.RawMessage, error) {
	if s.cfg.Provider == nil {
		return nil, errors.New("dns-01: no DNS provider configured")
	}
	if chal.KeyAuthorization == "" {
		return nil, errors.New("dns-01: challenge has no key authorization")
	}
	fqdn, err := s.recordName(chal)
	if err != nil {
		return nil, fmt.Errorf("dns-01: %w", err)
	}
	value := chal.DNS01KeyAuthorization()
	zone, err := s.findZone(ctx, fqdn)
	if err != nil {
		return nil, fmt.Errorf("dns-01: finding the zone of %s: %w", fqdn, err)
	}
	want := libdns.TXT{Name: libdns.RelativeName(fqdn, zone), TTL: s.cfg.TTL, Text: value}

	got, err := s.cfg.Provider.AppendRecords(ctx, zone, []libdns.Record{want})
	if err != nil {
		existing, ok := s.findExisting(ctx, zone, want)
		if !ok {
			return nil, fmt.Errorf("dns-01: adding TXT record %s in zone %s: %w", fqdn, zone, err)
		}
		s.logger.Debug("the provider refused to add a TXT record that is already there",
			zap.String("record", fqdn), zap.Error(err))
		got = []libdns.Record{existing}
	}
	rr := pickRecord(got, want.RR())
	memo, err := json.Marshal(dnsMemo{Zone: zone, Record: memoOf(rr)})
	if err != nil {
		return nil, fmt.Errorf("dns-01: encoding what was presented: %w", err)
	}
	s.logger.Debug("added TXT record", zap.String("zone", zone), zap.String("name", rr.Name),
		zap.Duration("ttl", rr.TTL))
	return memo, nil
}

// pickRecord returns, from what the provider returned, the record that is
// ours (a TXT with our value), or the one we asked for if it returned none
// recognisable.
func pickRecord(got []libdns.Record, want libdns.RR) libdns.RR {
	for _, r := range got {
		if r == nil {
			continue
		}
		rr := r.RR()
		if strings.EqualFold(rr.Type, "TXT") && strings.Trim(rr.Data, `"`) == want.Data {
			if rr.Name == "" {
				rr.Name = want.Name
			}
			rr.Type = "TXT"
			return rr
		}
	}
	return want
}

// findExisting looks, when the provider can list records, for our exact
// value at the record name.
func (s *DNS01) findExisting(ctx context.Context, zone string, want libdns.TXT) (libdns.Record, bool) {
	getter, ok := s.cfg.Provider.(libdns.RecordGetter)
	if !ok {
		return nil, false
	}
	recs, err := getter.GetRecords(ctx, zone)
	if err != nil {
		return nil, false
	}
	wantName := strings.ToLower(libdns.AbsoluteName(want.Name, zone))
	for _, r := range recs {
		rr := r.RR()
		if strings.EqualFold(rr.Type, "TXT") && strings.Trim(rr.Data, `"`) == want.Text &&
			strings.ToLower(dns.Fqdn(libdns.AbsoluteName(rr.Name, zone))) == dns.Fqdn(wantName) {
			return r, true
		}
	}
	return nil, false
}

// Plan returns what Present will add for chal, before it is added: the
// record's fully qualified name and our value, without the zone, which
// Present and CleanUp look up. The engine stores it first, so that if the
// process dies (or the write of Present's memo fails) after the record was
// added, CleanUp can still delete it, from any process. It needs no network.
func (s *DNS01) Plan(chal acme.Challenge) (json.RawMessage, error) {
	if chal.KeyAuthorization == "" {
		return nil, errors.New("dns-01: challenge has no key authorization")
	}
	fqdn, err := s.recordName(chal)
	if err != nil {
		return nil, fmt.Errorf("dns-01: %w", err)
	}
	// no TTL: a deletion without one matches whatever TTL the provider set
	plan, err := json.Marshal(dnsMemo{Planned: true, Record: memoRecord{Name: fqdn, Type: "TXT", Data: chal.DNS01KeyAuthorization()}})
	if err != nil {
		return nil, fmt.Errorf("dns-01: encoding the plan: %w", err)
	}
	return plan, nil
}

// CleanUp deletes exactly the record Present added, as recorded in memo, so
// it works after a restart and on another node. Other values of the same
// record (another challenge's, another writer's) are left alone. A nil memo
// means Present never returned: there is nothing of ours to delete. A plan
// (Plan) is accepted in place of Present's memo: its zone is found the way
// Present found it, and only our value is deleted from the record (nothing,
// if Present never added it).
func (s *DNS01) CleanUp(ctx context.Context, chal acme.Challenge, memo json.RawMessage) error {
	s.forget(chal)
	if len(memo) == 0 || string(memo) == "null" {
		return nil
	}
	if s.cfg.Provider == nil {
		return errors.New("dns-01: no DNS provider configured")
	}
	var m dnsMemo
	if err := json.Unmarshal(memo, &m); err != nil {
		return fmt.Errorf("dns-01: decoding what was presented: %w", err)
	}
	if m.Planned {
		if err := checkPlan(m, chal); err != nil {
			return fmt.Errorf("dns-01: refusing to clean up: %w", err)
		}
		zone, err := s.findZone(ctx, m.Record.Name)
		if err != nil {
			return fmt.Errorf("dns-01: finding the zone of %s to clean up: %w", m.Record.Name, err)
		}
		m.Zone, m.Record.Name = zone, libdns.RelativeName(m.Record.Name, zone)
	}
	rec, err := checkMemo(m, chal)
	if err != nil {
		return fmt.Errorf("dns-01: refusing to clean up: %w", err)
	}
	if _, err := s.cfg.Provider.DeleteRecords(ctx, m.Zone, []libdns.Record{rec}); err != nil {
		return fmt.Errorf("dns-01: deleting TXT record %s in zone %s: %w",
			libdns.AbsoluteName(m.Record.Name, m.Zone), m.Zone, err)
	}
	s.logger.Debug("deleted TXT record", zap.String("zone", m.Zone), zap.String("name", m.Record.Name))
	return nil
}

// checkMemo makes sure a memo can only delete one TXT value, and ours when
// the challenge's value is known: libdns deletes every value of a record
// whose data is empty, and every record of a name whose type is empty.
func checkMemo(m dnsMemo, chal acme.Challenge) (libdns.Record, error) {
	r := m.Record
	switch {
	case m.Zone == "":
		return nil, errors.New("the stored record has no zone")
	case r.Name == "":
		return nil, errors.New("the stored record has no name")
	case r.Type != "TXT":
		return nil, fmt.Errorf("the stored record is of type %q, not TXT", r.Type)
	case r.Data == "":
		return nil, errors.New("the stored record has no value (deleting it would delete every value)")
	}
	if chal.KeyAuthorization != "" && strings.Trim(r.Data, `"`) != chal.DNS01KeyAuthorization() {
		return nil, errors.New("the stored record's value is not this challenge's")
	}
	return r.record()
}

// checkPlan makes sure a plan names one fully qualified TXT record and a
// value; checkMemo then checks the value against the challenge's.
func checkPlan(m dnsMemo, chal acme.Challenge) error {
	r := m.Record
	name := strings.TrimSuffix(r.Name, ".")
	switch {
	case m.Zone != "":
		return errors.New("the stored plan names a zone")
	case !strings.HasSuffix(r.Name, ".") || !isHostname(strings.ToLower(name)):
		return fmt.Errorf("the stored plan's record name %q is not a fully qualified name", r.Name)
	case r.Type != "TXT":
		return fmt.Errorf("the stored plan's record is of type %q, not TXT", r.Type)
	case r.Data == "":
		return errors.New("the stored plan's record has no value (deleting it would delete every value)")
	}
	return nil
}

// seenKey identifies a challenge's value at its record.
func seenKey(fqdn, value string) string { return fqdn + "|" + value }

// forget drops what SelfCheck remembered of chal.
func (s *DNS01) forget(chal acme.Challenge) {
	name, err := s.recordName(chal)
	if chal.KeyAuthorization == "" || err != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.seen, seenKey(name, chal.DNS01KeyAuthorization()))
}

// noteSeen records the servers that showed our value and returns those
// that had shown it before but no longer do.
func (s *DNS01) noteSeen(key string, have, lack []string) (vanished map[string]bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := s.seen[key]
	for _, srv := range lack {
		if seen[srv] {
			if vanished == nil {
				vanished = map[string]bool{}
			}
			vanished[srv] = true
		}
	}
	if len(have) > 0 {
		if seen == nil {
			if len(s.seen) >= maxSeenChallenges {
				clear(s.seen) // a diagnosis aid only: forget rather than grow
			}
			seen = map[string]bool{}
			s.seen[key] = seen
		}
		for _, srv := range have {
			seen[srv] = true
		}
	}
	return vanished
}
