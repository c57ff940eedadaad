package certflow

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/certflow/certflow/issuer"
)

func TestRedact(t *testing.T) {
	clean := json.RawMessage(`{"id":"1","name":"a.test","token":"tok","reason":"fine"}`)
	if got := redact(clean); string(got) != string(clean) {
		t.Fatalf("a clean resource was changed: %s", got)
	}
	dirty := json.RawMessage(`{"id":"1","keyAuthorization":"tok.thumb","nested":{"mac_key":"secret","list":["-----BEGIN EC PRIVATE KEY-----\nabc"]},"name":"a.test"}`)
	got := string(redact(dirty))
	for _, bad := range []string{"keyAuthorization", "tok.thumb", "mac_key", "secret", "PRIVATE KEY"} {
		if strings.Contains(got, bad) {
			t.Errorf("redacted resource still holds %q: %s", bad, got)
		}
	}
	if !strings.Contains(got, `"name":"a.test"`) {
		t.Errorf("redaction dropped harmless fields: %s", got)
	}
}

func TestOrderChallengeTypes(t *testing.T) {
	var o orderChallengeTypes
	o.note("o1", "")
	o.note("o1", "http-01")
	if got := o.finish(issuer.Order{ID: "o1", Challenges: []string{"c1"}}); got != "http-01" {
		t.Fatalf("type label %q, want http-01", got)
	}
	if got := o.finish(issuer.Order{ID: "o3"}); got != "none" {
		t.Fatalf("order without challenges: %q, want none", got)
	}
	if got := o.finish(issuer.Order{ID: "o4", Challenges: []string{"c"}}); got != "unknown" {
		t.Fatalf("order never seen: %q, want unknown", got)
	}
	o.note("o5", "http-01")
	o.note("o5", "dns-01")
	if got := o.finish(issuer.Order{ID: "o5", Challenges: []string{"a", "b"}}); got != "mixed" {
		t.Fatalf("two types: %q, want mixed", got)
	}
	if len(o.m) != 0 {
		t.Fatalf("finished orders left notes: %v", o.m)
	}
}

func TestFormatting(t *testing.T) {
	for d, want := range map[time.Duration]string{0: "0s", 59 * time.Second: "59s", 3 * time.Minute: "3m", 5 * time.Hour: "5h", 72 * time.Hour: "3d", -time.Second: "0s"} {
		if got := age(d); got != want {
			t.Errorf("age(%s) = %q, want %q", d, got, want)
		}
	}
	long := "step failed: " + strings.Repeat("x", 200) + " connection refused"
	got := oneLine(long, 60)
	if !strings.HasPrefix(got, "step failed") || !strings.HasSuffix(got, "connection refused") || len([]rune(got)) > 60 {
		t.Errorf("oneLine = %q", got)
	}
	if got := oneLine("a\n  b", 0); got != "a b" {
		t.Errorf("oneLine flattening = %q", got)
	}
	for status, want := range map[int]string{0: "error", 200: "2xx", 201: "2xx", 301: "3xx", 429: "4xx", 503: "5xx", 700: "error"} {
		if got := statusClass(status); got != want {
			t.Errorf("statusClass(%d) = %q, want %q", status, got, want)
		}
	}
}

func TestEventNames(t *testing.T) {
	names := EventNames()
	for _, want := range []string{"certflow_request_created", "certflow_order_created", "certflow_order_ready",
		"certflow_challenge_self_checked", "certflow_challenge_errored", "certflow_backoff"} {
		found := false
		for _, n := range names {
			found = found || n == want
		}
		if !found {
			t.Errorf("EventNames lacks %s: %v", want, names)
		}
	}
}
