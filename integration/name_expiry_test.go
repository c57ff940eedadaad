package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"path"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/certflow/certflow/internal/dirsnap"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/certflow/certflow/integration/rig"
	"github.com/certflow/certflow/issuer"
)

// A name asked for once, failed, and never asked for again leaves nothing
// under certflow's prefix once the documented time has passed (README,
// "Storage, resources and states"; docs/design.md): its record goes 7 days
// (the longest of the default retention age and the longest failure
// backoff) after its last write or next attempt, whichever is later, at the
// first hourly pass after the end of the hour that time falls in (the
// expiry notes are kept by the hour); its requests, orders and challenges
// and their catalog entries when older than the retention age (7 days); its
// holds an hour after they end. These tests fail names with real Caddy and
// Pebble, stop Caddy, and run maintenance's passes
// (issuer.RunMaintenancePass) over the same storage at the clocks around
// each of those times.

const (
	// nameKeep is the documented time a name's record is kept after its
	// last write or next attempt, with the default settings.
	nameKeep = max(issuer.DefaultRetentionAge, issuer.DefaultBackoffMax)
	// heldKeep is how long after its end a hold is kept.
	heldKeep = time.Hour
	// idTimeLayout is the creation time at the start of a resource ID.
	idTimeLayout = "20060102-150405.000000000"
	// nameSweepEvery is how often every name's record is looked at
	// (docs/design.md: once a week), whatever the expiry notes say.
	nameSweepEvery = 7 * 24 * time.Hour
)

// expiryScenario is one environment: the certflow issuer's settings, and
// names that fail in it, each by its own cause.
type expiryScenario struct {
	desc   string
	issuer func(e *env) map[string]any
	// failing are the names to fail, with what makes each fail (run
	// before Caddy starts).
	failing map[string]func(e *env, rec *caRecorder)
	// check looks at what a failed name left, before any pass: that the
	// cause did what the scenario means.
	check func(t *testing.T, snap expirySnapshot, name string)
}

// TestNameExpiryFailedNamesLeaveNothing: names asked for once by a TLS
// handshake that fail (the CA refuses the order; the CA limits the name
// with a 429 and a Retry-After of a day: a hold; the self-check never
// passes: an order left pending and a challenge of its own; the CA finds
// the challenge invalid: an invalid order and challenge) beside a name
// issued normally. With Caddy stopped, passes over the storage as at later
// clocks keep every record until its documented time (a name's record with
// its backoff until max(last write, next attempt) + 7 days, each request
// until it is older than the retention age, a hold until an hour after its
// end) and leave, after the last of those times, no key under certflow/
// that names a failed name or the ID of any of its resources, while the
// issued name's certificate stays as it was.
func TestNameExpiryFailedNamesLeaveNothing(t *testing.T) {
	const okName = "kept.test"
	scenarios := []expiryScenario{
		{
			desc:   "refused, held, self-check failing",
			issuer: observeIssuer,
			failing: map[string]func(e *env, rec *caRecorder){
				"refused.test": func(e *env, _ *caRecorder) {
					if err := e.ca.BlockDomain("refused.test"); err != nil {
						e.t.Fatal(err)
					}
				},
				"held.test": func(_ *env, rec *caRecorder) {
					rec.reset(limitNewOrders(map[string]bool{"held.test": true}, retryAfterOneDay,
						func(string) string { return detailUnrecognised }))
				},
				"unreach.test": func(e *env, _ *caRecorder) { e.block("unreach.test") },
			},
			check: func(t *testing.T, snap expirySnapshot, name string) {
				switch name {
				case "held.test":
					if len(snap.holds(name)) == 0 {
						t.Fatalf("no hold stored for %s after its 429:\n%s", name, snap.listing())
					}
				case "unreach.test":
					if len(snap.resourcesOf(issuer.KindChallenge, name)) == 0 {
						t.Fatalf("no challenge record of its own for %s, whose self-check failed:\n%s", name, snap.listing())
					}
				}
			},
		},
		{
			desc: "challenge invalid at the CA",
			issuer: func(e *env) map[string]any {
				iss := observeIssuer(e)
				iss["self_check"].(map[string]any)["advisory"] = true
				return iss
			},
			failing: map[string]func(e *env, rec *caRecorder){
				"invalid.test": func(e *env, _ *caRecorder) { e.block("invalid.test") },
			},
			check: func(t *testing.T, snap expirySnapshot, name string) {
				var req issuer.CertificateRequest
				for _, raw := range snap.resourcesOf(issuer.KindRequest, name) {
					if err := json.Unmarshal([]byte(raw), &req); err != nil {
						t.Fatal(err)
					}
				}
				if req.OrderRecord == nil || req.OrderRecord.State != issuer.OrderInvalid || len(req.ChallengeRecords) == 0 ||
					req.ChallengeRecords[0].State != issuer.ChallengeInvalid {
					t.Fatalf("%s's request should hold its invalid order and challenge: %s", name, dump(req))
				}
			},
		},
	}
	for _, sc := range scenarios {
		t.Run(sc.desc, func(t *testing.T) { runNameExpiry(t, sc, okName) })
	}
}

