package certflow

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/certflow/certflow/issuer"
)

// printNameStatus writes one name's chain, like `cmctl status certificate`:
// where it stands, the certificate in storage, the latest request, its
// order, the last renewal and the challenges.
func printNameStatus(out io.Writer, st *NameStatus, now time.Time) {
	tw := tabwriter.NewWriter(out, 0, 4, 1, ' ', 0)
	defer tw.Flush()
	p := statusPrinter{tw: tw, st: st, now: now}
	p.header()
	p.certificate()
	p.request()
	p.order()
	p.lastRenewal()
	p.challenges()
	if st.Failing {
		fmt.Fprintf(tw, "\n%s is failing.\n", st.Name)
	}
}

// statusPrinter writes the sections of a name's status.
type statusPrinter struct {
	tw  *tabwriter.Writer
	st  *NameStatus
	now time.Time
}

func (p statusPrinter) line(indent, label, format string, args ...any) {
	fmt.Fprintf(p.tw, "%s%s:\t%s\n", indent, label, fmt.Sprintf(format, args...))
}

// header: the name, where it stands, and what holds it back.
func (p statusPrinter) header() {
	st, now := p.st, p.now
	p.line("", "Name", "%s", st.Name)
	if st.IssuerKey != "" {
		p.line("", "Resources", "certflow/%s", st.IssuerKey)
	}
	p.line("", "Status", "%s", summary(st, now))
	if a := st.Admission; a != nil {
		p.line("", "Admission", "%s", admissionLine(a, now))
	}
	if st.Failing && st.Record != nil && st.Record.LastError != "" && (st.Request == nil || st.Request.Reason != st.Record.LastError) {
		p.line("", "Last error", "%s", oneLine(st.Record.LastError, 0))
	}
	for _, pr := range st.Problems {
		p.line("", "Problem", "%s", oneLine(pr, 0))
	}
	for _, h := range st.Holds {
		p.line("", "Held", "new orders for %s until %s (%s): %s; %s", h.Scope, stamp(h.Until), relative(h.Until, now), h.Limit, oneLine(h.Reason, 0))
	}
	for _, c := range st.Circuits {
		p.line("", "CA circuit", "%s since %s (%d failures; next probe %s): %s", c.State, stamp(c.Since), c.Failures, stamp(c.Until), oneLine(c.Reason, 0))
	}
}

// certificate: the one in storage, when it is renewed and why.
func (p statusPrinter) certificate() {
	st, now := p.st, p.now
	if c := st.Certificate; c != nil {
		fmt.Fprintln(p.tw, "Certificate:")
		p.line("  ", "Not Before", "%s", stamp(c.NotBefore))
		p.line("  ", "Not After", "%s (%s)", stamp(c.NotAfter), relative(c.NotAfter, now))
		p.line("  ", "Issuer", "%s", c.Issuer)
		p.line("  ", "Serial", "%s", c.Serial)
		p.line("  ", "DNS Names", "%s", strings.Join(c.SANs, ", "))
		if c.IssuerKey != "" {
			p.line("  ", "Issuer Key", "%s", c.IssuerKey)
		}
		if w := c.RenewalWindow; w != nil {
			p.line("  ", "Renewal Window", "%s – %s (ARI)", stamp(w.Start), stamp(w.End))
		} else {
			p.line("  ", "Renewal Window", "not known (no ARI information stored yet)")
		}
		if r := c.Renewal; r != nil {
			p.line("  ", "Renewal", "%s (%s), %s", stamp(r.At), relative(r.At, now), renewalReasonText(r.Reason))
		}
	} else {
		fmt.Fprintln(p.tw, "Certificate:\tnone in storage")
	}
}

// request: the latest CertificateRequest.
func (p statusPrinter) request() {
	st, now := p.st, p.now
	if cr := st.Request; cr != nil {
		fmt.Fprintf(p.tw, "CertificateRequest %s:\n", cr.ID)
		p.line("  ", "State", "%s", cr.State)
		if cr.Reason != "" {
			p.line("  ", "Reason", "%s", oneLine(cr.Reason, 0))
		}
		attempt := fmt.Sprintf("%d", cr.Attempt)
		if cr.OnDemand {
			attempt += " (on demand)"
		}
		p.line("  ", "Attempt", "%s", attempt)
		if r := cr.Renews; r != nil {
			p.line("  ", "Renews", "%s", renewsLine(r))
		} else if cr.Kind != "" {
			p.line("  ", "Kind", "first issuance")
		}
		p.line("  ", "Created", "%s (%s)", stamp(cr.Created), relative(cr.Created, now))
		if cr.State != issuer.RequestPending {
			p.line("  ", "Took", "%s", time.Duration(cr.Took).Round(time.Millisecond))
		}
		if !cr.NextAttempt.IsZero() && cr.State == issuer.RequestFailed {
			if st.BackingOff {
				p.line("  ", "Next Attempt", "%s (%s)", stamp(cr.NextAttempt), relative(cr.NextAttempt, now))
			} else {
				p.line("  ", "Next Attempt", "now (backoff over or cleared)")
			}
		}
	} else {
		fmt.Fprintln(p.tw, "CertificateRequest:\tnone")
	}
}

