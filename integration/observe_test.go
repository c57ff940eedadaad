package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	certflow "github.com/certflow/certflow"
	"github.com/certflow/certflow/integration/rig"
)

// The observability surface end to end: Caddy runs in this process with its
// admin endpoint on a free loopback port and an events app subscription to
// everything certflow emits; names are issued and failed against Pebble,
// and the admin API, `caddy certflow status`, the events and /metrics are
// read as an operator would.

func init() {
	caddy.RegisterModule(eventRecorder{})
}

// eventRecorder is an events.handlers module that records every event it
// is given, process-wide (Caddy is a process singleton).
type eventRecorder struct{}

func (eventRecorder) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "events.handlers.certflow_test_recorder", New: func() caddy.Module { return new(eventRecorder) }}
}

// recordedEvent is one event the eventLog got.
type recordedEvent struct {
	Name   string
	Origin string
	Data   map[string]any
}

var eventLog struct {
	mu     sync.Mutex
	events []recordedEvent
}

func (eventRecorder) Handle(_ context.Context, e caddy.Event) error {
	origin := ""
	if m := e.Origin(); m != nil {
		origin = string(m.CaddyModule().ID)
	}
	data := make(map[string]any, len(e.Data))
	for k, v := range e.Data {
		data[k] = v
	}
	eventLog.mu.Lock()
	defer eventLog.mu.Unlock()
	eventLog.events = append(eventLog.events, recordedEvent{Name: e.Name(), Origin: origin, Data: data})
	return nil
}

func resetEventLog() {
	eventLog.mu.Lock()
	defer eventLog.mu.Unlock()
	eventLog.events = nil
}

// loggedEventsFor returns the recorded events whose data names name, in order.
func loggedEventsFor(name string) []recordedEvent {
	eventLog.mu.Lock()
	defer eventLog.mu.Unlock()
	var out []recordedEvent
	for _, e := range eventLog.events {
		if e.Data["name"] == name {
			out = append(out, e)
		}
	}
	return out
}

// loggedEvents returns the recorded events called name, in order.
func loggedEvents(name string) []recordedEvent {
	eventLog.mu.Lock()
	defer eventLog.mu.Unlock()
	var out []recordedEvent
	for _, e := range eventLog.events {
		if e.Name == name {
			out = append(out, e)
		}
	}
	return out
}

func loggedEventNames(evs []recordedEvent) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.Name
	}
	return out
}

// observed is an env whose Caddy has an admin endpoint and the eventLog.
type observed struct {
	*env
	admin string // host:port of the admin endpoint
}

// runObserved starts Caddy for e with the admin endpoint on a free port and
// an events app subscription of the eventLog to certflow's module.
func runObserved(t *testing.T, e *env, iss map[string]any) *observed {
	t.Helper()
	return runObservedConfig(t, e, e.config(iss))
}

// runObservedConfig is runObserved with a config of the caller's, and the
// eventLog also subscribed to the named events of any module (e.g.
// certmagic's "cert_failed").
func runObservedConfig(t *testing.T, e *env, cfg rig.CaddyConfig, events ...string) *observed {
	t.Helper()
	port, err := rig.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	cfg.AdminListen = fmt.Sprintf("127.0.0.1:%d", port)
	m, err := cfg.Build()
	if err != nil {
		t.Fatal(err)
	}
	recorder := []any{map[string]any{"handler": "certflow_test_recorder"}}
	subscriptions := []any{map[string]any{"modules": []string{"tls.issuance.certflow"}, "handlers": recorder}}
	if len(events) > 0 {
		subscriptions = append(subscriptions, map[string]any{"events": events, "handlers": recorder})
	}
	m["apps"].(map[string]any)["events"] = map[string]any{"subscriptions": subscriptions}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	resetEventLog()
	if err := rig.RunCaddy(b); err != nil {
		t.Fatalf("starting Caddy: %v", err)
	}
	if !e.running {
		e.running = true
		t.Cleanup(func() { _ = rig.StopCaddy() })
	}
	return &observed{env: e, admin: cfg.AdminListen}
}

