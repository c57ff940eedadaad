package rig

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// ErrNoNamed is returned by StartBIND when BIND 9's named is not installed
// (Debian: apt-get install bind9 bind9-utils dnsutils).
var ErrNoNamed = errors.New("named (BIND 9) is not installed")

// BIND timings.
const (
	bindStartTimeout = 15 * time.Second
	bindStopTimeout  = 10 * time.Second
	bindQueryTimeout = 2 * time.Second
	// bindOwnershipChecks is how many queries, half over UDP and half over
	// TCP, must all reach this named (and not another one sharing the port
	// through SO_REUSEPORT) before StartBIND returns.
	bindOwnershipChecks = 16
	// bindLogLimit bounds how much of named's output is kept for errors.
	bindLogLimit = 64 << 10
)

// BINDOptions configures StartBIND.
type BINDOptions struct {
	// Zone is the zone named serves as primary, e.g. "dns.test." (the
	// default).
	Zone string
	// Records are added to the zone file, in zone-file syntax relative to
	// the zone, e.g. "www IN A 127.0.0.1" or "* IN A 127.0.0.1". The zone
	// always has its SOA, an NS record ns1 with the address 127.0.0.1 and
	// a TXT record at _certflow-nonce that tells this named apart.
	Records []string
	// Log receives named's output (it runs with -g). Nil keeps only the
	// last 64 KiB, for errors.
	Log io.Writer
	// Port, if not zero, is the port to listen on; it must be free for
	// both TCP and UDP. Zero picks a free one.
	Port int
}

// BIND is a BIND 9 named started by StartBIND: the primary of one zone on
// 127.0.0.1 (TCP and UDP on one port), with a TSIG key that may update and
// transfer the zone, and no recursion. Stop it with Close.
type BIND struct {
	// Addr is "127.0.0.1:<port>", for both TCP and UDP.
	Addr string
	// Zone is the zone's name, fully qualified and lower case.
	Zone string
	// KeyName, KeyAlg and Secret are the TSIG key allowed to update and
	// transfer the zone (Secret is base64, as in named.conf).
	KeyName, KeyAlg, Secret string
	// Dir holds named.conf, the zone file and named's working files.
	Dir string
	// PID is named's process ID.
	PID int
	// User is the user named runs as ("bind" when started as root).
	User string

	nonce string
	cmd   *exec.Cmd
	done  chan struct{} // closed when named has exited
	log   *tailBuffer

	closeOnce sync.Once
	closeErr  error
}

// NamedEnv names an environment variable that, when set, is the path of
// the named to run (and when it is not executable, named counts as missing:
// that is how to check that a test needing named fails in CI without it).
const NamedEnv = "CERTFLOW_NAMED"

