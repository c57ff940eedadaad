package certflow

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/certflow/certflow/issuer"
)

func init() {
	caddy.RegisterModule(adminAPI{})
}

// adminAPI is the admin.api.certflow module: certflow's resources on
// Caddy's admin endpoint, read from storage so that every node sharing the
// storage shows the same picture.
//
//	GET  /certflow/certificaterequests   CertificateRequests, newest first
//	GET  /certflow/orders                Orders, newest first
//	GET  /certflow/challenges            Challenges, newest first
//	GET  /certflow/status/<name>         where one name stands (see nameStatus)
//	POST /certflow/retry/<name>          clear the name's failure backoff and its own hold
//	POST /certflow/renew/<name>          renew the name's certificate now (see admin_renew.go)
//	GET  /certflow/holds                 holds on names, registered domains and accounts
//	DELETE /certflow/holds/<key>         clear one hold (see admin_holds.go)
//
// A <name> (and ?name=) is read as issuer.NormalizeName reads it (lower
// case, punycode, no trailing dot, canonical IP addresses); a name certflow
// would never accept is answered 400 with the reason.
//
// Reads change nothing in storage: a record that is corrupt, or that a
// newer certflow wrote (a rolling upgrade), is shown in the status's
// "problems" and left where it is. POST retry does not wait for an
// issuance of the name in flight: it clears the name's holds and answers
// 409 at once, leaving the backoff alone, because that issuance is the
// retry and its outcome replaces the backoff. It also answers 409 for a
// name record a newer certflow wrote.
//
// The lists take ?name= (the certificate's name; for challenges the
// identifier), ?state= (challenge states also with '_' for '-', e.g.
// self_checked), ?limit= (1–1000, default 100) and ?after=<id> (the ID of
// the last item of the previous page). The body is a JSON array of the
// stored resources; when there may be more, the response carries the cursor
// of the next page in the Certflow-Next header and a Link header with
// rel="next". Resources of every issuer key in every storage certflow
// issuers of this process use (and Caddy's global storage) are merged.
//
// In a cluster every node shows the same picture, read from the shared
// storage: status/<name> reads the name's resources themselves and is
// current on every node; the lists go through the index, whose markers the
// node that did the work writes in the background (issuer/indexwriter.go).
// A node lists its own work at once (it flushes its pending markers before
// a list) and another node's within that node's index delay, a few seconds.
//
// Nothing returned holds key material: stored resources have no keys, key
// authorizations or EAB secrets, and every item is checked again before it
// is sent.
type adminAPI struct {
	ctx    caddy.Context
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (adminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.certflow",
		New: func() caddy.Module { return new(adminAPI) },
	}
}

// Provision keeps the context; everything else is read at request time,
// because the admin endpoint is rebuilt before the apps are provisioned.
func (a *adminAPI) Provision(ctx caddy.Context) error {
	a.ctx = ctx
	a.logger = ctx.Logger(a)
	return nil
}

// Routes returns the certflow admin routes.
func (a *adminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: adminBase, Handler: caddy.AdminHandlerFunc(a.serve)}}
}

const (
	adminBase = "/certflow/"
	// NextHeader carries the cursor of the next page of a list.
	NextHeader = "Certflow-Next"

	// indexFlushTimeout bounds the wait for this process's pending index
	// updates before a list is served.
	indexFlushTimeout = 2 * time.Second

	defaultListLimit = 100
	maxListLimit     = 1000
)

var listKinds = map[string]string{
	"certificaterequests": issuer.KindRequest,
	"orders":              issuer.KindOrder,
	"challenges":          issuer.KindChallenge,
}

var kindStates = map[string][]string{
	issuer.KindRequest: {issuer.RequestPending, issuer.RequestReady, issuer.RequestFailed},
	issuer.KindOrder: {issuer.OrderPending, issuer.OrderReady, issuer.OrderProcessing,
		issuer.OrderValid, issuer.OrderInvalid, issuer.OrderErrored},
	issuer.KindChallenge: {issuer.ChallengeQueued, issuer.ChallengeScheduled, issuer.ChallengeSynced,
		issuer.ChallengePresented, issuer.ChallengeSelfChecked, issuer.ChallengeAccepted,
		issuer.ChallengeValid, issuer.ChallengeInvalid, issuer.ChallengeErrored},
}