func runNameExpiry(t *testing.T, sc expiryScenario, okName string) {
	schedulerIdle(t)
	e := newEnv(t, envOptions{})
	rec := newCARecorder()
	e.ca.SetFault(rec.hook)
	failed := slices.Sorted(maps.Keys(sc.failing))
	for _, name := range failed {
		sc.failing[name](e, rec)
	}
	e.run(e.config(sc.issuer(e)))
	e.mustHandshake(okName)
	for _, name := range failed {
		if _, err := e.handshake(name); err == nil {
			t.Fatalf("handshake for %s succeeded; it should fail", name)
		}
		waitFor(t, "the failed request of "+name, pollMax, func() bool {
			reqs := e.resources(issuer.KindRequest, name)
			return len(reqs) == 1 && reqs[0].str("state") == issuer.RequestFailed
		})
	}
	if err := rig.StopCaddy(); err != nil {
		t.Fatal(err)
	}

	snap := takeExpirySnapshot(t, e)
	certs := dirsnap.Take(t, e.storage, func(rel string) bool { return strings.HasPrefix(rel, "certificates/") })
	if len(certs) == 0 || !fileExists(e.certPath(okName)) {
		t.Fatalf("no certificate stored for %s", okName)
	}
	for _, name := range failed {
		keys := snap.referringTo(name)
		t.Logf("keys of %s before any pass:\n  %s", name, strings.Join(keys, "\n  "))
		if snap.record(name) == nil && len(snap.holds(name)) == 0 {
			t.Fatalf("%s failed but left neither a name record nor a hold: nothing remembers its backoff\n%s", name, snap.listing())
		}
		if due, _, ok := snap.nameDue(name); ok && !slices.Contains(snap.noteHours(name), due.UTC().Format("20060102-15")) {
			t.Fatalf("the record of %s is due at %s, but the expiry notes name it for the hours %v",
				name, due.UTC().Format(time.RFC3339), snap.noteHours(name))
		}
		if len(snap.resourcesOf(issuer.KindRequest, name)) != 1 {
			t.Fatalf("want one request record of %s:\n%s", name, snap.listing())
		}
		if sc.check != nil {
			sc.check(t, snap, name)
		}
	}
	if tokens := e.tokenFiles(); len(tokens) != 0 {
		t.Fatalf("challenge tokens left after the issuances ended: %v", tokens)
	}

	core, logs := observer.New(zapcore.InfoLevel)
	t.Cleanup(func() {
		if t.Failed() {
			for _, l := range logs.All() {
				t.Logf("pass log: %s %s %v", l.Level, l.Message, l.ContextMap())
			}
		}
	})
	opts := issuer.Options{
		Storage:   &certmagic.FileStorage{Path: e.storage},
		IssuerKey: e.stateKey(),
		Logger:    zap.New(core),
	}
	clocks := snap.clocks(t, append([]string{okName}, failed...))
	if span := clocks[len(clocks)-1].at.Sub(clocks[0].at); span >= nameSweepEvery {
		t.Fatalf("the passes span %s: the weekly sweep would run again, and the expiry notes go untested", span)
	}
	for _, c := range clocks {
		if err := issuer.RunMaintenancePass(context.Background(), opts, c.at); err != nil {
			t.Fatal(err)
		}
		now := takeExpirySnapshot(t, e)
		snap.checkAt(t, now, c, append([]string{okName}, failed...))
		if diff := dirsnap.Diff(certs, dirsnap.Take(t, e.storage, func(rel string) bool {
			return strings.HasPrefix(rel, "certificates/")
		})); diff != "" {
			t.Fatalf("at %s: the certificates changed:\n%s", c, diff)
		}
	}
	if warned := logs.FilterLevelExact(zapcore.WarnLevel).All(); len(warned) > 0 {
		t.Errorf("the passes logged %d warnings; the first: %s %v", len(warned), warned[0].Message, warned[0].ContextMap())
	}
	last := clocks[len(clocks)-1]
	final := takeExpirySnapshot(t, e)
	for _, name := range failed {
		if keys := final.referringToAny(name, snap.idsOf(name)); len(keys) > 0 {
			t.Errorf("after the last pass (%s), keys under certflow/ still refer to %s or its resources:\n  %s",
				last, name, strings.Join(keys, "\n  "))
		}
	}
	if tokens := e.tokenFiles(); len(tokens) != 0 {
		t.Errorf("challenge tokens left: %v", tokens)
	}
	t.Logf("left under certflow/ after the last pass (%s):\n%s", last, final.listing())
}

