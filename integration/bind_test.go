package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"

	// dns.providers.rfc2136: the real caddy-dns module a user adds with
	// xcaddy build --with github.com/caddy-dns/rfc2136
	_ "github.com/caddy-dns/rfc2136"

	"github.com/certflow/certflow/integration/rig"
	"github.com/certflow/certflow/solvers"
)

// The zone every BIND test serves, and the names its A records cover.
const bindZone = "dns.test."

var bindRecords = []string{
	"@ IN A 127.0.0.1",
	"* IN A 127.0.0.1",
}

// inCI reports whether the tests run in CI, where a missing named must fail
// them rather than skip them.
func inCI() bool {
	v := strings.ToLower(strings.TrimSpace(os.Getenv("CI")))
	return v != "" && v != "false" && v != "0"
}

// requireBIND starts a named serving bindZone for the test. Without named
// the test fails in CI (CI=true), and is skipped elsewhere. At cleanup,
// after everything registered later (Caddy, the CA) has stopped, it checks
// that no _acme-challenge TXT record is left in the zone, then stops named.
func requireBIND(t *testing.T, records ...string) *rig.BIND {
	t.Helper()
	b, err := rig.StartBIND(rig.BINDOptions{Zone: bindZone, Records: append(slices.Clone(bindRecords), records...)})
	if errors.Is(err, rig.ErrNoNamed) {
		if inCI() {
			t.Fatalf("this test needs BIND 9 and CI=%s: %v (.ci/run installs bind9 bind9-utils dnsutils)", os.Getenv("CI"), err)
		}
		t.Skipf("skipping outside CI: %v; install it (apt-get install bind9 bind9-utils dnsutils) to run this test", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("named (pid %d, user %s) serves %s on %s", b.PID, b.User, b.Zone, b.Addr)
	t.Cleanup(func() {
		defer func() {
			if err := b.Close(); err != nil {
				t.Error(err)
			}
		}()
		if b.Exited() {
			t.Errorf("named exited during the test: %s", b.Log())
			return
		}
		left, err := b.ZoneTXT()
		if err != nil {
			t.Errorf("listing the zone's TXT records after the test: %v", err)
			return
		}
		for name, values := range left {
			if strings.HasPrefix(name, "_acme-challenge") {
				t.Errorf("TXT record left in BIND after the test: %s %q", name, values)
			}
		}
	})
	return b
}

// TestBindRig: named runs on its own port, takes signed dynamic updates,
// serves several values for one name, and deletes exactly one of them.
func TestBindRig(t *testing.T) {
	b := requireBIND(t)
	const name = "_acme-challenge.rig"
	for _, v := range []string{"one", "two"} {
		if err := b.AddTXT(name, v); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := b.TXT(name); err != nil || !slices.Equal(got, []string{"one", "two"}) {
		t.Fatalf("TXT %s: %q, %v", name, got, err)
	}
	if err := b.DeleteTXT(name, "one"); err != nil {
		t.Fatal(err)
	}
	zone, err := b.ZoneTXT()
	if err != nil {
		t.Fatal(err)
	}
	if got := zone[name+"."+bindZone]; !slices.Equal(got, []string{"two"}) {
		t.Fatalf("zone transfer: %q", zone)
	}
	if err := b.DeleteTXT(name, "two"); err != nil {
		t.Fatal(err)
	}
}

// TestBindRefusesUsedPort: a second named on the port of a running one
// would start anyway (named sets SO_REUSEPORT) and take half its queries;
// StartBIND refuses the port instead.
func TestBindRefusesUsedPort(t *testing.T) {
	b := requireBIND(t)
	_, port, err := net.SplitHostPort(b.Addr)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := strconv.Atoi(port)
	second, err := rig.StartBIND(rig.BINDOptions{Zone: bindZone, Port: p})
	if err == nil {
		_ = second.Close()
		t.Fatalf("a second named started on %s", b.Addr)
	}
	if !strings.Contains(err.Error(), "is not free") {
		t.Errorf("error %q, want the port refused as not free", err)
	}
	// the first one still answers alone
	if _, err := b.TXT("_certflow-nonce"); err != nil {
		t.Error(err)
	}
}

// helperPresentEnv names the environment variable that makes
// TestHelperProcessPresent act as the first process of the restart test.
const helperPresentEnv = "CERTFLOW_HELPER_PRESENT"

// presentJob is what the first process of the restart test is given.
type presentJob struct {
	Provider  json.RawMessage `json:"provider"`
	Resolvers []string        `json:"resolvers"`
	Challenge acme.Challenge  `json:"challenge"`
	TTL       caddy.Duration  `json:"ttl"`
}

// TestHelperProcessPresent is not a test: run by TestBindDNS01RestartCleanUp
// in a child process, it loads dns.providers.rfc2136, presents a challenge,
// prints the memo and exits without cleaning up, as a process that dies
// between present and clean-up. Without its environment variable it does
// nothing.
func TestHelperProcessPresent(t *testing.T) {
	raw := os.Getenv(helperPresentEnv)
	if raw == "" {
		return
	}
	var job presentJob
	if err := json.Unmarshal([]byte(raw), &job); err != nil {
		t.Fatal(err)
	}
	solver, stop := newRFC2136Solver(t, job.Provider, job.Resolvers, time.Duration(job.TTL))
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	memo, err := solver.Present(ctx, job.Challenge)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("CERTFLOW-MEMO %s\n", memo)
	os.Exit(0) // no clean-up, no test summary: the process just ends
}

// newRFC2136Solver loads the dns.providers.rfc2136 module from its JSON
// through Caddy's module system, as Provision does, and returns a DNS-01
// solver using it.
func newRFC2136Solver(t *testing.T, provider json.RawMessage, resolvers []string, ttl time.Duration) (*solvers.DNS01, func()) {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	mod, err := ctx.LoadModuleByID("dns.providers.rfc2136", provider)
	if err != nil {
		cancel()
		t.Fatalf("loading dns.providers.rfc2136: %v", err)
	}
	prov, ok := mod.(certmagic.DNSProvider)
	if !ok {
		cancel()
		t.Fatalf("dns.providers.rfc2136 is a %T, not a certmagic.DNSProvider", mod)
	}
	return solvers.NewDNS01(solvers.DNS01Config{Provider: prov, Resolvers: resolvers, TTL: ttl}), cancel
}

// TestBindDNS01RestartCleanUp: a process presents a dns-01 challenge through
// the real rfc2136 provider into BIND and dies before cleaning up; the next
// process, with nothing but the memo the engine persisted and a freshly
// loaded provider, deletes exactly that record: another writer's value of
// the same name stays.
func TestBindDNS01RestartCleanUp(t *testing.T) {
	b := requireBIND(t)
	const record = "_acme-challenge.restart"
	const other = "another writer's value"
	if err := b.AddTXT(record, other); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.DeleteTXT(record, other) })

	// the module's own config, without the "name" inline key of its parent
	providerCfg := b.Provider()
	delete(providerCfg, "name")
	provider, err := json.Marshal(providerCfg)
	if err != nil {
		t.Fatal(err)
	}
	chal := acme.Challenge{
		Type:             acme.ChallengeTypeDNS01,
		Token:            "dGVzdC10b2tlbi1mb3ItcmVzdGFydA",
		KeyAuthorization: "dGVzdC10b2tlbi1mb3ItcmVzdGFydA.thumbprint-of-the-account-key",
		Identifier:       acme.Identifier{Type: "dns", Value: "restart.dns.test"},
	}
	job, err := json.Marshal(presentJob{Provider: provider, Resolvers: []string{b.Addr}, Challenge: chal,
		TTL: caddy.Duration(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}

	// the first process
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHelperProcessPresent$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperPresentEnv+"="+string(job))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("first process: %v\nstdout: %s\nstderr: %s", err, out, stderr.String())
	}
	var memo json.RawMessage
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		if m, ok := strings.CutPrefix(sc.Text(), "CERTFLOW-MEMO "); ok {
			memo = json.RawMessage(m)
		}
	}
	if memo == nil {
		t.Fatalf("the first process printed no memo: %s", out)
	}
	t.Logf("memo persisted by the first process (pid %d): %s", cmd.ProcessState.Pid(), memo)
	var m struct {
		Zone   string `json:"zone"`
		Record struct {
			Name, Type, Data, TTL string
		} `json:"record"`
	}
	if err := json.Unmarshal(memo, &m); err != nil {
		t.Fatal(err)
	}
	value := chal.DNS01KeyAuthorization()
	if m.Zone != bindZone || m.Record.Name != "_acme-challenge.restart" || m.Record.Type != "TXT" ||
		m.Record.Data != value || m.Record.TTL != "1m0s" {
		t.Errorf("memo %s, want zone %s and record _acme-challenge.restart TXT %s ttl 1m0s", memo, bindZone, value)
	}
	if strings.Contains(string(memo), b.Secret) || strings.Contains(string(memo), chal.KeyAuthorization) {
		t.Errorf("memo holds a secret: %s", memo)
	}
	got, err := b.TXT(record)
	if err != nil || !slices.Equal(got, sorted(other, value)) {
		t.Fatalf("after the first process died, TXT %s is %q (%v), want both values", record, got, err)
	}

	// the next process: a fresh provider and solver, and the memo
	solver, stop := newRFC2136Solver(t, provider, []string{b.Addr}, time.Minute)
	defer stop()
	cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer ccancel()
	if err := solver.CleanUp(cctx, chal, memo); err != nil {
		t.Fatalf("clean-up in the next process: %v", err)
	}
	got, err = b.TXT(record)
	if err != nil || !slices.Equal(got, []string{other}) {
		t.Fatalf("after clean-up TXT %s is %q (%v), want only the other writer's value", record, got, err)
	}
	// and again, as a retried clean-up would: nothing else goes
	if err := solver.CleanUp(cctx, chal, memo); err != nil {
		t.Fatalf("second clean-up: %v", err)
	}
	if got, _ := b.TXT(record); !slices.Equal(got, []string{other}) {
		t.Fatalf("after a second clean-up TXT %s is %q", record, got)
	}
}

func sorted(values ...string) []string {
	out := slices.Clone(values)
	slices.Sort(out)
	return out
}

// noChallengeTXT fails the test if BIND serves any _acme-challenge TXT
// record, read by a zone transfer.
func noChallengeTXT(t *testing.T, b *rig.BIND) {
	t.Helper()
	left, err := b.ZoneTXT()
	if err != nil {
		t.Fatal(err)
	}
	for name, values := range left {
		if strings.HasPrefix(name, "_acme-challenge") {
			t.Fatalf("TXT record left in BIND: %s %q", name, values)
		}
	}
}

// challengeTXT reports whether BIND serves an _acme-challenge TXT record,
// by a zone transfer.
func challengeTXT(t *testing.T, b *rig.BIND) bool {
	t.Helper()
	left, err := b.ZoneTXT()
	if err != nil {
		t.Fatal(err)
	}
	for name := range left {
		if strings.HasPrefix(name, "_acme-challenge") {
			return true
		}
	}
	return false
}