var observeAdminClient = &http.Client{Timeout: 30 * time.Second}

// call makes an admin API request and returns the status, headers and raw
// body; every body is checked for key material.
func (o *observed) call(method, uri string) (int, http.Header, []byte) {
	o.t.Helper()
	req, err := http.NewRequest(method, "http://"+o.admin+uri, nil)
	if err != nil {
		o.t.Fatal(err)
	}
	resp, err := observeAdminClient.Do(req)
	if err != nil {
		o.t.Fatalf("%s %s: %v", method, uri, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		o.t.Fatal(err)
	}
	o.noKeyMaterial(uri, body)
	return resp.StatusCode, resp.Header, body
}

// get fetches uri, which must answer 200, and decodes the JSON into v.
func (o *observed) get(uri string, v any) http.Header {
	o.t.Helper()
	status, h, body := o.call(http.MethodGet, uri)
	if status != http.StatusOK {
		o.t.Fatalf("GET %s: HTTP %d: %s", uri, status, body)
	}
	if err := json.Unmarshal(body, v); err != nil {
		o.t.Fatalf("GET %s: %v: %s", uri, err, body)
	}
	return h
}

func (o *observed) noKeyMaterial(what string, raw []byte) {
	o.t.Helper()
	for _, bad := range []string{"PRIVATE KEY", "keyAuthorization", "key_authorization", "mac_key", "MAC_KEY"} {
		if bytes.Contains(raw, []byte(bad)) {
			o.t.Fatalf("%s: the response holds %q:\n%s", what, bad, raw)
		}
	}
	for _, r := range o.resources("challenges", "") {
		if tok := r.str("token"); tok != "" {
			if bytes.Contains(raw, []byte(tok+".")) {
				o.t.Fatalf("%s: the response holds a key authorization (token %s followed by a thumbprint):\n%s", what, tok, raw)
			}
		}
	}
}

// list fetches a list endpoint.
func (o *observed) list(uri string) []resource {
	o.t.Helper()
	var out []resource
	o.get(uri, &out)
	return out
}

// status fetches /certflow/status/<name>.
func (o *observed) status(name string) certflow.NameStatus {
	o.t.Helper()
	var st certflow.NameStatus
	o.get("/certflow/status/"+name, &st)
	return st
}

// cli runs `caddy certflow status --address <admin> [args]` in process,
// returning its standard output and exit status.
func (o *observed) cli(args ...string) (string, int) {
	o.t.Helper()
	cmdDef, ok := caddycmd.Commands()["certflow"]
	if !ok {
		o.t.Fatal("the certflow subcommand is not registered")
	}
	root := &cobra.Command{Use: "certflow", SilenceUsage: true}
	cmdDef.CobraFunc(root)
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(append([]string{"status", "--address", o.admin}, args...))
	err := root.Execute()
	code := cliExitCode(err)
	if bin := os.Getenv("CERTFLOW_CADDY_BIN"); bin != "" {
		// the same through a real binary (go build -o $bin ./cmd/caddy)
		cmd := exec.Command(bin, append([]string{"certflow", "status", "--address", o.admin}, args...)...)
		var binOut bytes.Buffer
		cmd.Stdout = &binOut
		runErr := cmd.Run()
		binCode := 0
		if ee, ok := runErr.(*exec.ExitError); ok {
			binCode = ee.ExitCode()
		} else if runErr != nil {
			o.t.Fatalf("running %s: %v", bin, runErr)
		}
		o.t.Logf("$ caddy certflow status %s   # exit status %d\n%s", strings.Join(args, " "), binCode, binOut.String())
		if binCode != code {
			o.t.Errorf("the binary exited %d, the in-process command %d", binCode, code)
		}
	}
	o.noKeyMaterial("caddy certflow status", out.Bytes())
	return out.String(), code
}

// exitCode is the process exit status caddycmd.Main would use for err.
func cliExitCode(err error) int {
	if err == nil {
		return 0
	}
	v := reflect.ValueOf(err)
	if v.Kind() == reflect.Pointer && v.Elem().Kind() == reflect.Struct {
		if f := v.Elem().FieldByName("ExitCode"); f.IsValid() && f.CanInt() {
			return int(f.Int())
		}
	}
	return 1
}

// metricsSnapshot is a scrape of /metrics: series (name with its labels
// sorted, as "name{a=\"x\",b=\"y\"}") to value.
type metricsSnapshot map[string]float64

func (o *observed) scrape() metricsSnapshot {
	o.t.Helper()
	status, _, body := o.call(http.MethodGet, "/metrics")
	if status != http.StatusOK {
		o.t.Fatalf("GET /metrics: HTTP %d", status)
	}
	snap := metricsSnapshot{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") || !strings.HasPrefix(line, "certflow_") {
			continue
		}
		sp := strings.LastIndexByte(line, ' ')
		if sp < 0 {
			continue
		}
		val, err := strconv.ParseFloat(line[sp+1:], 64)
		if err != nil {
			continue
		}
		snap[canonicalSeries(line[:sp])] = val
	}
	return snap
}