// expirySnapshot is every file under certflow/ in the storage, by its path
// from the storage root, and the prefix of this env's issuer (certflow/<key>/).
type expirySnapshot struct {
	files  map[string]string
	prefix string
}

func takeExpirySnapshot(t *testing.T, e *env) expirySnapshot {
	t.Helper()
	return expirySnapshot{
		files:  dirsnap.Take(t, e.storage, func(rel string) bool { return strings.HasPrefix(rel, "certflow/") }),
		prefix: path.Join("certflow", certmagic.StorageKeys.Safe(e.stateKey())) + "/",
	}
}

// folder returns the files of one of the issuer's folders (names,
// requests, holds, catalog, expiry, ...), by path.
func (s expirySnapshot) folder(dir string) map[string]string {
	out := map[string]string{}
	for k, v := range s.files {
		if strings.HasPrefix(k, s.prefix+dir+"/") {
			out[k] = v
		}
	}
	return out
}

// record returns the stored record of name, nil if there is none.
func (s expirySnapshot) record(name string) *issuer.NameRecord {
	raw, ok := s.files[s.prefix+"names/"+name+".json"]
	if !ok {
		return nil
	}
	var rec issuer.NameRecord
	if err := json.Unmarshal([]byte(raw), &rec); err != nil {
		return nil
	}
	return &rec
}

// resourcesOf returns the stored records of kind (requests, orders,
// challenges: their own keys) of name, by path.
func (s expirySnapshot) resourcesOf(kind, name string) map[string]string {
	out := map[string]string{}
	for k, v := range s.folder(kind) {
		var head struct {
			Name string `json:"name"`
		}
		if json.Unmarshal([]byte(v), &head) == nil && head.Name == name {
			out[k] = v
		}
	}
	return out
}

// holds returns the stored holds whose scope names name, by path.
func (s expirySnapshot) holds(name string) map[string]issuer.Hold {
	out := map[string]issuer.Hold{}
	for k, v := range s.folder("holds") {
		var h issuer.Hold
		if json.Unmarshal([]byte(v), &h) == nil && slices.Contains(strings.Split(h.Scope.Value, ","), name) {
			out[k] = h
		}
	}
	return out
}

