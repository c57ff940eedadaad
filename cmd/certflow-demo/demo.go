package main

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/certflow/certflow/integration/rig"
)

// shake is the outcome of one TLS handshake.
type shake struct {
	name string
	took time.Duration
	leaf *x509.Certificate
	err  error
}

// demo runs the handshakes and prints what happened. It returns an error
// when an allowed handshake failed or the refused name was not refused.
func (w *world) demo(ctx context.Context, opts options, out io.Writer) error {
	w.printSetup(out)

	fmt.Fprintf(out, "\n1. First handshake for each name, in parallel: each waits while certflow obtains its certificate\n\n")
	first, err := w.handshakes(ctx, opts.names, firstTimeout)
	if err != nil {
		return err
	}
	printShakes(out, first, nil)

	fmt.Fprintf(out, "\n2. The same handshakes again: served from Caddy's certificate cache\n\n")
	caBefore := len(w.ca.Requests())
	second, err := w.handshakes(ctx, opts.names, cachedTimeout)
	if err != nil {
		return err
	}
	printShakes(out, second, first)
	fmt.Fprintf(out, "\n   The CA received %d requests during these handshakes.\n", len(w.ca.Requests())-caBefore)

	fmt.Fprintf(out, "\n3. A name the ask endpoint refuses\n\n")
	caBefore = len(w.ca.Requests())
	denied, err := w.handshakes(ctx, []string{deniedName}, cachedTimeout)
	if err != nil {
		return err
	}
	printShakes(out, denied, nil)
	deniedStored, err := storedFor(w.storage, deniedName)
	if err != nil {
		return err
	}
	askSaid := "was not asked"
	for _, n := range w.refusedNames() {
		if n == deniedName {
			askSaid = "said no"
		}
	}
	fmt.Fprintf(out, "\n   The ask endpoint %s; certflow stored %d resources for %s; the CA received %d requests.\n",
		askSaid, deniedStored, deniedName, len(w.ca.Requests())-caBefore)

	fmt.Fprintf(out, "\n4. What certflow stored for each name: CertificateRequest → Order → Challenges\n")
	if err := printResources(out, w.storage, opts.names); err != nil {
		return err
	}

	fmt.Fprintf(out, "\n5. When each challenge reached each step, in milliseconds after it was created\n\n")
	if err := printTimeline(out, w.storage, opts.names); err != nil {
		return err
	}

	fmt.Fprintf(out, "\n6. Requests the CA received\n\n")
	printCACounts(out, w.ca)

	var problems []string
	for _, s := range append(first, second...) {
		if s.err != nil {
			problems = append(problems, fmt.Sprintf("handshake for %s failed", s.name))
		}
	}
	if denied[0].err == nil {
		problems = append(problems, fmt.Sprintf("handshake for %s succeeded although the ask endpoint refuses it", deniedName))
	}
	if deniedStored > 0 {
		problems = append(problems, fmt.Sprintf("certflow stored resources for the refused name %s", deniedName))
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	fmt.Fprintf(out, "\n%d of %d names got a certificate; %s was refused at no cost.\n", len(opts.names), len(opts.names), deniedName)
	return nil
}

// printSetup describes what the demo started.
func (w *world) printSetup(out io.Writer) {
	fmt.Fprintln(out, "certflow demo: Caddy obtains certificates on demand with certflow (CertificateRequest → Order → Challenge)")
	fmt.Fprintln(out)
	rows := [][2]string{
		{"CA", "Pebble, in process, " + w.ca.DirectoryURL},
		{"DNS", w.dns.Addr + ", answers 127.0.0.1 for every name"},
		{"Caddy", fmt.Sprintf("in process, HTTP 127.0.0.1:%d, HTTPS 127.0.0.1:%d", w.httpPort, w.httpsPort)},
		{"storage", w.storage + " (removed at exit unless -keep)"},
		{"ask", "allows *" + allowedSuffix + ", refuses every other name"},
	}
	if w.alpnName != "" {
		rows = append(rows,
			[2]string{"policies", w.alpnName + ": certflow, TLS-ALPN-01 only (on demand)"},
			[2]string{"", "every other name: certflow, HTTP-01 first (catch-all, on demand)"})
	} else {
		rows = append(rows, [2]string{"policy", "every name: certflow, HTTP-01 first (catch-all, on demand)"})
	}
	for _, r := range rows {
		fmt.Fprintf(out, "  %-9s %s\n", r[0], r[1])
	}
}

// handshakes makes one handshake per name, all at once, and waits for all
// of them, or for ctx to end (then it returns errInterrupted).
func (w *world) handshakes(ctx context.Context, names []string, timeout time.Duration) ([]shake, error) {
	results := make([]shake, len(names))
	roots := w.ca.IssuerRoots()
	startGate := make(chan struct{})
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-startGate
			t0 := time.Now()
			state, err := rig.Handshake(w.addr(), name, roots, timeout)
			s := shake{name: name, took: time.Since(t0), err: err}
			if err == nil && state != nil && len(state.PeerCertificates) > 0 {
				s.leaf = state.PeerCertificates[0]
			}
			results[i] = s
		}()
	}
	close(startGate)

	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return results, nil
	case <-ctx.Done():
	}
	// Stopping Caddy and the CA under an issuance in flight would leave it
	// failing against closed ports for minutes: let it finish first.
	fmt.Fprintf(w.log, "certflow-demo: interrupted; letting the handshakes in flight finish (up to %s; Ctrl-C again to quit at once)\n", interruptGrace)
	select {
	case <-done:
	case <-time.After(interruptGrace):
		fmt.Fprintln(w.log, "certflow-demo: handshakes still in flight; stopping anyway")
	}
	return nil, errInterrupted
}

// printShakes prints one line per handshake. With earlier results, it
// says whether the same certificate was served.
func printShakes(out io.Writer, shakes, earlier []shake) {
	prev := map[string]*x509.Certificate{}
	for _, s := range earlier {
		prev[s.name] = s.leaf
	}
	t := newTable("NAME", "RESULT", "LATENCY", "CERTIFICATE")
	for _, s := range shakes {
		if s.err != nil {
			t.row(s.name, "failed", fmtDuration(s.took), handshakeError(s.err))
			continue
		}
		desc := describeLeaf(s.leaf)
		if p, ok := prev[s.name]; ok && p != nil && s.leaf != nil {
			if p.SerialNumber.Cmp(s.leaf.SerialNumber) == 0 {
				desc += ", the same"
			} else {
				desc += ", a different one"
			}
		}
		t.row(s.name, "ok", fmtDuration(s.took), desc)
	}
	t.print(out, "   ")
}

// describeLeaf names a certificate by a short serial and its issuer.
func describeLeaf(leaf *x509.Certificate) string {
	if leaf == nil {
		return "-"
	}
	serial := hex.EncodeToString(leaf.SerialNumber.Bytes())
	if len(serial) > 8 {
		serial = serial[:8] + "…"
	}
	return fmt.Sprintf("serial %s from %s", serial, leaf.Issuer.CommonName)
}

// handshakeError is the cause of a failed handshake, without the rig's
// "TLS handshake with <addr> for <name>" prefix the table already shows.
func handshakeError(err error) string {
	if inner := errors.Unwrap(err); inner != nil {
		return inner.Error()
	}
	return err.Error()
}

// fmtDuration prints d with a precision that suits its size.
func fmtDuration(d time.Duration) string {
	switch {
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	case d < 10*time.Second:
		return fmt.Sprintf("%dms", d.Round(time.Millisecond).Milliseconds())
	default:
		return d.Round(100 * time.Millisecond).String()
	}
}
