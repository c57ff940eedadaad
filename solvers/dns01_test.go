package solvers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libdns/libdns"
	"github.com/mholt/acmez/v3/acme"
	"github.com/miekg/dns"
)

// fakeZoneServer is a small DNS server on 127.0.0.1 (UDP) answering from
// its records like an authoritative server: the records of the name and
// type asked, a CNAME on the name (with the target's records when it has
// them), NODATA or NXDOMAIN with the SOA of the enclosing zone, REFUSED
// outside its zones. It logs the questions it gets.
type fakeZoneServer struct {
	addr string
	port int

	mu      sync.Mutex
	records []dns.RR
	asked   []askedQuestion
}

type askedQuestion struct {
	name  string
	qtype uint16
	rd    bool
}

func startZoneServer(t *testing.T, records ...string) *fakeZoneServer {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeZoneServer{addr: pc.LocalAddr().String(), port: pc.LocalAddr().(*net.UDPAddr).Port}
	for _, r := range records {
		f.add(t, r)
	}
	started := make(chan struct{})
	srv := &dns.Server{
		PacketConn:        pc,
		NotifyStartedFunc: func() { close(started) },
		Handler:           dns.HandlerFunc(f.serve),
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.ActivateAndServe()
	}()
	select {
	case <-started:
	case <-time.After(5 * time.Second):
		t.Fatal("fake DNS server did not start")
	}
	t.Cleanup(func() {
		_ = srv.Shutdown()
		<-done
	})
	return f
}