// canonicalSeries sorts a series' labels.
func canonicalSeries(s string) string {
	name, labels, ok := strings.Cut(s, "{")
	if !ok {
		return s
	}
	parts := strings.Split(strings.TrimSuffix(labels, "}"), ",")
	sort.Strings(parts)
	return name + "{" + strings.Join(parts, ",") + "}"
}

// series builds a canonical series name from name and label pairs.
func metricSeries(name string, kv ...string) string {
	if len(kv) == 0 {
		return name
	}
	var parts []string
	for i := 0; i+1 < len(kv); i += 2 {
		parts = append(parts, fmt.Sprintf("%s=%q", kv[i], kv[i+1]))
	}
	sort.Strings(parts)
	return name + "{" + strings.Join(parts, ",") + "}"
}

// delta checks that each series changed by exactly the given amount
// between two scrapes (a missing series counts as 0).
func metricDelta(t *testing.T, before, after metricsSnapshot, want map[string]float64) {
	t.Helper()
	for s, d := range want {
		if got := after[s] - before[s]; got != d {
			t.Errorf("metric %s changed by %v, want %v (before %v, after %v)", s, got, d, before[s], after[s])
		}
	}
}

// observeIssuer is the issuer config of these tests: HTTP-01 only, quick
// self-check retries with a short timeout, so a name that cannot be reached
// fails in about a second.
func observeIssuer(e *env) map[string]any {
	return e.issuer(map[string]any{
		"challenges": map[string]any{"tls-alpn": map[string]any{"disabled": true}},
		"self_check": map[string]any{"interval": "100ms", "timeout": "1500ms", "attempt_timeout": "1s"},
	})
}

