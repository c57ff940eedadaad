package main

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/certflow/certflow/integration/rig"
	"github.com/certflow/certflow/issuer"
)

// resources are the certflow resources read back from storage.
type resources struct {
	requests   []issuer.CertificateRequest
	orders     []issuer.Order
	challenges []issuer.Challenge
}

// loadResources reads every stored CertificateRequest, Order and Challenge
// from the file-system storage at root, oldest first.
func loadResources(root string) (resources, error) {
	var res resources
	var err error
	if res.requests, err = loadKind[issuer.CertificateRequest](root, rig.ResourceRequests); err != nil {
		return res, err
	}
	if res.orders, err = loadKind[issuer.Order](root, rig.ResourceOrders); err != nil {
		return res, err
	}
	if res.challenges, err = loadKind[issuer.Challenge](root, rig.ResourceChallenges); err != nil {
		return res, err
	}
	sort.SliceStable(res.requests, func(i, j int) bool { return res.requests[i].Created.Before(res.requests[j].Created) })
	sort.SliceStable(res.orders, func(i, j int) bool { return res.orders[i].Created.Before(res.orders[j].Created) })
	sort.SliceStable(res.challenges, func(i, j int) bool { return res.challenges[i].Created.Before(res.challenges[j].Created) })
	return res, nil
}

// loadKind decodes the stored resources of one kind into T.
func loadKind[T any](root, kind string) ([]T, error) {
	raw, err := rig.LoadResources(root, kind)
	if err != nil {
		return nil, err
	}
	out := make([]T, 0, len(raw))
	for _, r := range raw {
		b, err := json.Marshal(r)
		if err != nil {
			return nil, fmt.Errorf("re-encoding a stored %s resource: %w", kind, err)
		}
		var v T
		if err := json.Unmarshal(b, &v); err != nil {
			return nil, fmt.Errorf("decoding a stored %s resource: %w", kind, err)
		}
		out = append(out, v)
	}
	return out, nil
}

// storedFor counts the resources of any kind stored for name.
func storedFor(root, name string) (int, error) {
	res, err := loadResources(root)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, r := range res.requests {
		if r.Name == name {
			n++
		}
	}
	for _, o := range res.orders {
		if o.Name == name {
			n++
		}
	}
	for _, c := range res.challenges {
		if c.Name == name {
			n++
		}
	}
	return n, nil
}

// printResources prints, for each name, its CertificateRequests, each with
// its Order and the Order's Challenges.
func printResources(out io.Writer, root string, names []string) error {
	res, err := loadResources(root)
	if err != nil {
		return err
	}
	for _, name := range names {
		fmt.Fprintf(out, "\n   %s\n", name)
		t := newTable()
		found := false
		for _, cr := range res.requests {
			if cr.Name != name {
				continue
			}
			found = true
			addRequest(t, cr)
			for _, o := range res.orders {
				if o.ID != cr.Order {
					continue
				}
				addOrder(t, o)
				for _, ch := range res.challenges {
					if ch.Order == o.ID {
						addChallenge(t, ch)
					}
				}
			}
		}
		if !found {
			t.row("(nothing stored)")
		}
		t.print(out, "     ")
	}
	return nil
}

// addRequest adds a CertificateRequest's row.
func addRequest(t *table, cr issuer.CertificateRequest) {
	details := []string{"took " + fmtDuration(time.Duration(cr.Took)), fmt.Sprintf("attempt %d", cr.Attempt)}
	if cr.OnDemand {
		details = append(details, "on demand")
	}
	t.row("CertificateRequest", cr.ID, cr.State, strings.Join(details, ", "))
	if cr.Reason != "" {
		t.row("", "", "", "reason: "+cr.Reason)
	}
	if !cr.NextAttempt.IsZero() {
		t.row("", "", "", "next attempt: "+cr.NextAttempt.UTC().Format(time.RFC3339))
	}
}

// addOrder adds an Order's row.
func addOrder(t *table, o issuer.Order) {
	n := len(o.Authorizations)
	details := fmt.Sprintf("%d authorization%s, %d reused", n, plural(n), o.ReusedAuthzs)
	t.row("Order", o.ID, o.State, details)
	if o.Reason != "" {
		t.row("", "", "", "reason: "+o.Reason)
	}
}