// add adds a record in zone-file syntax, e.g. "a.x.test. 60 IN TXT \"v\"".
func (f *fakeZoneServer) add(t *testing.T, record string) {
	t.Helper()
	rr, err := dns.NewRR(record)
	if err != nil {
		t.Fatalf("bad test record %q: %v", record, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.records = append(f.records, rr)
}

// setTXT replaces the TXT values of name.
func (f *fakeZoneServer) setTXT(t *testing.T, name string, values ...string) {
	t.Helper()
	f.mu.Lock()
	f.records = slices.DeleteFunc(f.records, func(rr dns.RR) bool {
		return rr.Header().Rrtype == dns.TypeTXT && strings.EqualFold(rr.Header().Name, dns.Fqdn(name))
	})
	f.mu.Unlock()
	for _, v := range values {
		f.add(t, fmt.Sprintf("%s 1 IN TXT %q", dns.Fqdn(name), v))
	}
}

func (f *fakeZoneServer) questions() []askedQuestion {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.asked)
}

func (f *fakeZoneServer) serve(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, q := range r.Question {
		f.asked = append(f.asked, askedQuestion{name: strings.ToLower(q.Name), qtype: q.Qtype, rd: r.RecursionDesired})
		f.answer(m, q)
	}
	_ = w.WriteMsg(m)
}

func (f *fakeZoneServer) answer(m *dns.Msg, q dns.Question) {
	var soa *dns.SOA
	for _, rr := range f.records {
		if s, ok := rr.(*dns.SOA); ok && dns.IsSubDomain(s.Hdr.Name, q.Name) &&
			(soa == nil || dns.CountLabel(s.Hdr.Name) > dns.CountLabel(soa.Hdr.Name)) {
			soa = s
		}
	}
	if soa == nil {
		m.Rcode = dns.RcodeRefused
		return
	}
	name := q.Name
	for range 8 {
		exists, cname := false, ""
		for _, rr := range f.records {
			h := rr.Header()
			if !strings.EqualFold(h.Name, name) {
				continue
			}
			exists = true
			if h.Rrtype == q.Qtype {
				m.Answer = append(m.Answer, dns.Copy(rr))
			} else if c, ok := rr.(*dns.CNAME); ok {
				cname = c.Target
				m.Answer = append(m.Answer, dns.Copy(rr))
			}
		}
		if cname == "" || q.Qtype == dns.TypeCNAME {
			if !exists && len(m.Answer) == 0 {
				m.Rcode = dns.RcodeNameError
			}
			if len(m.Answer) == 0 {
				m.Ns = append(m.Ns, dns.Copy(soa))
			}
			return
		}
		name = cname
	}
}

// memProvider is an in-memory libdns provider that keeps the contract:
// AppendRecords never changes existing records, DeleteRecords deletes only
// exact matches (empty type, TTL or data matching any).
type memProvider struct {
	mu               sync.Mutex
	zones            map[string][]libdns.RR
	refuseDuplicates bool
	appends, deletes int
}

func newMemProvider() *memProvider { return &memProvider{zones: map[string][]libdns.RR{}} }

func (p *memProvider) AppendRecords(_ context.Context, zone string, recs []libdns.Record) ([]libdns.Record, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.appends++
	var out []libdns.Record
	for _, r := range recs {
		rr := r.RR()
		if p.refuseDuplicates && slices.ContainsFunc(p.zones[zone], func(e libdns.RR) bool {
			return e.Name == rr.Name && e.Type == rr.Type && e.Data == rr.Data
		}) {
			return nil, errors.New("record already exists")
		}
		p.zones[zone] = append(p.zones[zone], rr)
		out = append(out, libdns.TXT{Name: rr.Name, TTL: rr.TTL, Text: rr.Data})
	}
	return out, nil
}

func (p *memProvider) DeleteRecords(_ context.Context, zone string, recs []libdns.Record) ([]libdns.Record, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.deletes++
	var out []libdns.Record
	for _, r := range recs {
		want := r.RR()
		p.zones[zone] = slices.DeleteFunc(p.zones[zone], func(e libdns.RR) bool {
			match := e.Name == want.Name && (want.Type == "" || e.Type == want.Type) &&
				(want.TTL == 0 || e.TTL == want.TTL) && (want.Data == "" || e.Data == want.Data)
			if match {
				out = append(out, e)
			}
			return match
		})
	}
	return out, nil
}

func (p *memProvider) GetRecords(_ context.Context, zone string) ([]libdns.Record, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []libdns.Record
	for _, rr := range p.zones[zone] {
		out = append(out, rr)
	}
	return out, nil
}

func (p *memProvider) values(zone, name string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, rr := range p.zones[zone] {
		if rr.Name == name && rr.Type == "TXT" {
			out = append(out, rr.Data)
		}
	}
	slices.Sort(out)
	return out
}

const testSOA = " 60 IN SOA ns1.%[1]s hostmaster.%[1]s 1 60 60 600 1"

func soaOf(zone string) string { return fmt.Sprintf(zone+testSOA, zone) }

func dnsChallenge(t *testing.T, name string) acme.Challenge {
	t.Helper()
	return newChallenge(t, acme.ChallengeTypeDNS01, "dns", name)
}

// TestDNS01AuthoritativeDiscovery: without resolvers, the check follows the
// CNAME on the record name, finds the target's zone and its nameservers
// through the system's resolvers, and asks each nameserver directly (no
// recursion) for the target's TXT; a lagging nameserver is named in the
// reason, and the check passes once it has the value.
func TestDNS01AuthoritativeDiscovery(t *testing.T) {
	chal := dnsChallenge(t, "a.x.test")
	want := chal.DNS01KeyAuthorization()
	const target = "_acme-challenge.a.delegate.y.test."

	// the system's resolver: knows the CNAME, the zones, their NS and the
	// NS addresses; it also has a stale TXT for the target, which the
	// check must not believe
	recursive := startZoneServer(t,
		soaOf("x.test."), soaOf("y.test."),
		"_acme-challenge.a.x.test. 60 IN CNAME "+target,
		"y.test. 60 IN NS ns1.y.test.",
		"y.test. 60 IN NS ns2.y.test.",
		"ns1.y.test. 60 IN A 127.0.0.1",
		"ns2.y.test. 60 IN A 127.0.0.1",
		target+" 60 IN TXT \"stale-cached-value\"",
	)
	ns1 := startZoneServer(t, soaOf("y.test."), fmt.Sprintf("%s 60 IN TXT %q", target, want))
	ns2 := startZoneServer(t, soaOf("y.test."))

	s := NewDNS01(DNS01Config{Provider: newMemProvider()})
	s.systemResolvers = []string{recursive.addr}
	s.nameserverPorts = map[string]int{"ns1.y.test.": ns1.port, "ns2.y.test.": ns2.port}

	err := s.SelfCheck(context.Background(), chal)
	wantErr(t, err, fmt.Sprintf("dns-01 self-check: _acme-challenge.a.x.test. (CNAME to %s) TXT not yet visible at ns2.y.test (127.0.0.1:%d) (no such name) (visible at 1 of 2 servers)", target, ns2.port))
	if strings.Contains(err.Error(), "ns1.y.test") {
		t.Errorf("reason names ns1, which has the value: %v", err)
	}
	assertNoSecret(t, err, chal)

	for i, ns := range []*fakeZoneServer{ns1, ns2} {
		qs := ns.questions()
		if len(qs) == 0 {
			t.Fatalf("ns%d was never asked", i+1)
		}
		for _, q := range qs {
			if q.name != target || q.qtype != dns.TypeTXT || q.rd {
				t.Errorf("ns%d was asked %+v, want a non-recursive TXT query for %s", i+1, q, target)
			}
		}
	}

	ns2.setTXT(t, target, "another writer's value", want)
	if err := s.SelfCheck(context.Background(), chal); err != nil {
		t.Fatalf("self-check with the value on both nameservers: %v", err)
	}
}

// TestDNS01Resolvers: with resolvers set, each of them is asked, and one
// that lags is named; a value that vanishes after it was seen is reported
// as such.
func TestDNS01Resolvers(t *testing.T) {
	chal := dnsChallenge(t, "x.test")
	want := chal.DNS01KeyAuthorization()
	const record = "_acme-challenge.x.test."
	a := startZoneServer(t, soaOf("x.test."), fmt.Sprintf("%s 60 IN TXT %q", record, want))
	b := startZoneServer(t, soaOf("x.test."), record+` 60 IN TXT "the wildcard's value"`)

	s := NewDNS01(DNS01Config{Provider: newMemProvider(), Resolvers: []string{a.addr, b.addr}})
	err := s.SelfCheck(context.Background(), chal)
	wantErr(t, err, fmt.Sprintf("dns-01 self-check: %s TXT not yet visible at %s (has 1 other value) (visible at 1 of 2 servers)", record, b.addr))
	for _, q := range append(a.questions(), b.questions()...) {
		if q.name != record || q.qtype != dns.TypeTXT || !q.rd {
			t.Errorf("resolver asked %+v, want a recursive TXT query for %s", q, record)
		}
	}

	b.setTXT(t, record, "the wildcard's value", want)
	if err := s.SelfCheck(context.Background(), chal); err != nil {
		t.Fatalf("self-check with the value at both resolvers: %v", err)
	}

	// a provider that breaks the AppendRecords contract: the other
	// challenge's write replaced our value
	a.setTXT(t, record, "the wildcard's value")
	b.setTXT(t, record)
	err = s.SelfCheck(context.Background(), chal)
	wantErr(t, err, "our value vanished after it had been seen at "+a.addr+" (has 1 other value), "+b.addr+" (no such name)")
	wantErr(t, err, "dns_serialize")

	// cleaning up forgets what was seen
	if err := s.CleanUp(context.Background(), chal, nil); err != nil {
		t.Fatal(err)
	}
	err = s.SelfCheck(context.Background(), chal)
	wantErr(t, err, "not yet visible at "+a.addr+" (has 1 other value), "+b.addr+" (no such name)")

	// a server that does not answer is named too
	dead := deadUDPAddr(t)
	s = NewDNS01(DNS01Config{Provider: newMemProvider(), Resolvers: []string{a.addr, dead}, AttemptTimeout: time.Second})
	a.setTXT(t, record, want)
	err = s.SelfCheck(context.Background(), chal)
	wantErr(t, err, "could not be checked at "+dead)
	if strings.Contains(err.Error(), a.addr) {
		t.Errorf("reason names %s, which has the value: %v", a.addr, err)
	}
}

// TestDNS01PresentCleanUp: Present adds our value beside the others and
// returns the zone and record; CleanUp by a fresh solver (another process)
// deletes exactly that record from the memo.
func TestDNS01PresentCleanUp(t *testing.T) {
	resolver := startZoneServer(t, soaOf("x.test."))
	prov := newMemProvider()
	prov.zones["x.test."] = []libdns.RR{{Name: "_acme-challenge", Type: "TXT", Data: "another writer", TTL: time.Hour}}

	newSolver := func() *DNS01 {
		return NewDNS01(DNS01Config{Provider: prov, TTL: time.Minute, Resolvers: []string{resolver.addr}})
	}
	apex, wildcard := dnsChallenge(t, "x.test"), dnsChallenge(t, "x.test")
	wildcard.Identifier.Value = "*.x.test" // defensive: never seen from acmez, which strips it

	s := newSolver()
	memo, err := s.Present(context.Background(), apex)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Present(context.Background(), wildcard); err != nil {
		t.Fatal(err)
	}
	if got := prov.values("x.test.", "_acme-challenge"); len(got) != 3 {
		t.Fatalf("record values %q, want the other writer's and both challenges'", got)
	}
	var m dnsMemo
	if err := json.Unmarshal(memo, &m); err != nil {
		t.Fatal(err)
	}
	wantMemo := dnsMemo{Zone: "x.test.", Record: memoRecord{Name: "_acme-challenge", Type: "TXT", Data: apex.DNS01KeyAuthorization(), TTL: "1m0s"}}
	if m != wantMemo {
		t.Errorf("memo %+v, want %+v", m, wantMemo)
	}
	if strings.Contains(string(memo), apex.KeyAuthorization) {
		t.Errorf("memo contains the key authorization: %s", memo)
	}

	// another process: a fresh solver, only the memo
	if err := newSolver().CleanUp(context.Background(), apex, memo); err != nil {
		t.Fatal(err)
	}
	got := prov.values("x.test.", "_acme-challenge")
	want := []string{"another writer", wildcard.DNS01KeyAuthorization()}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("after clean-up: %q, want %q", got, want)
	}
	// again: nothing left of ours, no error
	if err := newSolver().CleanUp(context.Background(), apex, memo); err != nil {
		t.Fatalf("second clean-up: %v", err)
	}

	// nothing presented: nothing deleted
	deletes := prov.deletes
	if err := newSolver().CleanUp(context.Background(), apex, nil); err != nil {
		t.Fatal(err)
	}
	// memos that could delete more than our value are refused
	for name, bad := range map[string]dnsMemo{
		"empty data":      {Zone: "x.test.", Record: memoRecord{Name: "_acme-challenge", Type: "TXT"}},
		"empty type":      {Zone: "x.test.", Record: memoRecord{Name: "_acme-challenge", Data: apex.DNS01KeyAuthorization()}},
		"no zone":         {Record: memoRecord{Name: "_acme-challenge", Type: "TXT", Data: apex.DNS01KeyAuthorization()}},
		"another's value": {Zone: "x.test.", Record: memoRecord{Name: "_acme-challenge", Type: "TXT", Data: "another writer"}},
		"the wildcard's":  {Zone: "x.test.", Record: memoRecord{Name: "_acme-challenge", Type: "TXT", Data: wildcard.DNS01KeyAuthorization()}},
		"unparseable ttl": {Zone: "x.test.", Record: memoRecord{Name: "_acme-challenge", Type: "TXT", Data: apex.DNS01KeyAuthorization(), TTL: "soon"}},
		"no name":         {Zone: "x.test.", Record: memoRecord{Type: "TXT", Data: apex.DNS01KeyAuthorization()}},
	} {
		b, _ := json.Marshal(bad)
		err := newSolver().CleanUp(context.Background(), apex, b)
		if err == nil || !strings.Contains(err.Error(), "refusing to clean up") {
			t.Errorf("%s: clean-up error %v, want a refusal", name, err)
		}
	}
	if prov.deletes != deletes {
		t.Errorf("refused clean-ups reached the provider")
	}
	if got := prov.values("x.test.", "_acme-challenge"); !slices.Equal(got, want) {
		t.Fatalf("after refused clean-ups: %q, want %q", got, want)
	}
}