// TestObserveIssuanceAndFailure: after one issuance and two failures (a CA
// refusal, and a challenge whose self-check never passes), the admin API,
// the CLI, the events and the metrics show the chain with states and
// reasons, and nothing returned holds key material.
func TestObserveIssuanceAndFailure(t *testing.T) {
	schedulerIdle(t)
	e := newEnv(t, envOptions{})
	o := runObserved(t, e, observeIssuer(e))

	const okName, refused, unreachableName = "ok.test", "refused.test", "unreach.test"
	before := o.scrape()
	o.mustHandshake(okName)
	afterOK := o.scrape()

	// --- events of one issuance, in order
	evs := loggedEventsFor(okName)
	wantSeq := []string{
		"certflow_request_created",
		"certflow_order_created",
		"certflow_challenge_queued",
		"certflow_challenge_scheduled",
		"certflow_challenge_synced",
		"certflow_challenge_presented",
		"certflow_challenge_self_checked",
		"certflow_challenge_accepted",
		"certflow_challenge_valid",
		"certflow_order_ready",
		"certflow_order_processing",
		"certflow_order_valid",
		"certflow_request_ready",
	}
	if got := loggedEventNames(evs); !slices.Equal(got, wantSeq) {
		t.Fatalf("events for %s:\n got %v\nwant %v", okName, got, wantSeq)
	}
	reqs := o.resources("requests", okName)
	orders := o.resources("orders", okName)
	chals := o.resources("challenges", okName)
	if len(reqs) != 1 || len(orders) != 1 || len(chals) != 1 {
		t.Fatalf("stored: %d requests, %d orders, %d challenges", len(reqs), len(orders), len(chals))
	}
	for _, ev := range evs {
		if ev.Origin != "tls.issuance.certflow" {
			t.Errorf("%s has origin %q", ev.Name, ev.Origin)
		}
		if _, ok := ev.Data["took"].(float64); !ok && ev.Name != "certflow_request_created" {
			t.Errorf("%s has no took in seconds: %v", ev.Name, ev.Data)
		}
		switch {
		case strings.HasPrefix(ev.Name, "certflow_request_"):
			if ev.Data["request"] != reqs[0].str("id") {
				t.Errorf("%s: request %v, want %s", ev.Name, ev.Data["request"], reqs[0].str("id"))
			}
		case strings.HasPrefix(ev.Name, "certflow_order_"):
			if ev.Data["order"] != orders[0].str("id") || ev.Data["request"] != reqs[0].str("id") {
				t.Errorf("%s: data %v", ev.Name, ev.Data)
			}
		case strings.HasPrefix(ev.Name, "certflow_challenge_"):
			if ev.Data["challenge"] != chals[0].str("id") || ev.Data["order"] != orders[0].str("id") ||
				ev.Data["challenge_type"] != "http-01" || ev.Data["state"] == nil {
				t.Errorf("%s: data %v", ev.Name, ev.Data)
			}
		}
	}
	t.Logf("events for %s: %v", okName, loggedEventNames(evs))

	// --- metrics of one issuance
	metricDelta(t, before, afterOK, map[string]float64{
		metricSeries("certflow_certificate_requests_total", "outcome", "ready"):                        1,
		metricSeries("certflow_certificate_requests_total", "outcome", "failed"):                       0,
		metricSeries("certflow_orders_total", "outcome", "valid", "challenge_type", "http-01"):         1,
		metricSeries("certflow_challenges_total", "outcome", "valid", "challenge_type", "http-01"):     1,
		metricSeries("certflow_order_creation_seconds_count"):                                          1,
		metricSeries("certflow_challenge_present_to_valid_seconds_count", "challenge_type", "http-01"): 1,
		metricSeries("certflow_challenge_self_check_wait_seconds_count", "challenge_type", "http-01"):  1,
		metricSeries("certflow_order_finalize_seconds_count"):                                          1,
		metricSeries("certflow_issuance_seconds_count", "outcome", "ready"):                            1,
		metricSeries("certflow_backoffs_total"):                                                        0,
		metricSeries("certflow_ca_rate_limited_total"):                                                 0,
	})
	if n := afterOK[metricSeries("certflow_ca_responses_total", "status_class", "2xx")] - before[metricSeries("certflow_ca_responses_total", "status_class", "2xx")]; n < 6 {
		t.Errorf("an issuance made %v 2xx CA responses, want at least 6 (nonce, order, authorization, challenge, finalize, certificate)", n)
	}
	for _, g := range []string{"certflow_scheduler_live_challenges", "certflow_scheduler_queued_challenges"} {
		if v, ok := afterOK[g]; !ok || v != 0 {
			t.Errorf("gauge %s = %v (present %v), want 0 when idle", g, v, ok)
		}
	}

	// --- a refusal by the CA
	if err := e.ca.BlockDomain(refused); err != nil {
		t.Fatal(err)
	}
	if _, err := o.handshake(refused); err == nil {
		t.Fatalf("handshake for %s, which the CA refuses, succeeded", refused)
	}
	afterRefusal := o.scrape()
	metricDelta(t, afterOK, afterRefusal, map[string]float64{
		metricSeries("certflow_certificate_requests_total", "outcome", "failed"): 1,
		metricSeries("certflow_issuance_seconds_count", "outcome", "failed"):     1,
		metricSeries("certflow_backoffs_total"):                                  1,
		metricSeries("certflow_order_creation_seconds_count"):                    0,
	})
	if d := afterRefusal[metricSeries("certflow_ca_responses_total", "status_class", "4xx")] - afterOK[metricSeries("certflow_ca_responses_total", "status_class", "4xx")]; d < 1 {
		t.Errorf("the refusal did not count a 4xx CA response")
	}
	if got, want := loggedEventNames(loggedEventsFor(refused)), []string{"certflow_request_created", "certflow_backoff", "certflow_request_failed"}; !slices.Equal(got, want) {
		t.Errorf("events for %s: got %v, want %v", refused, got, want)
	}

	// --- a challenge whose self-check never passes
	o.block(unreachableName)
	if _, err := o.handshake(unreachableName); err == nil {
		t.Fatalf("handshake for %s, which cannot be reached, succeeded", unreachableName)
	}
	afterUnreachable := o.scrape()
	metricDelta(t, afterRefusal, afterUnreachable, map[string]float64{
		metricSeries("certflow_certificate_requests_total", "outcome", "failed"):                     1,
		metricSeries("certflow_challenges_total", "outcome", "errored", "challenge_type", "http-01"): 1,
		metricSeries("certflow_backoffs_total"):                                                      1,
		metricSeries("certflow_order_creation_seconds_count"):                                        1,
	})
	if got, want := loggedEventNames(loggedEventsFor(unreachableName)), []string{
		"certflow_request_created", "certflow_order_created",
		"certflow_challenge_queued", "certflow_challenge_scheduled", "certflow_challenge_synced",
		"certflow_challenge_presented", "certflow_challenge_errored",
		"certflow_order_pending", "certflow_backoff", "certflow_request_failed",
	}; !slices.Equal(got, want) {
		t.Errorf("events for %s:\n got %v\nwant %v", unreachableName, got, want)
	}

	// --- the admin lists
	all := o.list("/certflow/certificaterequests")
	if len(all) != 3 || all[0].str("name") != unreachableName || all[1].str("name") != refused || all[2].str("name") != okName {
		t.Fatalf("requests, newest first: %s", dump(all))
	}
	if got := o.list("/certflow/certificaterequests?state=failed"); len(got) != 2 {
		t.Errorf("failed requests: %s", dump(got))
	}
	if got := o.list("/certflow/orders?name=" + okName); len(got) != 1 || got[0].str("state") != "valid" {
		t.Errorf("orders of %s: %s", okName, dump(got))
	}
	if got := o.list("/certflow/challenges?state=self_checked"); len(got) != 0 {
		t.Errorf("challenges still self-checked: %s", dump(got))
	}
	ch := o.list("/certflow/challenges?name=" + unreachableName)
	if len(ch) != 1 || ch[0].str("state") != "errored" || !strings.Contains(ch[0].str("reason"), "self-check did not pass") ||
		!strings.Contains(ch[0].str("reason"), "127.0.0.2") {
		t.Errorf("challenge of %s should be errored with the self-check's reason: %s", unreachableName, dump(ch))
	}
	// paging: one at a time, newest first, with the cursor in a header
	var paged []string
	uri := "/certflow/certificaterequests?limit=1"
	for i := 0; i < 10; i++ {
		var page []resource
		h := o.get(uri, &page)
		for _, r := range page {
			paged = append(paged, r.str("name"))
		}
		next := h.Get(certflow.NextHeader)
		if next == "" {
			break
		}
		if !strings.Contains(h.Get("Link"), `rel="next"`) {
			t.Errorf("page with a cursor has no Link header: %v", h)
		}
		uri = "/certflow/certificaterequests?limit=1&after=" + next
	}
	if want := []string{unreachableName, refused, okName}; !slices.Equal(paged, want) {
		t.Errorf("paged names %v, want %v", paged, want)
	}

	// --- the admin status of each name
	st := o.status(okName)
	if st.Failing || st.BackingOff || st.Certificate == nil || st.Request == nil || st.Request.State != "ready" ||
		st.Order == nil || st.Order.State != "valid" || len(st.Challenges) != 1 || st.Challenges[0].State != "valid" {
		t.Fatalf("status of %s: %s", okName, dump(st))
	}
	c := st.Certificate
	if !c.NotAfter.After(time.Now()) || c.Issuer == "" || c.Serial == "" || !slices.Contains(c.SANs, okName) {
		t.Errorf("certificate of %s: %s", okName, dump(c))
	}
	if times := st.Challenges[0].Times; times.Presented.IsZero() || times.SelfChecked.IsZero() || times.Accepted.IsZero() {
		t.Errorf("challenge times of %s: %s", okName, dump(times))
	}

	st = o.status(refused)
	if !st.Failing || !st.BackingOff || st.Request == nil || st.Request.State != "failed" || st.NextAttempt.IsZero() ||
		!(strings.Contains(strings.ToLower(st.Request.Reason), "blocked") || strings.Contains(st.Request.Reason, "policy")) {
		t.Fatalf("status of %s: %s", refused, dump(st))
	}
	st = o.status(unreachableName)
	if !st.Failing || st.Order == nil || st.Order.State != "pending" || len(st.Challenges) != 1 ||
		st.Challenges[0].State != "errored" || st.Challenges[0].SelfChecks == 0 {
		t.Fatalf("status of %s: %s", unreachableName, dump(st))
	}

	// --- errors
	for _, c := range []struct {
		method, uri string
		status      int
	}{
		{http.MethodGet, "/certflow/status/nobody.test", http.StatusNotFound},
		{http.MethodPost, "/certflow/retry/nobody.test", http.StatusNotFound},
		{http.MethodGet, "/certflow/orders?limit=0", http.StatusBadRequest},
		{http.MethodGet, "/certflow/orders?limit=many", http.StatusBadRequest},
		{http.MethodGet, "/certflow/orders?state=done", http.StatusBadRequest},
		{http.MethodGet, "/certflow/orders?colour=blue", http.StatusBadRequest},
		{http.MethodGet, "/certflow/retry/" + refused, http.StatusMethodNotAllowed},
		{http.MethodPost, "/certflow/orders", http.StatusMethodNotAllowed},
		{http.MethodGet, "/certflow/certificates", http.StatusNotFound},
	} {
		status, _, body := o.call(c.method, c.uri)
		var apiErr struct {
			Error string `json:"error"`
		}
		if status != c.status || json.Unmarshal(body, &apiErr) != nil || apiErr.Error == "" {
			t.Errorf("%s %s: HTTP %d %s, want %d with an error message", c.method, c.uri, status, body, c.status)
		}
	}

	// --- the CLI
	out, code := o.cli()
	t.Logf("$ caddy certflow status   # exit status %d\n%s", code, out)
	if code != 0 {
		t.Errorf("listing exited %d", code)
	}
	for _, want := range []string{"CERTIFICATEREQUESTS", "ORDERS", "CHALLENGES", "NAME", "STATE", "AGE", "REASON",
		okName, refused, unreachableName, "self-check did not pass"} {
		if !strings.Contains(out, want) {
			t.Errorf("the listing lacks %q", want)
		}
	}
	out, code = o.cli(okName)
	t.Logf("$ caddy certflow status %s   # exit status %d\n%s", okName, code, out)
	if code != 0 {
		t.Errorf("status of an issued name exited %d", code)
	}
	for _, want := range []string{"Ready", "Not After", "Serial", "CertificateRequest", "Order", "valid", "http-01", "Self-checked", "Accepted"} {
		if !strings.Contains(out, want) {
			t.Errorf("status of %s lacks %q", okName, want)
		}
	}
	out, code = o.cli(refused)
	t.Logf("$ caddy certflow status %s   # exit status %d\n%s", refused, code, out)
	if code != certflow.StatusExitFailing || !strings.Contains(out, "Failing") || !strings.Contains(out, "Next Attempt") {
		t.Errorf("status of %s: exit %d, output above", refused, code)
	}
	out, code = o.cli(unreachableName)
	t.Logf("$ caddy certflow status %s   # exit status %d\n%s", unreachableName, code, out)
	if code != certflow.StatusExitFailing || !strings.Contains(out, "errored") || !strings.Contains(out, "self-check did not pass") {
		t.Errorf("status of %s: exit %d, output above", unreachableName, code)
	}
	if _, code := o.cli("nobody.test"); code != certflow.StatusExitError {
		t.Errorf("status of an unknown name exited %d, want %d", code, certflow.StatusExitError)
	}
}

