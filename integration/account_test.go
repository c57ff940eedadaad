package integration

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/certflow/certflow/integration/rig"
	"github.com/certflow/certflow/issuer"
)

// jwsPayload decodes the payload of an ACME request's JWS body (restoring
// the body for Pebble); nil when there is none.
func jwsPayload(r *http.Request) map[string]any {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return nil
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	var jws struct {
		Payload string `json:"payload"`
	}
	if json.Unmarshal(body, &jws) != nil {
		return nil
	}
	raw, err := base64.RawURLEncoding.DecodeString(jws.Payload)
	if err != nil {
		return nil
	}
	var payload map[string]any
	_ = json.Unmarshal(raw, &payload)
	return payload
}

// TestAccountUnknownToTheCAIsRegisteredAgain: the CA answers
// accountDoesNotExist (as after the account was deleted there) to every
// request of the account, until it is registered again. The request that
// meets it fails, charged to the account (no failure of the name); the
// next one looks the account up, registers it again and is issued, without
// a restart.
func TestAccountUnknownToTheCAIsRegisteredAgain(t *testing.T) {
	o, rec := observedFaultEnv(t)
	var registered atomic.Bool
	rec.reset(func(kind string, _ int, r *http.Request) (string, int, http.Header, string, bool) {
		if registered.Load() {
			return "", 0, nil, "", false
		}
		switch kind {
		case rig.KindNewAccount:
			if p := jwsPayload(r); p != nil && p["onlyReturnExisting"] == true {
				s, h, b, ok := problemResponse(http.StatusBadRequest, "accountDoesNotExist", "certflow test: no such account", "")
				return "unknown", s, h, b, ok
			}
			registered.Store(true)
			return "registered", 0, nil, "", false
		case rig.KindDirectory, rig.KindNonce:
			return "", 0, nil, "", false
		}
		s, h, b, ok := problemResponse(http.StatusBadRequest, "accountDoesNotExist", "certflow test: no such account", "")
		return "unknown", s, h, b, ok
	})
	const name = "after-deletion.test"
	if _, err := o.handshake(name); err == nil {
		t.Fatal("the handshake succeeded while the CA did not know the account")
	}
	st := o.status(name)
	if st.Request == nil || st.Request.ChargedTo != issuer.PartyAccount || st.Record == nil || st.Record.Failures != 0 {
		t.Fatalf("status after the account was unknown: %s", dump(st))
	}
	o.mustHandshake(name)
	if !registered.Load() || countAction(rec.records(), "registered") != 1 {
		t.Errorf("the account was not registered again (actions: %d registrations)", countAction(rec.records(), "registered"))
	}
}

// TestAccountDeactivatedHoldsTheEngine: a CA answering unauthorized for a
// deactivated account holds every new order of the account, with the CA's
// reason in status and the holds list (not a failure of any name). Once the
// cause is fixed, clearing the hold lets the next request look the account
// up again and issue, without a restart.
func TestAccountDeactivatedHoldsTheEngine(t *testing.T) {
	o, rec := observedFaultEnv(t)
	var fixed atomic.Bool
	rec.reset(func(kind string, _ int, _ *http.Request) (string, int, http.Header, string, bool) {
		if fixed.Load() || kind != rig.KindNewOrder {
			return "", 0, nil, "", false
		}
		s, h, b, ok := problemResponse(http.StatusForbidden, "unauthorized", `certflow test: Account is not valid, has status "deactivated"`, "")
		return "deactivated", s, h, b, ok
	})
	if _, err := o.handshake("first-victim.test"); err == nil {
		t.Fatal("the handshake succeeded with a deactivated account")
	}
	key := "account-ops@example.com"
	hold := o.holdOf(key)
	if !strings.Contains(hold.Reason, "deactivated") || hold.Limit != "account problem" {
		t.Errorf("the account's hold: %s", dump(hold))
	}
	o.mustFailFast("second-victim.test")
	if n := newOrdersFor(rec.records(), "second-victim.test"); n != 0 {
		t.Errorf("the CA saw %d new-orders while the account was held", n)
	}
	for _, name := range []string{"first-victim.test", "second-victim.test"} {
		if st := o.status(name); !st.Failing || len(st.Holds) == 0 || (st.Record != nil && st.Record.Failures != 0) {
			t.Errorf("status of %s: %s", name, dump(st))
		}
	}

	fixed.Store(true)
	if status, _, body := o.call(http.MethodDelete, "/certflow/holds/"+key); status != http.StatusOK {
		t.Fatalf("DELETE account hold: HTTP %d: %s", status, body)
	}
	o.mustHandshake("second-victim.test")
}