// NamedPath returns the path of named: $CERTFLOW_NAMED if set, else named
// in PATH, else in the sbin directories an unprivileged user's PATH often
// lacks.
func NamedPath() (string, error) {
	if p, ok := os.LookupEnv(NamedEnv); ok {
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
		return "", fmt.Errorf("%w (%s=%q is not an executable file)", ErrNoNamed, NamedEnv, p)
	}
	if p, err := exec.LookPath("named"); err == nil {
		return p, nil
	}
	for _, p := range []string{"/usr/sbin/named", "/usr/local/sbin/named", "/sbin/named"} {
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", ErrNoNamed
}

// StartBIND starts named in the foreground (-g) on a free 127.0.0.1 port,
// with its files in a new temporary directory. When this process is root,
// named drops to the "bind" user (-u bind) and the directory is handed to
// that user; otherwise it runs as this user. The port is checked to be free
// for both TCP and UDP first, and StartBIND returns only once this named,
// and no other sharing the port, answers over both.
func StartBIND(opts BINDOptions) (*BIND, error) {
	named, err := NamedPath()
	if err != nil {
		return nil, err
	}
	zone := strings.ToLower(dns.Fqdn(opts.Zone))
	if opts.Zone == "" {
		zone = "dns.test."
	}
	b := &BIND{Zone: zone, KeyName: "certflow-test.", KeyAlg: "hmac-sha256", log: &tailBuffer{limit: bindLogLimit}}
	if b.Secret, err = randomBase64(32); err != nil {
		return nil, err
	}
	if b.nonce, err = randomBase64(12); err != nil {
		return nil, err
	}
	serialBytes := make([]byte, 4)
	if _, err := rand.Read(serialBytes); err != nil {
		return nil, fmt.Errorf("starting named: %w", err)
	}
	serial := binary.BigEndian.Uint32(serialBytes)%2_000_000_000 + 1

	port := opts.Port
	if port == 0 {
		port, err = freeTCPAndUDPPort()
	} else {
		err = checkPortFree(port)
	}
	if err != nil {
		return nil, fmt.Errorf("starting named: %w", err)
	}
	b.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))

	if b.Dir, err = os.MkdirTemp("", "certflow-bind-"); err != nil {
		return nil, fmt.Errorf("starting named: creating its directory: %w", err)
	}
	if err := b.writeFiles(port, serial, opts.Records); err != nil {
		return nil, errors.Join(err, os.RemoveAll(b.Dir))
	}

	args := []string{"-g", "-c", filepath.Join(b.Dir, "named.conf"), "-n", "2"}
	b.User = currentUserName()
	if os.Geteuid() == 0 {
		// named keeps root unless told otherwise; drop to the bind user
		// when there is one, as the Debian service does
		if u, err := user.Lookup("bind"); err == nil {
			if err := chownTree(b.Dir, u); err != nil {
				return nil, errors.Join(err, os.RemoveAll(b.Dir))
			}
			args = append(args, "-u", "bind")
			b.User = "bind"
		}
	}

	var out io.Writer = b.log
	if opts.Log != nil {
		out = io.MultiWriter(b.log, opts.Log)
	}
	b.cmd = exec.Command(named, args...)
	b.cmd.Dir = b.Dir
	b.cmd.Stdout, b.cmd.Stderr = out, out
	if err := b.cmd.Start(); err != nil {
		return nil, errors.Join(fmt.Errorf("starting %s: %w", named, err), os.RemoveAll(b.Dir))
	}
	b.PID = b.cmd.Process.Pid
	b.done = make(chan struct{})
	go func() {
		_ = b.cmd.Wait()
		close(b.done)
	}()

	if err := b.waitReady(serial); err != nil {
		return nil, errors.Join(err, b.Close())
	}
	return b, nil
}

// writeFiles writes named.conf and the zone file.
func (b *BIND) writeFiles(port int, serial uint32, records []string) error {
	conf := fmt.Sprintf(`options {
	directory %[1]q;
	pid-file %[2]q;
	session-keyfile %[3]q;
	managed-keys-directory %[1]q;
	listen-on port %[4]d { 127.0.0.1; };
	listen-on-v6 { none; };
	recursion no;
	allow-recursion { none; };
	dnssec-validation no;
	notify no;
	querylog no;
};
controls { };
key %[5]q {
	algorithm %[6]s;
	secret %[7]q;
};
zone %[8]q {
	type primary;
	file %[9]q;
	allow-update { key %[5]q; };
	allow-transfer { key %[5]q; };
};
`, b.Dir, filepath.Join(b.Dir, "named.pid"), filepath.Join(b.Dir, "session.key"), port,
		b.KeyName, b.KeyAlg, b.Secret, b.Zone, filepath.Join(b.Dir, "zone.db"))

	var zone strings.Builder
	fmt.Fprintf(&zone, "$ORIGIN %s\n$TTL 1\n", b.Zone)
	fmt.Fprintf(&zone, "@ IN SOA ns1 hostmaster %d 60 60 600 1\n", serial)
	zone.WriteString("@ IN NS ns1\nns1 IN A 127.0.0.1\n")
	fmt.Fprintf(&zone, "_certflow-nonce IN TXT %q\n", b.nonce)
	for _, r := range records {
		zone.WriteString(r + "\n")
	}

	if err := os.WriteFile(filepath.Join(b.Dir, "named.conf"), []byte(conf), 0o640); err != nil {
		return fmt.Errorf("writing named.conf: %w", err)
	}
	if err := os.WriteFile(filepath.Join(b.Dir, "zone.db"), []byte(zone.String()), 0o640); err != nil {
		return fmt.Errorf("writing the zone file: %w", err)
	}
	return nil
}