// order: the latest request's Order.
func (p statusPrinter) order() {
	st, now := p.st, p.now
	if o := st.Order; o != nil {
		fmt.Fprintf(p.tw, "Order %s:\n", o.ID)
		p.line("  ", "State", "%s", o.State)
		if o.Reason != "" {
			p.line("  ", "Reason", "%s", oneLine(o.Reason, 0))
		}
		if o.URL != "" {
			p.line("  ", "URL", "%s", o.URL)
		}
		if o.Replaces != "" {
			p.line("  ", "Replaces", "%s", o.Replaces)
		}
		if o.ReplacesRefused != "" {
			p.line("  ", "Replaces refused", "%s (ordered again without)", oneLine(o.ReplacesRefused, 0))
		}
		p.line("  ", "Identifiers", "%s", strings.Join(o.Identifiers, ", "))
		p.line("  ", "Authorizations", "%d (%d already valid at the CA: no challenge needed)", len(o.Authorizations), o.ReusedAuthzs)
		p.line("  ", "Created", "%s (%s)", stamp(o.Created), relative(o.Created, now))
		if !o.Finalized.IsZero() {
			p.line("  ", "Finalized", "%s", stamp(o.Finalized))
		}
	} else if st.Request != nil {
		fmt.Fprintln(p.tw, "Order:\tnone")
	}
}

// lastRenewal: the last renewal, when it is not the latest request.
func (p statusPrinter) lastRenewal() {
	st, now := p.st, p.now
	if lr := st.LastRenewal; lr != nil && (st.Request == nil || lr.ID != st.Request.ID) {
		fmt.Fprintf(p.tw, "Last renewal %s:\n", lr.ID)
		p.line("  ", "State", "%s", lr.State)
		if lr.Reason != "" {
			p.line("  ", "Reason", "%s", oneLine(lr.Reason, 0))
		}
		if r := lr.Renews; r != nil {
			p.line("  ", "Renews", "%s", renewsLine(r))
		}
		p.line("  ", "Created", "%s (%s)", stamp(lr.Created), relative(lr.Created, now))
		if o := st.LastRenewalOrder; o != nil {
			p.line("  ", "Order", "%s, %s", o.ID, o.State)
		}
	}
}

// challenges: each challenge and the time of each step.
func (p statusPrinter) challenges() {
	st := p.st
	if len(st.Challenges) > 0 {
		fmt.Fprintln(p.tw, "Challenges:")
	}
	for _, ch := range st.Challenges {
		name := ch.Name
		if ch.Wildcard {
			name = "*." + name
		}
		fmt.Fprintf(p.tw, "  - %s %s %s (%s):\n", name, ch.Type, ch.State, ch.ID)
		if ch.Reason != "" {
			p.line("      ", "Reason", "%s", oneLine(ch.Reason, 0))
		}
		p.line("      ", "Created", "%s", stamp(ch.Created))
		t := ch.Times
		for _, step := range []struct {
			label string
			at    time.Time
		}{
			{"Scheduled", t.Scheduled}, {"Synced", t.Synced}, {"Presented", t.Presented},
			{"Self-checked", t.SelfChecked}, {"Accepted", t.Accepted}, {"Finished", t.Finished},
		} {
			if step.at.IsZero() {
				p.line("      ", step.label, "-")
				continue
			}
			p.line("      ", step.label, "%s (+%s)", stamp(step.at), step.at.Sub(ch.Created).Round(time.Millisecond))
		}
		if ch.SelfChecks > 0 {
			p.line("      ", "Failed Self-checks", "%d", ch.SelfChecks)
		}
		for _, typ := range sortedKeys(ch.SelfCheckFailures) {
			p.line("      ", "Last failure ("+typ+")", "%s", oneLine(ch.SelfCheckFailures[typ], 0))
		}
	}
}