// TestObserveRetryClearsBackoff: a name refused once backs off (handshakes
// fail fast, no new order); POST /certflow/retry/<name> clears the backoff
// and the next handshake obtains the certificate.
func TestObserveRetryClearsBackoff(t *testing.T) {
	schedulerIdle(t)
	e := newEnv(t, envOptions{})
	o := runObserved(t, e, observeIssuer(e))
	const name = "retry.test"
	e.ca.SetFault(rejectFirstOrder(name, "synthetic refusal for the retry test"))

	if _, err := o.handshake(name); err == nil {
		t.Fatal("the first handshake succeeded despite the refusal")
	}
	st := o.status(name)
	if !st.BackingOff || !st.Failing || !strings.Contains(st.Request.Reason, "synthetic refusal") {
		t.Fatalf("status after the refusal: %s", dump(st))
	}
	if got := loggedEventNames(loggedEventsFor(name)); !slices.Contains(got, "certflow_backoff") {
		t.Errorf("no backoff event: %v", got)
	}
	if _, err := o.handshake(name); err == nil {
		t.Fatal("a handshake within the backoff succeeded")
	}
	if n := e.ca.NewOrders(name); n != 1 {
		t.Fatalf("within the backoff the CA saw %d new orders, want 1", n)
	}
	if _, code := o.cli(name); code != certflow.StatusExitFailing {
		t.Errorf("CLI exit %d for a backing-off name", code)
	}

	status, _, body := o.call(http.MethodPost, "/certflow/retry/"+name)
	if status != http.StatusOK {
		t.Fatalf("POST retry: HTTP %d: %s", status, body)
	}
	var cleared certflow.NameStatus
	if err := json.Unmarshal(body, &cleared); err != nil {
		t.Fatal(err)
	}
	if cleared.BackingOff || cleared.Record == nil || cleared.Record.Failures != 0 || !cleared.NextAttempt.IsZero() {
		t.Fatalf("after retry: %s", dump(cleared))
	}

	o.mustHandshake(name)
	st = o.status(name)
	if st.Failing || st.Request.State != "ready" || st.Certificate == nil {
		t.Fatalf("status after the retry: %s", dump(st))
	}
	if out, code := o.cli(name); code != 0 {
		t.Errorf("CLI exit %d after issuance:\n%s", code, out)
	}
	if reqs := o.list("/certflow/certificaterequests?name=" + name); len(reqs) != 2 || reqs[0].str("state") != "ready" || reqs[1].str("state") != "failed" {
		t.Errorf("requests of %s: %s", name, dump(reqs))
	}
	// the collectors are registered in this config's registry too (each
	// config load has a new one), with process-wide values
	m := o.scrape()
	if m[metricSeries("certflow_certificate_requests_total", "outcome", "ready")] < 1 ||
		m[metricSeries("certflow_certificate_requests_total", "outcome", "failed")] < 1 || m[metricSeries("certflow_backoffs_total")] < 1 {
		t.Errorf("metrics after a failure and an issuance: %v", m)
	}
}