// TestDNS01PresentAgain: a resumed workflow presents again; a provider that
// refuses a duplicate is checked for the value being there already.
func TestDNS01PresentAgain(t *testing.T) {
	resolver := startZoneServer(t, soaOf("x.test."))
	prov := newMemProvider()
	prov.refuseDuplicates = true
	s := NewDNS01(DNS01Config{Provider: prov, Resolvers: []string{resolver.addr}})
	chal := dnsChallenge(t, "www.x.test")
	first, err := s.Present(context.Background(), chal)
	if err != nil {
		t.Fatal(err)
	}
	second, err := s.Present(context.Background(), chal)
	if err != nil {
		t.Fatalf("presenting again: %v", err)
	}
	if string(first) != string(second) {
		t.Errorf("memos differ: %s and %s", first, second)
	}
	if got := prov.values("x.test.", "_acme-challenge.www"); len(got) != 1 {
		t.Errorf("values %q, want exactly ours", got)
	}
}

// TestDNS01OverrideDomain: the record is written at the override domain,
// in its own zone, and that name is the exclusion key.
func TestDNS01OverrideDomain(t *testing.T) {
	resolver := startZoneServer(t, soaOf("x.test."), soaOf("delegate.test."))
	prov := newMemProvider()
	s := NewDNS01(DNS01Config{Provider: prov, Resolvers: []string{resolver.addr},
		OverrideDomain: "Acme.Delegate.test", Serialize: true})
	chal := dnsChallenge(t, "www.x.test")
	memo, err := s.Present(context.Background(), chal)
	if err != nil {
		t.Fatal(err)
	}
	if got := prov.values("delegate.test.", "acme"); !slices.Equal(got, []string{chal.DNS01KeyAuthorization()}) {
		t.Fatalf("override record values %q (memo %s)", got, memo)
	}
	if k := s.ExclusionKey(chal); k != "dns-01:acme.delegate.test." {
		t.Errorf("exclusion key %q", k)
	}
	if err := s.CleanUp(context.Background(), chal, memo); err != nil {
		t.Fatal(err)
	}
	if got := prov.values("delegate.test.", "acme"); len(got) != 0 {
		t.Errorf("left behind: %q", got)
	}
}

