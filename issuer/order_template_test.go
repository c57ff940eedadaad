package issuer

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mholt/acmez/v3/acme"
)

// directoryServer serves an ACME directory whose meta lists profiles (nil:
// no meta at all) and counts the requests.
func directoryServer(t *testing.T, profiles map[string]string) (*Engine, *atomic.Int32) {
	t.Helper()
	var hits atomic.Int32
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		dir := map[string]any{"newNonce": "x", "newAccount": "x", "newOrder": "x"}
		if profiles != nil {
			dir["meta"] = map[string]any{"profiles": profiles}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(dir)
	}))
	t.Cleanup(srv.Close)
	ca := &acmeCA{client: &acme.Client{Directory: srv.URL + "/dir", HTTPClient: srv.Client()}}
	e, err := NewEngine(AccountConfig{CA: srv.URL + "/dir"}, ca, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return e, &hits
}

func TestNewOrderTemplate(t *testing.T) {
	ids := []acme.Identifier{{Type: "dns", Value: "a.test"}}

	t.Run("profile offered, lifetime set", func(t *testing.T) {
		e, hits := directoryServer(t, map[string]string{"classic": "", "shortlived": ""})
		w := &workflow{engine: e, ids: ids, opts: &Options{Profile: "shortlived", CertificateLifetime: 6 * time.Hour}}
		if err := w.checkOrderProfile(context.Background()); err != nil {
			t.Fatal(err)
		}
		before := time.Now()
		tmpl := w.newOrderRequest("")
		if tmpl.Profile != "shortlived" || len(tmpl.Identifiers) != 1 {
			t.Errorf("template %+v", tmpl)
		}
		if tmpl.NotAfter == nil || tmpl.NotAfter.Before(before.Add(6*time.Hour).Truncate(time.Second)) ||
			tmpl.NotAfter.After(time.Now().Add(6*time.Hour)) || tmpl.NotAfter.Nanosecond() != 0 {
			t.Errorf("notAfter %v, want 6h from now in whole seconds", tmpl.NotAfter)
		}
		// the directory is read once and then cached by acmez
		if err := w.checkOrderProfile(context.Background()); err != nil {
			t.Fatal(err)
		}
		if n := hits.Load(); n != 1 {
			t.Errorf("the directory was fetched %d times, want 1", n)
		}
	})

	t.Run("profile not offered", func(t *testing.T) {
		e, _ := directoryServer(t, map[string]string{"tlsserver": "", "classic": ""})
		w := &workflow{engine: e, ids: ids, opts: &Options{Profile: "shortlived"}}
		err := w.checkOrderProfile(context.Background())
		var perr *ProfileError
		if !errors.As(err, &perr) || !strings.Contains(err.Error(), `ACME profile "shortlived" is not offered by the CA; its directory offers: classic, tlsserver`) {
			t.Fatalf("got %v", err)
		}
		// the policy's mistake: nobody's failure count grows
		if party, _ := chargedTo(err); party != PartyNobody {
			t.Errorf("charged to %s, want nobody", party)
		}
	})

	t.Run("CA without profiles", func(t *testing.T) {
		e, _ := directoryServer(t, nil)
		w := &workflow{engine: e, ids: ids, opts: &Options{Profile: "shortlived"}}
		err := w.checkOrderProfile(context.Background())
		if err == nil || !strings.Contains(err.Error(), "offers no profiles; remove profile") {
			t.Fatalf("got %v", err)
		}
	})

	t.Run("no profile, no lifetime: the directory is not read", func(t *testing.T) {
		e, hits := directoryServer(t, nil)
		w := &workflow{engine: e, ids: ids, opts: &Options{}}
		if err := w.checkOrderProfile(context.Background()); err != nil {
			t.Fatal(err)
		}
		if tmpl := w.newOrderRequest(""); tmpl.Profile != "" || tmpl.NotAfter != nil {
			t.Fatalf("template %+v", tmpl)
		}
		if n := hits.Load(); n != 0 {
			t.Errorf("the directory was fetched %d times", n)
		}
	})
}

func TestOrderTermsChanged(t *testing.T) {
	for _, tc := range []struct {
		want, stored string
		replace      bool
	}{
		{"", "", false},
		{"", "classic", false}, // no preference: any profile will do
		{"shortlived", "shortlived", false},
		{"shortlived", "classic", true},
		{"shortlived", "", true},
	} {
		w := &workflow{opts: &Options{Profile: tc.want}}
		why := w.orderTermsChanged(&Order{Profile: tc.stored})
		if (why != "") != tc.replace {
			t.Errorf("policy %q, stored order %q: replace %v (%q), want %v", tc.want, tc.stored, why != "", why, tc.replace)
		}
	}
}

func TestDecisionContext(t *testing.T) {
	opts := &Options{PollTimeout: 20 * time.Millisecond}
	ctx, cancel := opts.decisionContext(context.Background())
	defer cancel()
	<-ctx.Done()
	err := decisionError(ctx, errors.New("polling authorization x: context deadline exceeded"))
	if !errors.Is(err, context.DeadlineExceeded) || !strings.HasPrefix(err.Error(), "the CA did not decide within acme_timeout 20ms: polling") {
		t.Errorf("got %v", err)
	}
	// without a bound, or for an error of its own, nothing changes
	plain := errors.New("boom")
	ctx2, cancel2 := (&Options{}).decisionContext(context.Background())
	cancel2()
	if got := decisionError(ctx2, plain); got != plain {
		t.Errorf("got %v", got)
	}
	if _, ok := ctx2.Deadline(); ok {
		t.Error("a context without acme_timeout has a deadline")
	}
}