func (a *adminAPI) serve(w http.ResponseWriter, r *http.Request) error {
	rest := strings.TrimPrefix(r.URL.Path, adminBase)
	first, arg, hasArg := strings.Cut(rest, "/")
	switch {
	case !hasArg && listKinds[first] != "":
		if err := allowMethod(r, http.MethodGet); err != nil {
			return err
		}
		// the index is written in the background: let this process's
		// pending updates land first, so a list shows what it just did
		issuer.FlushIndex(indexFlushTimeout)
		return a.handleList(w, r, first)
	case hasArg && first == "status":
		if err := allowMethod(r, http.MethodGet); err != nil {
			return err
		}
		return a.handleStatus(w, r, arg)
	case first == "holds":
		return a.handleHolds(w, r, arg)
	case hasArg && first == "retry":
		if err := allowMethod(r, http.MethodPost); err != nil {
			return err
		}
		return a.handleRetry(w, r, arg)
	case hasArg && first == "renew":
		if err := allowMethod(r, http.MethodPost); err != nil {
			return err
		}
		return a.handleRenew(w, r, arg)
	}
	return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("resource not found: %s", r.URL.Path)}
}

func allowMethod(r *http.Request, method string) error {
	if r.Method == method || (method == http.MethodGet && r.Method == http.MethodHead) {
		return nil
	}
	return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method not allowed: %s (use %s)", r.Method, method)}
}

func badRequest(format string, args ...any) error {
	return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf(format, args...)}
}

// sources returns the (storage, issuer key) pairs to read.
func (a *adminAPI) sources(ctx context.Context) ([]source, error) {
	var extra []certmagic.Storage
	if a.ctx.Context != nil {
		if s := a.ctx.Storage(); s != nil {
			extra = append(extra, s)
		}
	}
	srcs, err := discoverSources(ctx, extra...)
	if err != nil {
		if len(srcs) == 0 {
			return nil, caddy.APIError{HTTPStatus: http.StatusServiceUnavailable, Err: fmt.Errorf("reading certflow's storage: %w", err)}
		}
		a.log().Warn("listing certflow issuer keys in storage", zap.Error(err))
	}
	return srcs, nil
}

func (a *adminAPI) log() *zap.Logger {
	if a.logger == nil {
		return zap.NewNop()
	}
	return a.logger
}

// listQuery is a parsed list request.
type listQuery struct {
	kind, name, state, after string
	limit                    int
}

func parseListQuery(kind string, v url.Values) (listQuery, error) {
	q := listQuery{kind: kind, limit: defaultListLimit}
	for key, vals := range v {
		if len(vals) != 1 {
			return q, badRequest("query parameter %q must be given once", key)
		}
		val := strings.TrimSpace(vals[0])
		switch key {
		case "name":
			name, err := parseName(val)
			if err != nil {
				return q, err
			}
			q.name = name
		case "state":
			state := strings.ToLower(val)
			if kind == issuer.KindChallenge {
				state = strings.ReplaceAll(state, "_", "-")
			}
			if !slices.Contains(kindStates[kind], state) {
				return q, badRequest("unknown state %q for %s (one of: %s)", val, kindTitle(kind), strings.Join(kindStates[kind], ", "))
			}
			q.state = state
		case "limit":
			n, err := strconv.Atoi(val)
			if err != nil || n < 1 || n > maxListLimit {
				return q, badRequest("limit must be a whole number from 1 to %d, got %q", maxListLimit, val)
			}
			q.limit = n
		case "after":
			if val == "" || strings.ContainsAny(val, "/\\ ") {
				return q, badRequest("invalid after cursor %q", val)
			}
			q.after = val
		default:
			return q, badRequest("unknown query parameter %q (use name, state, limit, after)", key)
		}
	}
	return q, nil
}

func kindTitle(kind string) string {
	for path, k := range listKinds {
		if k == kind {
			return path
		}
	}
	return kind
}

func (a *adminAPI) handleList(w http.ResponseWriter, r *http.Request, path string) error {
	q, err := parseListQuery(listKinds[path], r.URL.Query())
	if err != nil {
		return err
	}
	srcs, err := a.sources(r.Context())
	if err != nil {
		return err
	}
	items, next, err := listMerged(r.Context(), srcs, q)
	if err != nil {
		if errors.Is(err, issuer.ErrBadQuery) {
			return badRequest("%v", err)
		}
		return caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: err}
	}
	if next != "" {
		w.Header().Set(NextHeader, next)
		nq := url.Values{}
		if q.name != "" {
			nq.Set("name", q.name)
		}
		if q.state != "" {
			nq.Set("state", q.state)
		}
		nq.Set("limit", strconv.Itoa(q.limit))
		nq.Set("after", next)
		w.Header().Set("Link", fmt.Sprintf(`<%s%s?%s>; rel="next"`, adminBase, path, nq.Encode()))
	}
	return writeJSON(w, r, items)
}