func TestDNS01ExclusionKey(t *testing.T) {
	apex := acme.Challenge{Type: acme.ChallengeTypeDNS01, Identifier: acme.Identifier{Type: "dns", Value: "Example.COM"}}
	if k := NewDNS01(DNS01Config{}).ExclusionKey(apex); k != "" {
		t.Errorf("without serialize the key is %q, want none", k)
	}
	s := NewDNS01(DNS01Config{Serialize: true})
	if k := s.ExclusionKey(apex); k != "dns-01:_acme-challenge.example.com." {
		t.Errorf("key %q", k)
	}
	// the wildcard's authorization names the apex: same key
	wildcard := apex
	wildcard.Identifier.Value = "example.com"
	if s.ExclusionKey(wildcard) != s.ExclusionKey(apex) {
		t.Errorf("wildcard and apex keys differ")
	}
	ip := acme.Challenge{Type: acme.ChallengeTypeDNS01, Identifier: acme.Identifier{Type: "ip", Value: "192.0.2.1"}}
	if k := s.ExclusionKey(ip); k != "" {
		t.Errorf("ip identifier key %q", k)
	}
}

func TestDNS01SelfCheckTuning(t *testing.T) {
	for _, tc := range []struct {
		cfg  DNS01Config
		want SelfCheckTuning
	}{
		{DNS01Config{}, SelfCheckTuning{Interval: time.Second, Timeout: 2 * time.Minute}},
		{DNS01Config{PropagationTimeout: -1, PropagationDelay: 5 * time.Second},
			SelfCheckTuning{Skip: true, Delay: 5 * time.Second, Interval: time.Second}},
		{DNS01Config{PropagationTimeout: 30 * time.Second, Interval: 100 * time.Millisecond},
			SelfCheckTuning{Interval: 100 * time.Millisecond, Timeout: 30 * time.Second}},
	} {
		if got := NewDNS01(tc.cfg).SelfCheckTuning(); got != tc.want {
			t.Errorf("%+v: tuning %+v, want %+v", tc.cfg, got, tc.want)
		}
	}
}