// idsOf returns the IDs of name's requests, orders and challenges: those
// of every stored object carrying the name, and those its record lists.
func (s expirySnapshot) idsOf(name string) map[string]bool {
	ids := map[string]bool{}
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if v["name"] == name {
				if id, ok := v["id"].(string); ok && id != "" {
					ids[id] = true
				}
			}
			for _, c := range v {
				walk(c)
			}
		case []any:
			for _, c := range v {
				walk(c)
			}
		}
	}
	for _, raw := range s.files {
		var v any
		if json.Unmarshal([]byte(raw), &v) == nil {
			walk(v)
		}
	}
	if rec := s.record(name); rec != nil {
		for _, id := range append(slices.Clone(rec.Recent), rec.LastRequest, rec.CurrentOrder) {
			if id != "" {
				ids[id] = true
			}
		}
	}
	return ids
}

// referringTo returns the paths whose path or content names name or the ID
// of one of its resources.
func (s expirySnapshot) referringTo(name string) []string {
	return s.referringToAny(name, s.idsOf(name))
}

func (s expirySnapshot) referringToAny(name string, ids map[string]bool) []string {
	var out []string
	for k, v := range s.files {
		hit := strings.Contains(k, name) || strings.Contains(v, `"`+name+`"`)
		for id := range ids {
			hit = hit || strings.Contains(k, id) || strings.Contains(v, id)
		}
		if hit {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

func (s expirySnapshot) listing() string {
	keys := slices.Sorted(maps.Keys(s.files))
	return "  " + strings.Join(keys, "\n  ")
}

// nameDue is when name's record may go (the documented time), and the end
// of the hour it falls in: the first pass from then on forgets it.
func (s expirySnapshot) nameDue(name string) (due, gone time.Time, ok bool) {
	rec := s.record(name)
	if rec == nil {
		return time.Time{}, time.Time{}, false
	}
	from := rec.Updated
	if rec.NextAttempt.After(from) {
		from = rec.NextAttempt
	}
	due = from.Add(nameKeep)
	return due, due.UTC().Truncate(time.Hour).Add(time.Hour), true
}

// idTime is the creation time in a resource ID.
func idTime(t *testing.T, id string) time.Time {
	t.Helper()
	if len(id) < len(idTimeLayout) {
		t.Fatalf("resource ID %q has no time", id)
	}
	at, err := time.Parse(idTimeLayout, id[:len(idTimeLayout)])
	if err != nil {
		t.Fatalf("resource ID %q: %v", id, err)
	}
	return at
}

// expiryClock is a time a pass runs at, and why.
type expiryClock struct {
	at  time.Time
	why string
}

func (c expiryClock) String() string { return c.at.UTC().Format(time.RFC3339) + " (" + c.why + ")" }

// clocks are the times to run passes at, in order: soon after the
// failures, and just before and just after each documented time of the
// names' records, resources and holds.
//
// The first pass runs the weekly sweep of every name's record (the store
// was never swept); two hours after the failures, so the next sweep is due
// after the last pass (every record goes within 7 days and an hour): the
// records are forgotten by their expiry notes, or with their last
// request, as in a process that has run for weeks.
func (s expirySnapshot) clocks(t *testing.T, names []string) []expiryClock {
	t.Helper()
	out := []expiryClock{{time.Now().Add(2 * time.Hour), "two hours after the failures"}}
	for _, name := range names {
		if due, gone, ok := s.nameDue(name); ok {
			out = append(out,
				expiryClock{due.Add(-time.Minute), "a minute before the record of " + name + " is due"},
				expiryClock{gone.Add(time.Second), "the first pass after the hour the record of " + name + " is due in"})
		}
		for _, h := range s.holds(name) {
			out = append(out,
				expiryClock{h.Until.Add(-time.Minute), "a minute before the hold of " + name + " ends"},
				expiryClock{h.Until.Add(heldKeep).Add(time.Second), "an hour after the hold of " + name + " ended"})
		}
	}
	for _, kind := range []string{issuer.KindRequest, issuer.KindOrder, issuer.KindChallenge} {
		for k := range s.folder(kind) {
			created := idTime(t, strings.TrimSuffix(path.Base(k), ".json"))
			out = append(out,
				expiryClock{created.Add(issuer.DefaultRetentionAge - time.Minute), "a minute before " + path.Base(k) + " is past the retention age"},
				expiryClock{created.Add(issuer.DefaultRetentionAge + time.Minute), "a minute after " + path.Base(k) + " is past the retention age"})
		}
	}
	slices.SortFunc(out, func(a, b expiryClock) int { return a.at.Compare(b.at) })
	return out
}

// checkAt checks, after a pass at c, what is left (now) of what the
// failures left (s): a name's record, its backoff unchanged, until its
// documented time, gone from the end of that hour on, and an expiry note
// of it while it is kept; every resource of its own until it is past the
// retention age, gone after, with a catalog entry while it is kept; every
// hold until an hour after its end, gone after.
func (s expirySnapshot) checkAt(t *testing.T, now expirySnapshot, c expiryClock, names []string) {
	t.Helper()
	var problems []string
	fail := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	for _, name := range names {
		if due, gone, ok := s.nameDue(name); ok {
			was, is := s.record(name), now.record(name)
			switch {
			case c.at.Before(due) && is == nil:
				fail("the record of %s is gone before it is due (%s)", name, due.UTC().Format(time.RFC3339))
			case c.at.Before(due) && (is.Failures != was.Failures || !is.NextAttempt.Equal(was.NextAttempt) || is.LastError != was.LastError):
				fail("the record of %s lost its backoff: was %d failures, next attempt %s; is %d, %s",
					name, was.Failures, was.NextAttempt, is.Failures, is.NextAttempt)
			case !c.at.Before(gone) && is != nil:
				fail("the record of %s (due %s) is still there", name, due.UTC().Format(time.RFC3339))
			}
			if is != nil && !now.notes(name) {
				fail("the record of %s is kept but no expiry note names it: only the weekly sweep would find it", name)
			}
		}
		for k, h := range s.holds(name) {
			_, kept := now.files[k]
			if end := h.Until.Add(heldKeep); c.at.Before(end) != kept {
				fail("hold %s of %s (ends %s): kept=%v", path.Base(k), name, h.Until.UTC().Format(time.RFC3339), kept)
			}
		}
	}
	catalog := strings.Join(slices.Collect(maps.Values(now.folder("catalog"))), "\n")
	for _, kind := range []string{issuer.KindRequest, issuer.KindOrder, issuer.KindChallenge} {
		for k, raw := range s.folder(kind) {
			var head struct {
				ID    string `json:"id"`
				State string `json:"state"`
			}
			if err := json.Unmarshal([]byte(raw), &head); err != nil {
				t.Fatalf("%s: %v", k, err)
			}
			_, kept := now.files[k]
			tooOld := c.at.Sub(idTime(t, head.ID)) > issuer.DefaultRetentionAge
			switch {
			case !issuer.IsFinal(kind, head.State) && !kept:
				fail("%s, in flight (%s), was deleted", k, head.State)
			case issuer.IsFinal(kind, head.State) && tooOld == kept:
				fail("%s (created %s): kept=%v, retention says %v", k, idTime(t, head.ID).Format(time.RFC3339), kept, !tooOld)
			}
			if kept && !strings.Contains(catalog, `"`+head.ID+`"`) {
				fail("%s is kept but the catalog lists it no more", k)
			}
		}
	}
	if len(problems) > 0 {
		t.Fatalf("after a pass at %s:\n  %s\nstorage:\n%s", c, strings.Join(problems, "\n  "), now.listing())
	}
}

// notes reports whether an expiry note names name.
func (s expirySnapshot) notes(name string) bool { return len(s.noteHours(name)) > 0 }

// noteHours returns the hours (expiry/<YYYYMMDD-HH>/) whose notes name
// name.
func (s expirySnapshot) noteHours(name string) []string {
	var hours []string
	for k, v := range s.folder("expiry") {
		var note struct {
			Names []string `json:"names"`
		}
		if json.Unmarshal([]byte(v), &note) == nil && slices.Contains(note.Names, name) {
			hours = append(hours, path.Base(path.Dir(k)))
		}
	}
	slices.Sort(hours)
	return slices.Compact(hours)
}
