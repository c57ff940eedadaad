package rig

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"math/big"
	"net/http"
	"strings"
	"sync"
)

// Kinds of ACME requests, as returned by KindOf and counted by CA.Count.
const (
	KindDirectory   = "directory"
	KindNonce       = "nonce"
	KindNewAccount  = "new-account"
	KindAccount     = "account"
	KindNewOrder    = "new-order"
	KindOrder       = "order"
	KindOrders      = "orders"
	KindFinalize    = "finalize"
	KindAuthz       = "authz"
	KindChall       = "chall"
	KindCert        = "cert"
	KindRevoke      = "revoke"
	KindKeyChange   = "key-change"
	KindRenewalInfo = "renewal-info"
	KindOther       = "other"
)

// kindPaths maps Pebble's endpoint paths (wfe package, unexported) to kinds.
// Paths ending in "/" are prefixes.
var kindPaths = []struct{ path, kind string }{
	{"/dir", KindDirectory},
	{"/nonce-plz", KindNonce},
	{"/sign-me-up", KindNewAccount},
	{"/my-account/", KindAccount},
	{"/order-plz", KindNewOrder},
	{"/my-order/", KindOrder},
	{"/list-orderz/", KindOrders},
	{"/finalize-order/", KindFinalize},
	{"/authZ/", KindAuthz},
	{"/chalZ/", KindChall},
	{"/certZ/", KindCert},
	{"/revoke-cert", KindRevoke},
	{"/rollover-account-key", KindKeyChange},
	{"/draft-ietf-acme-ari-03/renewalInfo/", KindRenewalInfo},
}

// maxRequestBody bounds the request bodies the middleware buffers.
const maxRequestBody = 1 << 20

// KindOf returns the kind of an ACME request to Pebble (one of the Kind
// constants), from its URL path.
func KindOf(r *http.Request) string {
	p := r.URL.Path
	for _, kp := range kindPaths {
		if p == kp.path || (strings.HasSuffix(kp.path, "/") && strings.HasPrefix(p, kp.path)) {
			return kp.kind
		}
	}
	return KindOther
}

// AuthzID returns the ID of the authorization an authz request (KindAuthz)
// is for, "" for any other request.
func AuthzID(r *http.Request) string {
	if KindOf(r) != KindAuthz {
		return ""
	}
	return strings.TrimPrefix(r.URL.Path, "/authZ/")
}

// Request is one request the CA received.
type Request struct {
	// Kind is the request's kind, one of the Kind constants.
	Kind string
	// Method and Path are the request's HTTP method and URL path.
	Method, Path string
	// Identifiers are the identifier values (lower case) named in the
	// payload of a new-order request; nil for other kinds.
	Identifiers []string
	// Status is the HTTP status the request was answered with.
	Status int
	// Faulted reports that the fault hook answered the request, not Pebble.
	Faulted bool
}

// Fault decides whether to answer a request to the CA itself instead of
// passing it to Pebble. When handled is true, the request is answered with
// status (500 if zero), header and body. The request body can be read; it is
// restored before the request goes on to Pebble.
type Fault func(r *http.Request) (status int, header http.Header, body string, handled bool)

// requestLog holds the requests a CA received and its fault hook.
type requestLog struct {
	mu       sync.Mutex
	requests []Request
	fault    Fault
}

// SetFault installs f as the fault hook, replacing any previous one; nil
// removes it. Faulted requests are counted like all others.
func (c *CA) SetFault(f Fault) {
	c.requests.mu.Lock()
	defer c.requests.mu.Unlock()
	c.requests.fault = f
}

// Count returns how many requests of kind (a Kind constant) the CA has
// received, including ones answered by the fault hook.
func (c *CA) Count(kind string) int {
	c.requests.mu.Lock()
	defer c.requests.mu.Unlock()
	n := 0
	for _, r := range c.requests.requests {
		if r.Kind == kind {
			n++
		}
	}
	return n
}

// NewOrders returns how many new-order requests naming name (among their
// identifiers, case-insensitively) the CA has received, including ones
// answered by the fault hook or refused by Pebble; use Requests to tell them
// apart.
func (c *CA) NewOrders(name string) int {
	name = normalizeName(name)
	c.requests.mu.Lock()
	defer c.requests.mu.Unlock()
	n := 0
	for _, r := range c.requests.requests {
		if r.Kind != KindNewOrder {
			continue
		}
		for _, id := range r.Identifiers {
			if id == name {
				n++
				break
			}
		}
	}
	return n
}

// Requests returns a copy of all requests the CA has received, in the order
// they were answered.
func (c *CA) Requests() []Request {
	c.requests.mu.Lock()
	defer c.requests.mu.Unlock()
	out := make([]Request, len(c.requests.requests))
	for i, r := range c.requests.requests {
		r.Identifiers = append([]string(nil), r.Identifiers...)
		out[i] = r
	}
	return out
}

// ResetCounts forgets the requests received so far.
func (c *CA) ResetCounts() {
	c.requests.mu.Lock()
	defer c.requests.mu.Unlock()
	c.requests.requests = nil
}