// listMerged lists one page across sources: each source gives its newest
// `limit` items after the cursor, and the page is the newest `limit` of
// them all. IDs sort by creation time across sources, so the cursor is
// global.
func listMerged(ctx context.Context, srcs []source, q listQuery) ([]json.RawMessage, string, error) {
	type item struct {
		id  string
		raw json.RawMessage
	}
	var all []item
	more := false
	for _, s := range srcs {
		page, err := s.reader().List(ctx, issuer.Query{Kind: q.kind, Name: q.name, State: q.state, Limit: q.limit, After: q.after})
		if err != nil {
			return nil, "", err
		}
		if page.Next != "" {
			more = true
		}
		for _, raw := range page.Items {
			var head struct {
				ID string `json:"id"`
			}
			if json.Unmarshal(raw, &head) != nil || head.ID == "" {
				continue
			}
			all = append(all, item{head.ID, redact(raw)})
		}
	}
	slices.SortStableFunc(all, func(a, b item) int { return strings.Compare(b.id, a.id) })
	all = slices.CompactFunc(all, func(a, b item) bool { return a.id == b.id })
	if len(all) > q.limit {
		all, more = all[:q.limit], true
	}
	out := make([]json.RawMessage, len(all))
	for i, it := range all {
		out[i] = it.raw
	}
	next := ""
	if more && len(all) > 0 {
		next = all[len(all)-1].id
	}
	return out, next, nil
}

// NameStatus is the body of GET /certflow/status/<name>: the stored
// workflow state of the name (record, latest CertificateRequest, its Order
// and Challenges), the issuer key it was found under, the certificate in
// storage if any, and whether the name is failing.
type NameStatus struct {
	issuer.NameStatus
	IssuerKey   string           `json:"issuer_key,omitempty"`
	Certificate *CertificateInfo `json:"certificate,omitempty"`
	// Failing is true when the latest request failed or the name is
	// backing off.
	Failing bool `json:"failing"`
	// NextAttempt is when a failing name may be tried again.
	NextAttempt time.Time `json:"next_attempt,omitzero"`
	// Holds are the holds in force over the name (its own, its registered
	// domain's, the account's) and Circuits this process's circuits to the
	// CA that are open.
	Holds    []issuer.Hold `json:"holds,omitempty"`
	Circuits []CircuitView `json:"circuits,omitempty"`
	// Admission is this node's cached answer of the permission module
	// (tls.permission.certflow) for the name, if any.
	Admission *AdmissionStatus `json:"admission,omitempty"`
}

