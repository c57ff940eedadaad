package integration

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/certflow/certflow/internal/dirsnap"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddytls"

	certflow "github.com/certflow/certflow"
	"github.com/certflow/certflow/integration/rig"
	"github.com/certflow/certflow/issuer"
)

// One name, one identity, and reads that change nothing, end to end: real
// handshakes against an in-process Caddy and Pebble, the admin API and the
// CLI as an operator uses them, and the storage directory compared byte for
// byte.

// certflowResource reports whether a storage path is one of certflow's
// resources (a name record, request, order or challenge), not an index
// marker or other bookkeeping.
func certflowResource(rel string) bool {
	parts := strings.Split(rel, "/")
	if len(parts) != 4 || parts[0] != "certflow" {
		return false
	}
	switch parts[2] {
	case "names", issuer.KindRequest, issuer.KindOrder, issuer.KindChallenge:
		return true
	}
	return false
}

// adminError decodes the error message of an admin API error answer.
func adminError(t *testing.T, body []byte) string {
	t.Helper()
	var e struct {
		Error string `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("an admin error answer that is not JSON: %s", body)
	}
	return e.Error
}

// TestAliasNamesNeverTouchTheVictim: certflow keeps a name's resources
// under certmagic's StorageKeys.Safe(name), which drops characters it does
// not like. Names whose storage form is another name's (vic,tim.test for
// victim.test, fe80--1 for the address fe80::1, wildcard_.test for *.test)
// are refused before anything touches storage or the CA, whether they come
// from a handshake or from the config (a platform that loads its customers'
// domains as managed names): the victims' name records (their backoff),
// orders and requests stay byte for byte what they were, nothing is stored
// for the aliases, and the CA never hears of them. The admin API and the
// CLI read names the same way: they normalise what an operator types and
// answer 400 with the reason for an invalid name, never the victim's status.
func TestAliasNamesNeverTouchTheVictim(t *testing.T) {
	schedulerIdle(t)
	e := newEnv(t, envOptions{})
	iss := observeIssuer(e)
	o := runObserved(t, e, iss)
	// victim.test is issued; pending.test failed once, and an operator
	// cleared its backoff (it has no certificate yet, so certmagic has
	// nothing of its own to answer an alias with, and no backoff refuses
	// the alias on its behalf)
	const victim, pending = "victim.test", "pending.test"
	o.mustHandshake(victim)
	e.ca.SetFault(rejectFirstOrder(pending, "synthetic refusal: pending.test is not pointed here yet"))
	if _, err := o.handshake(pending); err == nil {
		t.Fatal("the refused name was issued")
	}
	if status, _, body := o.call(http.MethodPost, "/certflow/retry/"+pending); status != http.StatusOK {
		t.Fatalf("POST retry of %s: HTTP %d %s", pending, status, body)
	}
	pendingRecord := nameRecordOf(t, e.storage, pending)
	if pendingRecord == nil || pendingRecord["failures"] != nil || pendingRecord["next_attempt"] != nil {
		t.Fatalf("record of %s after its refusal and the retry: %s", pending, dump(pendingRecord))
	}
	issuer.FlushIndex(10 * time.Second)
	before := dirsnap.Take(t, e.storage, certflowResource)

	var all []string
	unchanged := func(when string, aliases []string) {
		t.Helper()
		all = append(all, aliases...)
		issuer.FlushIndex(10 * time.Second)
		if diff := dirsnap.Diff(before, dirsnap.Take(t, e.storage, certflowResource)); diff != "" {
			t.Fatalf("%s, certflow's resources changed:\n%s\nrecord of %s now: %s", when, diff, pending, dump(nameRecordOf(t, e.storage, pending)))
		}
		for _, alias := range all {
			for _, kind := range []string{issuer.KindRequest, issuer.KindOrder, issuer.KindChallenge} {
				if rs := e.resources(kind, alias); len(rs) != 0 {
					t.Errorf("%s, %s stored for %q: %s", when, kind, alias, dump(rs))
				}
			}
			if n := e.ca.NewOrders(alias); n != 0 {
				t.Errorf("%s, the CA saw %d new orders for %q", when, n, alias)
			}
		}
	}

	// handshakes: certmagic turns the server name into an A-label first
	// (idna.Lookup), which refuses most of these itself; fe80--1 passes,
	// and only certflow refuses it
	sniAliases := []string{"vic,tim.test", "vic~tim.test", "victim.test/", "vic?tim.test", "fe80--1", "wildcard_.test"}
	for _, alias := range sniAliases {
		_, err := e.handshake(alias)
		if err == nil {
			t.Errorf("a handshake for %q succeeded", alias)
			continue
		}
		t.Logf("handshake for %q: %v", alias, err)
	}
	unchanged("after the aliases' handshakes", sniAliases)

	// managed names go to the issuer as they are written: the tls app's
	// Manage (what the http app calls with its sites' hosts, and modules
	// with names they were given) takes them as they are. Before,
	// pend,ing.test resumed pending.test's record, ordered, failed, and
	// pushed pending.test's backoff. (Called once Caddy has started: names
	// managed during the tls app's Start race with it inside Caddy.)
	managed := []string{"pend,ing.test", "pend~ing.test", "pending.test/", "pend?ing.test", "fe80--2", "wildcard_.pending.test"}
	cfg := e.config(iss)
	cfg.Policies = []rig.Policy{{Subjects: managed, Issuers: []map[string]any{iss}}}
	o = runObservedConfig(t, e, cfg, "cert_failed")
	app, err := caddy.ActiveContext().AppIfConfigured("tls")
	if err != nil {
		t.Fatal(err)
	}
	subjects := map[string]struct{}{}
	for _, n := range managed {
		subjects[n] = struct{}{}
	}
	if err := app.(*caddytls.TLS).Manage(subjects); err != nil {
		t.Fatalf("managing the aliases: %v", err)
	}
	// each alias ends in certmagic's cert_failed event; the storage is
	// compared whatever happened, so that a regression shows its damage
	reasons := map[string]string{}
	for deadline := time.Now().Add(pollMax); len(reasons) < len(managed) && time.Now().Before(deadline); time.Sleep(pollEvery) {
		for _, ev := range loggedEvents("cert_failed") {
			if id, _ := ev.Data["identifier"].(string); contains(managed, id) && reasons[id] == "" {
				reasons[id] = fmt.Sprint(ev.Data["error"])
			}
		}
	}
	for _, alias := range managed {
		reason, ok := reasons[alias]
		switch {
		case !ok:
			t.Errorf("managed %q: no cert_failed event within %s", alias, pollMax)
		case !strings.Contains(reason, "invalid name"):
			t.Errorf("managed %q failed for another reason than its name: %s", alias, reason)
		default:
			t.Logf("managed %q: %s", alias, reason)
		}
	}
	unchanged("after the managed aliases", managed)
	t.Logf("%s's name record unchanged: %s", pending, dump(pendingRecord))

	// --- the admin API reads names as certflow knows them
	st := o.status("VICTIM.Test.")
	if st.Name != victim || st.Record == nil {
		t.Errorf("status of VICTIM.Test.: %s", dump(st))
	}
	if reqs := o.list("/certflow/certificaterequests?name=" + url.QueryEscape("Victim.TEST.")); len(reqs) != 1 || reqs[0].str("name") != victim {
		t.Errorf("requests listed for Victim.TEST.: %s", dump(reqs))
	}
	for _, c := range []struct{ method, uri, reason string }{
		{http.MethodGet, "/certflow/status/vic,tim.test", "character ','"},
		{http.MethodGet, "/certflow/status/vic~tim.test", "character '~'"},
		{http.MethodGet, "/certflow/status/fe80--1", "IP address fe80::1"},
		{http.MethodGet, "/certflow/status/wildcard_.test", "underscore"},
		{http.MethodGet, "/certflow/status/a..test", "empty label"},
		{http.MethodGet, "/certflow/status/" + strings.Repeat("a", 64) + ".test", "longer than 63"},
		{http.MethodPost, "/certflow/retry/vic,tim.test", "character ','"},
		{http.MethodGet, "/certflow/orders?name=" + url.QueryEscape("vic,tim.test"), "character ','"},
		{http.MethodGet, "/certflow/challenges?name=" + url.QueryEscape("fe80--1"), "IP address fe80::1"},
	} {
		status, _, body := o.call(c.method, c.uri)
		if status != http.StatusBadRequest || !strings.Contains(adminError(t, body), c.reason) {
			t.Errorf("%s %s: HTTP %d %s; want 400 saying %q", c.method, c.uri, status, body, c.reason)
		}
	}
	// an internationalised name is looked up as its punycode form
	status, _, body := o.call(http.MethodGet, "/certflow/status/"+url.PathEscape("bücher.test"))
	if status != http.StatusNotFound || !strings.Contains(adminError(t, body), "xn--bcher-kva.test") {
		t.Errorf("status of bücher.test: HTTP %d %s; want 404 for xn--bcher-kva.test", status, body)
	}
	// retrying an alias of a backing-off name clears nothing of it
	status, _, body = o.call(http.MethodPost, "/certflow/retry/"+url.PathEscape("pend,ing.test"))
	if status != http.StatusBadRequest {
		t.Errorf("POST retry of pend,ing.test: HTTP %d %s, want 400", status, body)
	}

	// --- the CLI: the same reading, the same refusal
	if out, code := o.cli("VICTIM.test"); code != 0 || !strings.Contains(out, victim) {
		t.Errorf("caddy certflow status VICTIM.test: exit %d\n%s", code, out)
	}
	if out, code := o.cli("vic,tim.test"); code != certflow.StatusExitError || strings.Contains(out, victim) {
		t.Errorf("caddy certflow status vic,tim.test: exit %d, want %d and nothing of the victim\n%s", code, certflow.StatusExitError, out)
	}
	unchanged("after the admin API and the CLI", nil)
}

// plant writes a stored resource as a raw file, the way a newer certflow
// (or a damaged disk) might have left it.
func plant(t *testing.T, storage, issuerKey, kind, id, value string) string {
	t.Helper()
	p := filepath.Join(storage, "certflow", issuerKey, kind, id+".json")
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(value), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestAdminReadsChangeNothing: during a rolling upgrade an older node must
// not move or delete what a newer one wrote, nor anything else, by reading.
// After real issuances, records are made corrupt, older and newer than
// this certflow; then every admin GET (each name's status, every list,
// filtered and not) and the CLI run against the storage, and the storage
// directory is compared byte for byte. Caddy then runs with the admin API
// and the storage only, so that nothing but those reads could write. Last,
// certflow itself runs again and a handshake meets a name record and an
// order a newer certflow wrote: it fails, charged to nobody, and leaves
// both as they were.
func TestAdminReadsChangeNothing(t *testing.T) {
	schedulerIdle(t)
	e := newEnv(t, envOptions{})
	o := runObserved(t, e, observeIssuer(e))
	const okName, refused = "ok.test", "refused.test"
	o.mustHandshake(okName)
	e.ca.SetFault(rejectFirstOrder(refused, "synthetic refusal for the reads test"))
	if _, err := o.handshake(refused); err == nil {
		t.Fatal("the refused name was issued")
	}
	issuer.FlushIndex(10 * time.Second)
	if err := rig.StopCaddy(); err != nil {
		t.Fatal(err)
	}

	// the damage, with the issuer key the stored resources are under
	key := filepath.Base(filepath.Dir(filepath.Dir(plantedPath(t, e.storage, "names", okName))))
	okReq := e.resources(issuer.KindRequest, okName)
	okOrd := e.resources(issuer.KindOrder, okName)
	okCh := e.resources(issuer.KindChallenge, okName)
	refReq := e.resources(issuer.KindRequest, refused)
	if len(okReq) != 1 || len(okOrd) != 1 || len(okCh) != 1 || len(refReq) != 1 {
		t.Fatalf("resources after one issuance and one refusal: %d requests, %d orders, %d challenges of %s; %d requests of %s",
			len(okReq), len(okOrd), len(okCh), okName, len(refReq), refused)
	}
	newer := func(r resource) string {
		r = resource(copyObject(r))
		r["version"] = issuer.SchemaVersion + 1
		r["written_by"] = "a newer certflow"
		b, _ := json.Marshal(r)
		return string(b)
	}
	older := func(r resource) string {
		r = resource(copyObject(r))
		r["version"] = 0
		b, _ := json.Marshal(r)
		return string(b)
	}
	plant(t, e.storage, key, "names", okName, newer(resource(nameRecordOf(t, e.storage, okName))))
	plant(t, e.storage, key, issuer.KindOrder, okOrd[0].str("id"), newer(okOrd[0]))
	plant(t, e.storage, key, issuer.KindChallenge, okCh[0].str("id"), older(okCh[0]))
	plant(t, e.storage, key, issuer.KindRequest, okReq[0].str("id"), `{"version":1,"id":"`+okReq[0].str("id")+`","sta`)
	plant(t, e.storage, key, "names", refused, "\x00\x01 not JSON")
	plant(t, e.storage, key, issuer.KindRequest, refReq[0].str("id"), newer(refReq[0]))

	// --- a node that only reads: the admin API over the storage
	port, err := rig.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	cfg := e.config(nil)
	cfg.AdminListen = fmt.Sprintf("127.0.0.1:%d", port)
	m, err := cfg.Build()
	if err != nil {
		t.Fatal(err)
	}
	delete(m, "apps")
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := rig.RunCaddy(b); err != nil {
		t.Fatalf("starting Caddy with the admin API only: %v", err)
	}
	reader := &observed{env: e, admin: cfg.AdminListen}

	before := dirsnap.Take(t, e.storage, nil)
	st := reader.status(okName)
	problems := strings.Join(st.Problems, "\n")
	if st.Record != nil || !strings.Contains(problems, "names/"+okName+".json: written by a newer certflow") {
		t.Errorf("status of %s (its record newer): %s", okName, dump(st))
	}
	st = reader.status(refused)
	if st.Record != nil || !strings.Contains(strings.Join(st.Problems, "\n"), "names/"+refused+".json") {
		t.Errorf("status of %s (its record garbage): %s", refused, dump(st))
	}
	for _, uri := range []string{
		"/certflow/certificaterequests", "/certflow/orders", "/certflow/challenges",
		"/certflow/certificaterequests?name=" + okName, "/certflow/orders?name=" + okName, "/certflow/challenges?name=" + okName,
		"/certflow/certificaterequests?name=" + refused, "/certflow/certificaterequests?state=failed",
		"/certflow/orders?state=valid", "/certflow/challenges?state=valid", "/certflow/orders?limit=1",
	} {
		reader.list(uri)
	}
	if status, _, body := reader.call(http.MethodGet, "/certflow/status/nobody.test"); status != http.StatusNotFound {
		t.Errorf("status of an unknown name: HTTP %d %s", status, body)
	}
	if status, _, body := reader.call(http.MethodHead, "/certflow/status/"+okName); status != http.StatusOK {
		t.Errorf("HEAD status: HTTP %d %s", status, body)
	}
	out, _ := reader.cli()
	t.Logf("$ caddy certflow status\n%s", out)
	out, _ = reader.cli(okName)
	t.Logf("$ caddy certflow status %s\n%s", okName, out)
	if !strings.Contains(out, "written by a newer certflow") {
		t.Errorf("the CLI does not show the problem with %s's record", okName)
	}
	reader.cli(refused)
	if diff := dirsnap.Diff(before, dirsnap.Take(t, e.storage, nil)); diff != "" {
		t.Fatalf("admin reads changed the storage:\n%s", diff)
	}
	t.Logf("%d files in storage, unchanged by the reads", len(before))

	// --- certflow again: the workflow leaves newer records in place
	if err := rig.StopCaddy(); err != nil {
		t.Fatal(err)
	}
	// the garbage has served; the test's own readers decode every request
	for _, p := range []string{plantedPath(t, e.storage, issuer.KindRequest, okReq[0].str("id")), plantedPath(t, e.storage, "names", refused)} {
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
	}
	const newerName, newerOrder = "newer.test", "neworder.test"
	now := time.Now().UTC().Format(time.RFC3339Nano)
	newerRec := fmt.Sprintf(`{"version":%d,"name":%q,"failures":2,"updated":%q,"written_by":"a newer certflow"}`,
		issuer.SchemaVersion+1, newerName, now)
	recPath := plant(t, e.storage, key, "names", newerName, newerRec)
	const orderID = "20260101-000000.000000000-0000abcd"
	orderRec := fmt.Sprintf(`{"version":%d,"name":%q,"current_order":%q,"updated":%q}`, issuer.SchemaVersion, newerOrder, orderID, now)
	plant(t, e.storage, key, "names", newerOrder, orderRec)
	newOrder := fmt.Sprintf(`{"version":%d,"id":%q,"name":%q,"identifiers":[%q],"state":"pending","url":"https://ca.invalid/order/1","created":%q}`,
		issuer.SchemaVersion+1, orderID, newerOrder, newerOrder, now)
	orderPath := plant(t, e.storage, key, issuer.KindOrder, orderID, newOrder)
	runObserved(t, e, observeIssuer(e))

	for _, name := range []string{newerName, newerOrder} {
		start := time.Now()
		_, err := e.handshake(name)
		if err == nil {
			t.Fatalf("a handshake for %s succeeded", name)
		}
		took := time.Since(start)
		t.Logf("handshake for %s failed in %s: %v", name, took.Round(time.Millisecond), err)
		if strings.Contains(err.Error(), "deadline exceeded") {
			// certmagic waits a minute to retry an on-demand failure
			// that is not final: nothing this process does can help
			t.Errorf("the handshake for %s waited out the client's deadline instead of failing at once", name)
		}
		if n := e.ca.NewOrders(name); n != 0 {
			t.Errorf("the CA saw %d new orders for %s", n, name)
		}
	}
	for path, want := range map[string]string{recPath: newerRec, orderPath: newOrder} {
		got, err := os.ReadFile(path)
		if err != nil || string(got) != want {
			t.Errorf("%s is now %q (%v), want it left as the newer certflow wrote it", path, got, err)
		}
	}
	rec := nameRecordOf(t, e.storage, newerOrder)
	if f, _ := rec["failures"].(float64); f != 0 || rec["next_attempt"] != nil {
		t.Errorf("a newer order was charged to %s: %s", newerOrder, dump(rec))
	}
	reqs := e.resources(issuer.KindRequest, newerOrder)
	if len(reqs) != 1 || !strings.Contains(reqs[0].str("reason"), "written by a newer certflow") {
		t.Errorf("requests of %s: %s", newerOrder, dump(reqs))
	}
	if len(e.resources(issuer.KindRequest, newerName)) != 0 {
		t.Errorf("a request was stored for %s, whose record a newer certflow owns", newerName)
	}
	aside, _ := filepath.Glob(filepath.Join(e.storage, "certflow", key, "corrupt", "*"))
	for _, a := range aside {
		if strings.Contains(a, newerName) || strings.Contains(a, orderID) {
			t.Errorf("a newer record was set aside: %s", a)
		}
	}
}

// plantedPath finds the stored file of a resource, under whichever issuer
// key it is.
func plantedPath(t *testing.T, storage, kind, id string) string {
	t.Helper()
	matches, _ := filepath.Glob(filepath.Join(storage, "certflow", "*", kind, id+".json"))
	if len(matches) != 1 {
		t.Fatalf("stored %s %s: %v", kind, id, matches)
	}
	return matches[0]
}

// copyObject copies a decoded JSON object.
func copyObject(r map[string]any) map[string]any {
	out := make(map[string]any, len(r))
	for k, v := range r {
		out[k] = v
	}
	return out
}

// TestRetryAnswersWhileIssuanceInFlight: POST /certflow/retry/<name> while
// the name's issuance is held in a failing self-check answers at once (409,
// saying an issuance is in flight and its backoff was not cleared) instead of
// waiting for certmagic's lock on the name; once the issuance ends the
// handshake gets its certificate and a retry answers 200.
func TestRetryAnswersWhileIssuanceInFlight(t *testing.T) {
	schedulerIdle(t)
	e := newEnv(t, envOptions{})
	o := runObserved(t, e, e.issuer(map[string]any{
		"challenges": map[string]any{"tls-alpn": map[string]any{"disabled": true}},
		"self_check": map[string]any{"interval": "100ms", "timeout": "25s", "attempt_timeout": "1s"},
	}))
	const name = "inflight.test"
	e.block(name)
	wait := e.handshakeAsync(name)
	waitFor(t, "the issuance to be held in its self-check", pollMax, func() bool {
		chs := e.resources(issuer.KindChallenge, name)
		if len(chs) != 1 || nameRecordOf(t, e.storage, name) == nil {
			return false
		}
		n, _ := chs[0]["self_checks"].(float64)
		return n >= 2
	})

	client := &http.Client{Timeout: 10 * time.Second}
	start := time.Now()
	resp, err := client.Post("http://"+o.admin+"/certflow/retry/"+name, "", nil)
	took := time.Since(start)
	if err != nil {
		t.Fatalf("POST retry while the issuance is in flight: %v (after %s)", err, took.Round(time.Millisecond))
	}
	var answer struct {
		Error string `json:"error"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&answer)
	resp.Body.Close()
	t.Logf("POST retry while in flight: HTTP %d in %s: %s", resp.StatusCode, took.Round(time.Millisecond), answer.Error)
	if resp.StatusCode != http.StatusConflict || !strings.Contains(answer.Error, "in flight") || !strings.Contains(answer.Error, "its backoff was not") {
		t.Errorf("POST retry while in flight: HTTP %d %q; want 409 saying an issuance is in flight", resp.StatusCode, answer.Error)
	}
	if chs := e.resources(issuer.KindChallenge, name); len(chs) != 1 || isFinalChallenge(chs[0].str("state")) {
		t.Fatalf("the issuance was not in flight any more when retry answered: %s", dump(chs))
	}

	e.unblock(name)
	if r := wait()[name]; r.err != nil {
		t.Fatalf("the handshake held in flight: %v", r.err)
	}
	status, _, body := o.call(http.MethodPost, "/certflow/retry/"+name)
	if status != http.StatusOK {
		t.Errorf("POST retry once the issuance ended: HTTP %d %s", status, body)
	}
}

func isFinalChallenge(state string) bool {
	return state == issuer.ChallengeValid || state == issuer.ChallengeInvalid || state == issuer.ChallengeErrored
}