// waitReady waits until named serves the zone with our serial, then checks
// that every one of a series of queries over UDP and TCP reaches it.
func (b *BIND) waitReady(serial uint32) error {
	deadline := time.Now().Add(bindStartTimeout)
	for {
		select {
		case <-b.done:
			return fmt.Errorf("named exited while starting: %s", b.log.String())
		default:
		}
		soa, err := b.query(b.Zone, dns.TypeSOA, "udp")
		if err == nil && len(soa.Answer) == 1 {
			if s, ok := soa.Answer[0].(*dns.SOA); ok && s.Serial == serial {
				break
			}
			return fmt.Errorf("another DNS server answers on %s (serial %v): not starting named there", b.Addr, soa.Answer[0])
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("named did not answer on %s within %s (last error: %v): %s", b.Addr, bindStartTimeout, err, b.log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	for i := range bindOwnershipChecks {
		network := "udp"
		if i%2 == 1 {
			network = "tcp"
		}
		values, err := b.txtOver(dns.Fqdn("_certflow-nonce."+b.Zone), network)
		if err != nil {
			return fmt.Errorf("checking that named alone serves %s: %w", b.Addr, err)
		}
		if len(values) != 1 || values[0] != b.nonce {
			return fmt.Errorf("another DNS server shares %s (answered %q over %s): not using it", b.Addr, values, network)
		}
	}
	return nil
}

// Close stops named (SIGTERM, then SIGKILL after 10 s) by its PID and
// removes its directory. Calling it again returns the first call's result.
func (b *BIND) Close() error {
	b.closeOnce.Do(func() {
		var errs []error
		if b.cmd != nil && b.cmd.Process != nil {
			select {
			case <-b.done:
			default:
				_ = b.cmd.Process.Signal(os.Interrupt)
				select {
				case <-b.done:
				case <-time.After(bindStopTimeout):
					_ = b.cmd.Process.Kill()
					<-b.done
					errs = append(errs, fmt.Errorf("named (pid %d) did not stop within %s and was killed", b.PID, bindStopTimeout))
				}
			}
		}
		if b.Dir != "" {
			if err := os.RemoveAll(b.Dir); err != nil {
				errs = append(errs, fmt.Errorf("removing named's directory: %w", err))
			}
		}
		b.closeErr = errors.Join(errs...)
	})
	return b.closeErr
}

// Exited reports whether named has exited.
func (b *BIND) Exited() bool {
	select {
	case <-b.done:
		return true
	default:
		return false
	}
}

// Log returns the last 64 KiB of named's output.
func (b *BIND) Log() string { return b.log.String() }

// Provider returns the JSON object of a dns.providers.rfc2136 module that
// updates this zone, for a certflow issuer's challenges.dns.provider.
func (b *BIND) Provider() map[string]any {
	return map[string]any{
		"name":     "rfc2136",
		"key_name": strings.TrimSuffix(b.KeyName, "."),
		"key_alg":  b.KeyAlg,
		"key":      b.Secret,
		"server":   b.Addr,
	}
}

// TXT returns the TXT values of name (relative names are taken in the zone)
// as named serves them now, sorted.
func (b *BIND) TXT(name string) ([]string, error) {
	return b.txtOver(b.fqdn(name), "udp")
}

func (b *BIND) txtOver(fqdn, network string) ([]string, error) {
	resp, err := b.query(fqdn, dns.TypeTXT, network)
	if err != nil {
		return nil, err
	}
	if resp.Rcode != dns.RcodeSuccess && resp.Rcode != dns.RcodeNameError {
		return nil, fmt.Errorf("TXT %s: named answered %s", fqdn, dns.RcodeToString[resp.Rcode])
	}
	var out []string
	for _, rr := range resp.Answer {
		if t, ok := rr.(*dns.TXT); ok && strings.EqualFold(t.Hdr.Name, fqdn) {
			out = append(out, strings.Join(t.Txt, ""))
		}
	}
	sort.Strings(out)
	return out, nil
}

// ZoneTXT returns every TXT record of the zone but the nonce, by a zone
// transfer (AXFR) signed with the TSIG key: owner name → sorted values.
func (b *BIND) ZoneTXT() (map[string][]string, error) {
	m := new(dns.Msg)
	m.SetAxfr(b.Zone)
	m.SetTsig(b.KeyName, dns.Fqdn(b.KeyAlg), 300, time.Now().Unix())
	tr := &dns.Transfer{
		DialTimeout: bindQueryTimeout, ReadTimeout: bindQueryTimeout, WriteTimeout: bindQueryTimeout,
		TsigSecret: map[string]string{b.KeyName: b.Secret},
	}
	envs, err := tr.In(m, b.Addr)
	if err != nil {
		return nil, fmt.Errorf("transferring zone %s: %w", b.Zone, err)
	}
	out := map[string][]string{}
	for env := range envs {
		if env.Error != nil {
			return nil, fmt.Errorf("transferring zone %s: %w", b.Zone, env.Error)
		}
		for _, rr := range env.RR {
			t, ok := rr.(*dns.TXT)
			if !ok || strings.EqualFold(t.Hdr.Name, "_certflow-nonce."+b.Zone) {
				continue
			}
			name := strings.ToLower(t.Hdr.Name)
			out[name] = append(out[name], strings.Join(t.Txt, ""))
		}
	}
	for _, v := range out {
		sort.Strings(v)
	}
	return out, nil
}

// AddTXT adds a TXT value at name with a signed dynamic update, as another
// writer of the zone would.
func (b *BIND) AddTXT(name, value string) error {
	rr := &dns.TXT{Hdr: dns.RR_Header{Name: b.fqdn(name), Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 60}, Txt: []string{value}}
	m := new(dns.Msg)
	m.SetUpdate(b.Zone)
	m.Insert([]dns.RR{rr})
	return b.update(m)
}

// DeleteTXT deletes one TXT value at name with a signed dynamic update.
func (b *BIND) DeleteTXT(name, value string) error {
	rr := &dns.TXT{Hdr: dns.RR_Header{Name: b.fqdn(name), Rrtype: dns.TypeTXT, Class: dns.ClassINET}, Txt: []string{value}}
	m := new(dns.Msg)
	m.SetUpdate(b.Zone)
	m.Remove([]dns.RR{rr})
	return b.update(m)
}

func (b *BIND) update(m *dns.Msg) error {
	m.SetTsig(b.KeyName, dns.Fqdn(b.KeyAlg), 300, time.Now().Unix())
	c := &dns.Client{Net: "tcp", Timeout: bindQueryTimeout, TsigSecret: map[string]string{b.KeyName: b.Secret}}
	resp, _, err := c.Exchange(m, b.Addr)
	if err != nil {
		return fmt.Errorf("updating zone %s: %w", b.Zone, err)
	}
	if resp.Rcode != dns.RcodeSuccess {
		return fmt.Errorf("updating zone %s: named answered %s", b.Zone, dns.RcodeToString[resp.Rcode])
	}
	return nil
}

// fqdn qualifies a name relative to the zone; a name ending in a dot, or
// already within the zone, is kept.
func (b *BIND) fqdn(name string) string {
	name = strings.ToLower(name)
	switch {
	case strings.HasSuffix(name, "."):
		return name
	case dns.IsSubDomain(b.Zone, name+"."):
		return name + "."
	default:
		return name + "." + b.Zone
	}
}

// query sends one question to named over network ("udp" or "tcp").
func (b *BIND) query(name string, qtype uint16, network string) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.RecursionDesired = false
	c := &dns.Client{Net: network, Timeout: bindQueryTimeout}
	ctx, cancel := context.WithTimeout(context.Background(), bindQueryTimeout)
	defer cancel()
	resp, _, err := c.ExchangeContext(ctx, m, b.Addr)
	if err != nil {
		return nil, fmt.Errorf("%s %s over %s to %s: %w", name, dns.TypeToString[qtype], network, b.Addr, err)
	}
	return resp, nil
}

// freeTCPAndUDPPort returns a 127.0.0.1 port on which both a TCP listener
// and a UDP socket could be bound a moment ago, without SO_REUSEPORT: a
// named already there (named sets SO_REUSEPORT) makes the bind fail, where
// a second named would start anyway and share its queries.
func freeTCPAndUDPPort() (int, error) {
	ln, pc, err := listenTCPAndUDP()
	if err != nil {
		return 0, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	return port, errors.Join(ln.Close(), pc.Close())
}

// checkPortFree binds 127.0.0.1:port over TCP and UDP, without
// SO_REUSEPORT, and releases both.
func checkPortFree(port int) error {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("port %d is not free over TCP: %w", port, err)
	}
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return errors.Join(fmt.Errorf("port %d is not free over UDP: %w", port, err), ln.Close())
	}
	return errors.Join(ln.Close(), pc.Close())
}

func randomBase64(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("reading random bytes: %w", err)
	}
	return base64.StdEncoding.EncodeToString(b), nil
}

func currentUserName() string {
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return strconv.Itoa(os.Geteuid())
}

// chownTree gives dir and everything in it to u, so named can read its
// configuration and write its journal after dropping privileges.
func chownTree(dir string, u *user.User) error {
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return fmt.Errorf("user %s has a non-numeric uid %q", u.Username, u.Uid)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return fmt.Errorf("user %s has a non-numeric gid %q", u.Username, u.Gid)
	}
	return filepath.Walk(dir, func(path string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if err := os.Lchown(path, uid, gid); err != nil {
			return fmt.Errorf("handing %s to %s: %w", path, u.Username, err)
		}
		return nil
	})
}

// tailBuffer keeps the last limit bytes written to it.
type tailBuffer struct {
	mu    sync.Mutex
	limit int
	buf   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.limit; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}