func TestDNS01BadInput(t *testing.T) {
	resolver := startZoneServer(t, soaOf("x.test."))
	s := NewDNS01(DNS01Config{Provider: newMemProvider(), Resolvers: []string{resolver.addr}})
	ip := newChallenge(t, acme.ChallengeTypeDNS01, "ip", "192.0.2.1")
	_, err := s.Present(context.Background(), ip)
	wantErr(t, err, "a ip identifier cannot be validated with dns-01")
	wantErr(t, s.SelfCheck(context.Background(), ip), "cannot be validated with dns-01")

	noKey := dnsChallenge(t, "x.test")
	noKey.KeyAuthorization = ""
	_, err = s.Present(context.Background(), noKey)
	wantErr(t, err, "no key authorization")

	// a name outside every zone the resolver knows
	_, err = s.Present(context.Background(), dnsChallenge(t, "elsewhere.example"))
	wantErr(t, err, "finding the zone of _acme-challenge.elsewhere.example.")

	if _, err := NewDNS01(DNS01Config{}).Present(context.Background(), dnsChallenge(t, "x.test")); err == nil {
		t.Error("presenting without a provider succeeded")
	}
}

func TestDNS01SelfCheckContextCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	s := NewDNS01(DNS01Config{Provider: newMemProvider(), Resolvers: []string{deadUDPAddr(t)}})
	start := time.Now()
	if err := s.SelfCheck(ctx, dnsChallenge(t, "x.test")); err == nil {
		t.Fatal("self-check passed with a canceled context")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("self-check took %s after its context was canceled", d)
	}
}

