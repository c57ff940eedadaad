package issuer

import (
	"context"
	"crypto/x509"
	"math/big"
	"testing"
	"time"

	"github.com/mholt/acmez/v3/acme"
)

// TestRenewalReason: why certmagic renews a certificate, told from what is
// stored, as certmagic decides it (ARI's selected time less one check
// interval, the lifetime ratio, imminent expiry; expired; forced).
func TestRenewalReason(t *testing.T) {
	now := time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)
	// 90 days, issued 30 days ago: a third of the lifetime is left in 30 days
	leaf := &x509.Certificate{SerialNumber: big.NewInt(7), NotBefore: now.Add(-30 * 24 * time.Hour), NotAfter: now.Add(60*24*time.Hour - time.Second)}
	window := func(start, end time.Time) *acme.RenewalInfo {
		ri := &acme.RenewalInfo{}
		ri.SuggestedWindow.Start, ri.SuggestedWindow.End = start, end
		return ri
	}
	selected := func(at time.Time) *acme.RenewalInfo {
		ri := window(at.Add(-time.Hour), at.Add(time.Hour))
		ri.SelectedTime = at
		return ri
	}
	tests := []struct {
		desc   string
		leaf   *x509.Certificate
		ari    *acme.RenewalInfo
		opts   Options
		forced bool
		want   string
	}{
		{desc: "asked for", leaf: leaf, forced: true, want: RenewalForced},
		{desc: "nothing makes it due: forced by certmagic", leaf: leaf, want: RenewalForced},
		{desc: "the ARI time has come", leaf: leaf, ari: selected(now.Add(-time.Minute)), want: RenewalARIWindow},
		{desc: "within one check interval of the ARI time", leaf: leaf, ari: selected(now.Add(5 * time.Minute)), want: RenewalARIWindow},
		{desc: "the ARI time is still ahead", leaf: leaf, ari: selected(now.Add(time.Hour)), want: RenewalForced},
		{desc: "ARI disabled", leaf: leaf, ari: selected(now.Add(-time.Minute)), opts: Options{DisableARI: true}, want: RenewalForced},
		{desc: "an ARI window without a selected time counts from its start", leaf: leaf, ari: window(now.Add(-time.Hour), now.Add(time.Hour)), want: RenewalARIWindow},
		{desc: "the policy's ratio reached", leaf: leaf, opts: Options{RenewalWindowRatio: 0.75}, want: RenewalLifetime},
		{desc: "the default ratio (1/3) reached", leaf: &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: now.Add(-70 * 24 * time.Hour), NotAfter: now.Add(20 * 24 * time.Hour)}, want: RenewalLifetime},
		{desc: "imminent: less than five check intervals left", leaf: &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Minute)},
			ari: selected(now.Add(30 * time.Second)), opts: Options{RenewCheckInterval: time.Second, RenewalWindowRatio: 0.01}, want: RenewalLifetime},
		{desc: "expired", leaf: &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: now.Add(-2 * time.Hour), NotAfter: now.Add(-time.Hour)}, want: RenewalExpired},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			if got := renewalReason(tt.leaf, tt.ari, &tt.opts, tt.forced, now); got != tt.want {
				t.Errorf("reason %q, want %q", got, tt.want)
			}
		})
	}
}

// TestPlanRenewal: when a certificate is due, and why, for the status view.
func TestPlanRenewal(t *testing.T) {
	nb := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: nb, NotAfter: nb.Add(90*24*time.Hour - time.Second)}
	plan := PlanRenewal(leaf, nil, RenewalPolicy{})
	if want := nb.Add(60 * 24 * time.Hour); !plan.At.Equal(want) || plan.Reason != RenewalLifetime {
		t.Errorf("without ARI: %+v, want %s (lifetime)", plan, want)
	}
	ari := &acme.RenewalInfo{SelectedTime: nb.Add(50 * 24 * time.Hour)}
	plan = PlanRenewal(leaf, ari, RenewalPolicy{CheckInterval: time.Minute})
	if want := ari.SelectedTime.Add(-time.Minute); !plan.At.Equal(want) || plan.Reason != RenewalARIWindow {
		t.Errorf("with ARI: %+v, want %s (ari_window)", plan, want)
	}
	if plan := PlanRenewal(leaf, ari, RenewalPolicy{DisableARI: true}); plan.Reason != RenewalLifetime {
		t.Errorf("ARI disabled: %+v", plan)
	}
}

// TestForcedRenewalReportsItsRequest: a renewal forced with a marked
// context is recorded as forced, and the mark learns the request's ID.
func TestForcedRenewalReportsItsRequest(t *testing.T) {
	r := newBranchRig(t, nil)
	const name = "forced.example"
	r.issueAndStore(name, nil)
	f := NewForcedRenewal()
	if f.RequestID() != "" {
		t.Fatal("a request ID before any request")
	}
	ctx, cancel := context.WithTimeout(WithForcedRenewal(context.Background(), f), 30*time.Second)
	defer cancel()
	if _, err := r.engine.Issue(ctx, Request{CSR: newTestCSR(t, name), Options: r.opts}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-f.Created():
	default:
		t.Fatal("the mark was never told the request")
	}
	crs := r.requests(name)
	last := crs[len(crs)-1]
	if f.RequestID() != last.ID || last.Renews == nil || last.Renews.Reason != RenewalForced {
		t.Errorf("reported %q; the request %s renews %+v", f.RequestID(), last.ID, last.Renews)
	}
}