// CertificateInfo describes the stored certificate of a name.
type CertificateInfo struct {
	SANs      []string  `json:"sans,omitempty"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	Issuer    string    `json:"issuer"`
	Serial    string    `json:"serial"`
	// RenewalWindow is the CA's ARI suggested window, when known.
	RenewalWindow  *RenewalWindow `json:"renewal_window,omitempty"`
	ExplanationURL string         `json:"explanation_url,omitempty"`
	// URL is the certificate's URL at the CA.
	URL string `json:"url,omitempty"`
	// IssuerKey is the issuer key it is stored under (shared with the
	// stock acme issuer for the same CA).
	IssuerKey string `json:"issuer_key,omitempty"`
	// Renewal is when certmagic renews it under the policy, and why (the
	// ARI window's selected time, or the share of its lifetime left).
	Renewal *issuer.RenewalPlan `json:"renewal,omitempty"`
}

// RenewalWindow is an ARI suggested renewal window.
type RenewalWindow struct {
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
}

func (a *adminAPI) handleStatus(w http.ResponseWriter, r *http.Request, rawName string) error {
	name, err := parseName(rawName)
	if err != nil {
		return err
	}
	st, err := a.status(r.Context(), name)
	if st, err = withAdmission(st, err, name); err != nil {
		return err
	}
	return writeJSON(w, r, st)
}

// parseName reads a name given to the admin API the way certflow knows
// names (issuer.NormalizeName: lower case, A-labels, no trailing dot, IP
// addresses in canonical form); a name certflow would never accept is a
// 400 with the reason, never looked up under a storage key another name
// may share.
func parseName(raw string) (string, error) {
	name, err := issuer.NormalizeName(raw)
	if err != nil {
		return "", badRequest("%v", err)
	}
	return name, nil
}

// status finds the name under every source and returns the most recently
// updated record, with the certificate stored for that issuer key.
func (a *adminAPI) status(ctx context.Context, name string) (*NameStatus, error) {
	srcs, err := a.sources(ctx)
	if err != nil {
		return nil, err
	}
	var best *NameStatus
	var bestSrc source
	var firstErr error
	var certOnly *NameStatus
	for _, s := range srcs {
		st, err := s.reader().Status(ctx, name)
		if errors.Is(err, issuer.ErrUnknownName) {
			if certOnly == nil {
				if cert := loadCertificate(ctx, s, name); cert != nil {
					certOnly = &NameStatus{NameStatus: issuer.NameStatus{Name: name}, IssuerKey: s.issuerKey, Certificate: cert}
				}
			}
			continue
		}
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		if best == nil || recordUpdated(st).After(recordUpdated(best.NameStatus)) {
			best, bestSrc = &NameStatus{NameStatus: st, IssuerKey: s.issuerKey}, s
		}
	}
	if best == nil {
		if firstErr != nil {
			return nil, caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: firstErr}
		}
		if certOnly != nil {
			addHolds(ctx, certOnly, sourceOf(srcs, certOnly.IssuerKey))
			return certOnly, nil
		}
		if held := holdsOnlyStatus(ctx, srcs, name); held != nil {
			return held, nil
		}
		return nil, caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("%w: %s", issuer.ErrUnknownName, name)}
	}
	best.Certificate = loadCertificate(ctx, bestSrc, name)
	best.Failing = best.BackingOff || (best.Request != nil && best.Request.State == issuer.RequestFailed)
	if best.Record != nil && best.Record.NextAttempt.After(time.Now()) {
		best.NextAttempt = best.Record.NextAttempt
	}
	addHolds(ctx, best, bestSrc)
	return best, nil
}

func recordUpdated(st issuer.NameStatus) time.Time {
	if st.Record == nil {
		return time.Time{}
	}
	return st.Record.Updated
}

// loadCertificate reads the name's certificate and metadata that certmagic
// stored for the source's issuer key (the CA's key that certflow shares
// with the stock acme issuer: see certificateKeyOf); nil when there is
// none. The private key next to it is never read.
func loadCertificate(ctx context.Context, s source, name string) *CertificateInfo {
	sc, err := issuer.LoadStoredCertificate(ctx, s.storage, certificateKeyOf(s.issuerKey), name)
	if err != nil {
		return nil
	}
	return certificateInfo(sc, renewalPolicyOf(s))
}

// certificateInfo describes a stored certificate, and when it is renewed
// under policy.
func certificateInfo(sc *issuer.StoredCertificate, policy issuer.RenewalPolicy) *CertificateInfo {
	leaf := sc.Leaf
	info := &CertificateInfo{
		SANs:      leaf.DNSNames,
		NotBefore: leaf.NotBefore,
		NotAfter:  leaf.NotAfter,
		Issuer:    leaf.Issuer.CommonName,
		Serial:    hex.EncodeToString(leaf.SerialNumber.Bytes()),
		IssuerKey: sc.IssuerKey,
		URL:       sc.Meta.URL,
	}
	for _, ip := range leaf.IPAddresses {
		info.SANs = append(info.SANs, ip.String())
	}
	if info.Issuer == "" {
		info.Issuer = leaf.Issuer.String()
	}
	if ri := sc.Meta.RenewalInfo; ri != nil && !ri.SuggestedWindow.Start.IsZero() {
		info.RenewalWindow = &RenewalWindow{Start: ri.SuggestedWindow.Start, End: ri.SuggestedWindow.End}
		info.ExplanationURL = ri.ExplanationURL
	}
	plan := issuer.PlanRenewal(leaf, sc.Meta.RenewalInfo, policy)
	info.Renewal = &plan
	return info
}

// certificateKeyOf is the issuer key certmagic stores certificates under
// for a certflow resource key ("certflow-<CA key>" → "<CA key>").
func certificateKeyOf(stateKey string) string {
	return strings.TrimPrefix(stateKey, "certflow-")
}

// renewalPolicyOf is the renewal policy of an issuer instance of this
// process that uses the source, certmagic's defaults when none does.
func renewalPolicyOf(s source) issuer.RenewalPolicy {
	for _, inst := range registeredIssuers() {
		if inst.options == nil {
			continue
		}
		if opts := inst.options.Load(); opts != nil && certmagic.StorageKeys.Safe(opts.IssuerKey) == s.issuerKey &&
			issuer.StorageIdentity(opts.Storage) == issuer.StorageIdentity(s.storage) {
			return opts.RenewalPolicy()
		}
	}
	return issuer.RenewalPolicy{}
}

func (a *adminAPI) handleRetry(w http.ResponseWriter, r *http.Request, rawName string) error {
	name, err := parseName(rawName)
	if err != nil {
		return err
	}
	srcs, err := a.sources(r.Context())
	if err != nil {
		return err
	}
	cleared := 0
	var conflict error
	for _, s := range srcs {
		rd := s.reader()
		if _, err := rd.Status(r.Context(), name); err != nil {
			if errors.Is(err, issuer.ErrUnknownName) {
				continue
			}
			return caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: err}
		}
		// does not wait for an issuance of the name in flight
		err := rd.ClearBackoff(r.Context(), name)
		switch {
		case err == nil:
			cleared++
		case errors.Is(err, issuer.ErrUnknownName):
		case errors.Is(err, issuer.ErrInFlight):
			conflict = fmt.Errorf("%w; its holds were cleared, its backoff was not: that issuance is the retry, and its outcome "+
				"replaces the backoff (none if it succeeds); if it fails, ask again once it has ended", err)
		case errors.Is(err, issuer.ErrNewerSchema):
			conflict = fmt.Errorf("not clearing the backoff of %s: %w; clear it through a node running that version", name, err)
		default:
			return caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: fmt.Errorf("clearing the backoff of %s: %w", name, err)}
		}
	}
	// holds are not an issuance's to write: cleared even while one is in
	// flight (a managed issuance may be waiting for this very hold)
	if err := clearNameHolds(r.Context(), srcs, name); err != nil {
		return caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: fmt.Errorf("clearing the hold on %s: %w", name, err)}
	}
	if conflict != nil {
		return caddy.APIError{HTTPStatus: http.StatusConflict, Err: conflict}
	}
	if cleared == 0 {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("%w: %s", issuer.ErrUnknownName, name)}
	}
	forgetInIssuers(name)
	for _, s := range srcs { // the other nodes forget it too (cachesync.go)
		if err := noteCleared(r.Context(), s.storage, s.issuerKey, name); err != nil {
			a.log().Warn("noting the cleared name for the other nodes; they forget its backoff when it ends",
				zap.String("name", name), zap.Error(err))
		}
	}
	a.log().Info("cleared failure backoff", zap.String("name", name))
	st, err := a.status(r.Context(), name)
	if err != nil {
		return err
	}
	return writeJSON(w, r, st)
}

func writeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: fmt.Errorf("encoding response: %w", err)}
	}
	if bytes.Equal(b, []byte("null")) {
		b = []byte("[]")
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if r.Method == http.MethodHead {
		return nil
	}
	_, err = w.Write(append(b, '\n'))
	return err
}

// Key material must never leave through the admin API. Stored resources
// hold none by design; redact re-checks every item anyway, cheaply (a
// byte search), and removes offending fields if a future change lets some
// in.
var (
	secretMarkers = [][]byte{[]byte("PRIVATE KEY"), []byte("keyAuthorization"), []byte("key_authorization"),
		[]byte("mac_key"), []byte("hmac")}
	secretFields = []string{"keyAuthorization", "key_authorization", "mac_key", "hmac", "private_key", "account_key"}
)

func redact(raw json.RawMessage) json.RawMessage {
	found := false
	for _, m := range secretMarkers {
		if bytes.Contains(raw, m) {
			found = true
			break
		}
	}
	if !found {
		return raw
	}
	var v any
	if json.Unmarshal(raw, &v) != nil {
		return json.RawMessage(`{"error":"resource withheld: it may hold key material"}`)
	}
	v = redactValue(v)
	out, err := json.Marshal(v)
	if err != nil {
		return json.RawMessage(`{"error":"resource withheld: it may hold key material"}`)
	}
	return out
}

func redactValue(v any) any {
	switch t := v.(type) {
	case map[string]any:
		for k, val := range t {
			if slices.Contains(secretFields, k) {
				delete(t, k)
				continue
			}
			t[k] = redactValue(val)
		}
	case []any:
		for i := range t {
			t[i] = redactValue(t[i])
		}
	case string:
		if strings.Contains(t, "PRIVATE KEY") {
			return "[redacted]"
		}
	}
	return v
}

// Interface guards.
var (
	_ caddy.AdminRouter = (*adminAPI)(nil)
	_ caddy.Provisioner = (*adminAPI)(nil)
)