// addChallenge adds a Challenge's row.
func addChallenge(t *table, ch issuer.Challenge) {
	details := ch.Type
	if ch.SelfChecks > 1 {
		details += fmt.Sprintf(", %d self-checks", ch.SelfChecks)
	}
	t.row("Challenge", ch.ID, ch.State, details)
	if ch.Reason != "" {
		t.row("", "", "", "reason: "+ch.Reason)
	}
}

// printTimeline prints, for each challenge of the names, when it reached
// each step of its lifecycle, in milliseconds after it was created.
func printTimeline(out io.Writer, root string, names []string) error {
	res, err := loadResources(root)
	if err != nil {
		return err
	}
	t := newTable("NAME", "TYPE", "STATE", "SCHEDULED", "SYNCED", "PRESENTED", "SELF-CHECKED", "ACCEPTED", "FINISHED")
	for _, name := range names {
		for _, ch := range res.challenges {
			if ch.Name != name {
				continue
			}
			row := []string{name, ch.Type, ch.State}
			for _, at := range []time.Time{
				ch.Times.Scheduled, ch.Times.Synced, ch.Times.Presented,
				ch.Times.SelfChecked, ch.Times.Accepted, ch.Times.Finished,
			} {
				row = append(row, fmtMillis(at, ch.Created))
			}
			t.row(row...)
		}
	}
	t.print(out, "   ")
	return nil
}

// fmtMillis prints at as milliseconds after since, or "-" if at is unset.
func fmtMillis(at, since time.Time) string {
	if at.IsZero() {
		return "-"
	}
	ms := float64(at.Sub(since)) / float64(time.Millisecond)
	if ms < 10 {
		return fmt.Sprintf("%.1f", ms)
	}
	return fmt.Sprintf("%.0f", ms)
}

// caKinds are the request kinds reported, in the order a client meets them.
var caKinds = []string{
	rig.KindDirectory, rig.KindNonce, rig.KindNewAccount, rig.KindAccount,
	rig.KindNewOrder, rig.KindOrder, rig.KindOrders, rig.KindAuthz, rig.KindChall,
	rig.KindFinalize, rig.KindCert, rig.KindRenewalInfo, rig.KindRevoke,
	rig.KindKeyChange, rig.KindOther,
}

// printCACounts prints how many requests of each kind the CA received.
func printCACounts(out io.Writer, ca *rig.CA) {
	var header, counts []string
	total := 0
	for _, k := range caKinds {
		n := ca.Count(k)
		if n == 0 {
			continue
		}
		total += n
		header = append(header, strings.ToUpper(k))
		counts = append(counts, fmt.Sprint(n))
	}
	header = append(header, "TOTAL")
	counts = append(counts, fmt.Sprint(total))
	t := newTable(header...)
	t.row(counts...)
	t.print(out, "   ")
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// table is a small kubectl-style table: columns padded to their widest
// cell, separated by two spaces, the last column not padded.
type table struct {
	rows [][]string
}

// newTable returns a table with a header row, if any.
func newTable(header ...string) *table {
	t := &table{}
	if len(header) > 0 {
		t.row(header...)
	}
	return t
}

// row adds a row.
func (t *table) row(cells ...string) { t.rows = append(t.rows, cells) }

// print writes the table, each line prefixed with indent.
func (t *table) print(out io.Writer, indent string) {
	var widths []int
	for _, r := range t.rows {
		for i, c := range r[:max(len(r)-1, 0)] {
			if i >= len(widths) {
				widths = append(widths, 0)
			}
			widths[i] = max(widths[i], utf8.RuneCountInString(c))
		}
	}
	for _, r := range t.rows {
		var b strings.Builder
		b.WriteString(indent)
		for i, c := range r {
			b.WriteString(c)
			if i < len(r)-1 {
				b.WriteString(strings.Repeat(" ", widths[i]-utf8.RuneCountInString(c)+2))
			}
		}
		fmt.Fprintln(out, strings.TrimRight(b.String(), " "))
	}
}