// TestDNS01Plan: the plan names the record Present will add (fully
// qualified, our value, no zone, nothing secret) without asking the
// network, and it refuses what Present would refuse.
func TestDNS01Plan(t *testing.T) {
	chal := dnsChallenge(t, "Www.X.test")
	tests := []struct {
		name     string
		cfg      DNS01Config
		chal     acme.Challenge
		wantName string
		wantErr  string
	}{
		{"record name", DNS01Config{}, chal, "_acme-challenge.www.x.test.", ""},
		{"override domain", DNS01Config{OverrideDomain: "Acme.Delegate.test."}, chal, "acme.delegate.test.", ""},
		{"wildcard", DNS01Config{}, func() acme.Challenge { c := chal; c.Identifier.Value = "*.x.test"; return c }(), "_acme-challenge.x.test.", ""},
		{"ip identifier", DNS01Config{}, newChallenge(t, acme.ChallengeTypeDNS01, "ip", "192.0.2.1"), "", "cannot be validated with dns-01"},
		{"no key authorization", DNS01Config{}, func() acme.Challenge { c := chal; c.KeyAuthorization = ""; return c }(), "", "no key authorization"},
		{"invalid override", DNS01Config{OverrideDomain: "bad name"}, chal, "", "invalid override domain"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// no resolver configured and none reachable: a plan needs none
			s := NewDNS01(tt.cfg)
			s.systemResolvers = []string{deadUDPAddr(t)}
			plan, err := s.Plan(tt.chal)
			if tt.wantErr != "" {
				wantErr(t, err, tt.wantErr)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var m dnsMemo
			if err := json.Unmarshal(plan, &m); err != nil {
				t.Fatal(err)
			}
			want := dnsMemo{Planned: true, Record: memoRecord{Name: tt.wantName, Type: "TXT", Data: tt.chal.DNS01KeyAuthorization()}}
			if m != want {
				t.Errorf("plan %+v, want %+v", m, want)
			}
			if strings.Contains(string(plan), tt.chal.KeyAuthorization) {
				t.Errorf("plan contains the key authorization: %s", plan)
			}
			if strings.Contains(string(plan), `"zone"`) {
				t.Errorf("plan names a zone: %s", plan)
			}
		})
	}
}