// serveHTTP is the middleware in front of Pebble's handler next: it records
// the request and answers it with the fault hook or with next.
func (c *CA) serveHTTP(next http.Handler, w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxRequestBody))
	if err != nil {
		http.Error(w, "reading request body: "+err.Error(), http.StatusBadRequest)
		return
	}
	rewind := func() { r.Body = io.NopCloser(bytes.NewReader(body)) }

	rec := Request{Kind: KindOf(r), Method: r.Method, Path: r.URL.Path}
	if rec.Kind == KindNewOrder {
		rec.Identifiers = OrderIdentifiers(body)
	}

	c.requests.mu.Lock()
	fault := c.requests.fault
	c.requests.mu.Unlock()
	if fault != nil {
		rewind()
		if status, header, text, handled := fault(r); handled {
			if status == 0 {
				status = http.StatusInternalServerError
			}
			for k, vs := range header {
				for _, v := range vs {
					w.Header().Add(k, v)
				}
			}
			w.WriteHeader(status)
			// A write error means the client went away; it is recorded anyway.
			_, _ = io.WriteString(w, text)
			rec.Status, rec.Faulted = status, true
			c.record(rec)
			return
		}
	}

	rewind()
	// Pebble v2.10.3 can deadlock when a new order (store lock, then every
	// authorization's lock) runs while an authorization request holds its
	// authorization's lock and waits for the store: keep them apart.
	switch rec.Kind {
	case KindNewOrder:
		c.pebbleOrderLock.Lock()
		defer c.pebbleOrderLock.Unlock()
		c.syncReplacedOrder(body)
	case KindAuthz:
		c.pebbleOrderLock.RLock()
		defer c.pebbleOrderLock.RUnlock()
	}
	sw := &statusWriter{ResponseWriter: w}
	next.ServeHTTP(sw, r)
	rec.Status = sw.status
	if rec.Status == 0 {
		rec.Status = http.StatusOK
	}
	c.record(rec)
}

// record appends rec to the request log.
func (c *CA) record(rec Request) {
	c.requests.mu.Lock()
	defer c.requests.mu.Unlock()
	c.requests.requests = append(c.requests.requests, rec)
}

// OrderIdentifiers returns the identifier values in the payload of a
// new-order JWS (flattened JSON serialization), or nil if it has none.
func OrderIdentifiers(body []byte) []string {
	var order struct {
		Identifiers []struct {
			Type  string `json:"type"`
			Value string `json:"value"`
		} `json:"identifiers"`
	}
	if !decodeOrderPayload(body, &order) {
		return nil
	}
	var ids []string
	for _, id := range order.Identifiers {
		ids = append(ids, normalizeName(id.Value))
	}
	return ids
}

// OrderReplaces returns the replaces field (RFC 9773) of a new-order JWS's
// payload, or "" if it has none.
func OrderReplaces(body []byte) string {
	var order struct {
		Replaces string `json:"replaces"`
	}
	if !decodeOrderPayload(body, &order) {
		return ""
	}
	return order.Replaces
}

// decodeOrderPayload decodes the payload of a JWS in flattened JSON
// serialization into v, and reports whether it could.
func decodeOrderPayload(body []byte, v any) bool {
	var jws struct {
		Payload string `json:"payload"`
	}
	if json.Unmarshal(body, &jws) != nil {
		return false
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(jws.Payload, "="))
	if err != nil {
		return false
	}
	return json.Unmarshal(payload, v) == nil
}

// syncReplacedOrder takes and releases the lock of the order whose
// certificate a new order's replaces names, if Pebble knows it. Pebble
// v2.10.3 marks that order replaced under its lock, from the goroutine that
// issues the replacing certificate, and reads the mark without it when a
// later new order names the same certificate: the race detector reports it
// even when the mark was written seconds before. Taking the lock here
// orders the read after any write that is over.
func (c *CA) syncReplacedOrder(body []byte) {
	replaces := OrderReplaces(body)
	_, serial, ok := strings.Cut(replaces, ".")
	if !ok {
		return
	}
	raw, err := base64.RawURLEncoding.DecodeString(serial)
	if err != nil {
		return
	}
	order, err := c.store.GetOrderByIssuedSerial(hex.EncodeToString(new(big.Int).SetBytes(raw).Bytes()))
	if err != nil {
		return
	}
	order.RLock()
	order.RUnlock() //nolint:staticcheck // an empty critical section: only its ordering matters
}

// normalizeName lower-cases name and drops a trailing dot.
func normalizeName(name string) string {
	return strings.TrimSuffix(strings.ToLower(name), ".")
}

// statusWriter remembers the status code written through it.
type statusWriter struct {
	http.ResponseWriter
	status int
}

// WriteHeader records status and passes it on.
func (s *statusWriter) WriteHeader(status int) {
	if s.status == 0 {
		s.status = status
	}
	s.ResponseWriter.WriteHeader(status)
}

// Write records an implicit 200 and passes b on.
func (s *statusWriter) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// Unwrap gives http.ResponseController access to the underlying writer.
func (s *statusWriter) Unwrap() http.ResponseWriter {
	return s.ResponseWriter
}