// TestDNS01CleanUpFromPlan: a process that only has the plan (it died, or
// the write of Present's memo failed) deletes exactly the value Present
// added, in the zone it finds the way Present did; with nothing added, it
// deletes nothing and does not fail; plans that could delete more than our
// value are refused.
func TestDNS01CleanUpFromPlan(t *testing.T) {
	resolver := startZoneServer(t, soaOf("x.test."), soaOf("delegate.test."))
	prov := newMemProvider()
	prov.zones["x.test."] = []libdns.RR{{Name: "_acme-challenge.www", Type: "TXT", Data: "another writer", TTL: time.Hour}}
	newSolver := func(cfg DNS01Config) *DNS01 {
		cfg.Provider, cfg.TTL, cfg.Resolvers = prov, time.Minute, []string{resolver.addr}
		return NewDNS01(cfg)
	}
	apex, wildcard := dnsChallenge(t, "www.x.test"), dnsChallenge(t, "www.x.test")
	wildcard.Identifier.Value = "*.www.x.test"

	plan, err := newSolver(DNS01Config{}).Plan(apex)
	if err != nil {
		t.Fatal(err)
	}
	s := newSolver(DNS01Config{})
	for _, c := range []acme.Challenge{apex, wildcard} {
		if _, err := s.Present(context.Background(), c); err != nil {
			t.Fatal(err)
		}
	}
	// maintenance knows the challenge's token and name, not its key
	// authorization (that needs the account key)
	stored := apex
	stored.KeyAuthorization = ""
	if err := newSolver(DNS01Config{}).CleanUp(context.Background(), stored, plan); err != nil {
		t.Fatal(err)
	}
	want := []string{"another writer", wildcard.DNS01KeyAuthorization()}
	slices.Sort(want)
	if got := prov.values("x.test.", "_acme-challenge.www"); !slices.Equal(got, want) {
		t.Fatalf("after clean-up from the plan: %q, want %q", got, want)
	}
	// again, and for a plan Present never carried out: nothing of ours, no error
	if err := newSolver(DNS01Config{}).CleanUp(context.Background(), apex, plan); err != nil {
		t.Fatalf("second clean-up: %v", err)
	}
	if got := prov.values("x.test.", "_acme-challenge.www"); !slices.Equal(got, want) {
		t.Fatalf("after a second clean-up: %q, want %q", got, want)
	}

	// an override domain, in another zone
	override := DNS01Config{OverrideDomain: "acme.delegate.test"}
	oplan, err := newSolver(override).Plan(apex)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := newSolver(override).Present(context.Background(), apex); err != nil {
		t.Fatal(err)
	}
	if err := newSolver(override).CleanUp(context.Background(), stored, oplan); err != nil {
		t.Fatal(err)
	}
	if got := prov.values("delegate.test.", "acme"); len(got) != 0 {
		t.Fatalf("override record left behind: %q", got)
	}

	// a zone that cannot be found is an error (maintenance retries)
	lost, err := newSolver(DNS01Config{}).Plan(dnsChallenge(t, "elsewhere.example"))
	if err != nil {
		t.Fatal(err)
	}
	err = newSolver(DNS01Config{}).CleanUp(context.Background(), dnsChallenge(t, "elsewhere.example"), lost)
	wantErr(t, err, "finding the zone of _acme-challenge.elsewhere.example.")

	deletes := prov.deletes
	for name, bad := range map[string]dnsMemo{
		"empty data":      {Planned: true, Record: memoRecord{Name: "_acme-challenge.www.x.test.", Type: "TXT"}},
		"empty type":      {Planned: true, Record: memoRecord{Name: "_acme-challenge.www.x.test.", Data: apex.DNS01KeyAuthorization()}},
		"relative name":   {Planned: true, Record: memoRecord{Name: "_acme-challenge.www", Type: "TXT", Data: apex.DNS01KeyAuthorization()}},
		"no name":         {Planned: true, Record: memoRecord{Type: "TXT", Data: apex.DNS01KeyAuthorization()}},
		"another's value": {Planned: true, Record: memoRecord{Name: "_acme-challenge.www.x.test.", Type: "TXT", Data: "another writer"}},
		"a zone as well":  {Planned: true, Zone: "x.test.", Record: memoRecord{Name: "_acme-challenge.www.x.test.", Type: "TXT", Data: apex.DNS01KeyAuthorization()}},
	} {
		b, _ := json.Marshal(bad)
		err := newSolver(DNS01Config{}).CleanUp(context.Background(), apex, b)
		if err == nil || !strings.Contains(err.Error(), "refusing to clean up") {
			t.Errorf("%s: clean-up error %v, want a refusal", name, err)
		}
	}
	if prov.deletes != deletes {
		t.Errorf("refused clean-ups reached the provider")
	}
	if got := prov.values("x.test.", "_acme-challenge.www"); !slices.Equal(got, want) {
		t.Fatalf("after refused clean-ups: %q, want %q", got, want)
	}
}
