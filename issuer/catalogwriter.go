package issuer

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

// The catalog (catalog.go) and the names' expiry notes (nameexpiry.go) are
// not needed to resume a workflow, only to list resources and to find
// names to forget, so they are written off the issuance path, by one
// goroutine per process: an update waits catalogDelay for more of its
// record's, then every record changed is written once. During a burst that
// is a write every couple of seconds for hundreds of issuances, instead of
// a write per resource.
//
// A record lost in a crash (the updates held here) only leaves its
// resources out of the lists until they are next written, or until
// maintenance's full listing finds them (a challenge); a stale entry is
// harmless (queries check the resource itself). Another node lists what
// this one did at most catalogDelay late; this node's own status views
// flush first (FlushIndex). When the last workflow in flight ends, there is
// nothing left to merge with: what is held is written at once, so a
// burst's entries are written as it ends rather than seconds later.

const (
	// catalogDelay is how long an update waits for more of its record's.
	catalogDelay = 2 * time.Second
	// catalogTick is how much later than the earliest due update the
	// writer takes what is due, so updates due close together go in one
	// round.
	catalogTick = 100 * time.Millisecond
	// catalogRetry is how soon records whose write failed are written
	// again.
	catalogRetry = 5 * time.Second
	// catalogParallel bounds the records written at once.
	catalogParallel = 4
	// maxHeldUpdates makes the writer take what is held at once when this
	// many updates wait, so the backlog never grows without bound.
	maxHeldUpdates = 20000
)

// heldKey identifies what an update is about: a resource, or (kind
// expiryKind) a name's expiry note.
type heldKey struct {
	store, kind, id string
}

const expiryKind = "expiry"

// heldUpdate is the latest change of one resource (or note) not yet
// applied to its record.
type heldUpdate struct {
	s     store
	entry catalogEntry // for a resource
	at    time.Time    // for an expiry note: when the name's record may go
	due   time.Time
}

type catalogWriter struct {
	once    sync.Once
	writer  string // this process's writer ID
	mu      sync.Mutex
	held    map[heldKey]*heldUpdate
	flushes int  // FlushIndex calls waiting: take everything now
	drain   bool // take everything at the next round
	running int  // workflows in flight in this process
	wake    chan struct{}
	pending int           // held updates, and taken ones not yet written
	idle    chan struct{} // closed when pending drops to 0

	// owned by the writing goroutine
	books    map[string]*catalogBook // by storeID
	expiries map[string]*expiryBook  // by storeID
}

var catalog catalogWriter

func (cw *catalogWriter) start() {
	var b [6]byte
	_, _ = rand.Read(b[:])
	cw.writer = hex.EncodeToString(b[:])
	cw.held = map[heldKey]*heldUpdate{}
	cw.wake = make(chan struct{}, 1)
	cw.books = map[string]*catalogBook{}
	cw.expiries = map[string]*expiryBook{}
	go cw.loop()
}

// writerID is this process's writer ID.
func (cw *catalogWriter) writerID() string {
	cw.once.Do(cw.start)
	return cw.writer
}

// submit records that a resource of kind is now in state, stored where in
// says (catalogEntry.In); its entry is written later, merged with the
// resource's next changes.
func (cw *catalogWriter) submit(s store, kind, id, name, state, in string) {
	e := catalogEntry{Kind: catalogKind(kind), ID: id, Name: name, State: state, In: in, At: time.Now().UnixMilli()}
	cw.hold(heldKey{storeID(s), kind, id}, &heldUpdate{s: s, entry: e})
}

// noteExpiry records that the record of name may be forgotten from at on,
// for maintenance to look at it then (nameexpiry.go).
func (cw *catalogWriter) noteExpiry(s store, name string, at time.Time) {
	cw.hold(heldKey{storeID(s), expiryKind, name}, &heldUpdate{s: s, entry: catalogEntry{Name: name}, at: at})
}

func (cw *catalogWriter) hold(key heldKey, u *heldUpdate) {
	cw.once.Do(cw.start)
	cw.mu.Lock()
	if old, ok := cw.held[key]; ok {
		u.due = old.due // merged: it keeps its place
		cw.held[key] = u
		cw.mu.Unlock()
		return
	}
	u.due = time.Now().Add(catalogDelay)
	cw.held[key] = u
	if cw.pending == 0 {
		cw.idle = make(chan struct{})
	}
	cw.pending++
	// the writer sleeps while nothing is held, and a flush waiting must
	// not wait for this one's delay
	wake := len(cw.held) == 1 || cw.flushes > 0 || len(cw.held) >= maxHeldUpdates
	if len(cw.held) >= maxHeldUpdates {
		cw.drain = true
	}
	cw.mu.Unlock()
	if wake {
		nudge(cw.wake)
	}
}

func (cw *catalogWriter) workflowStarted() {
	cw.once.Do(cw.start)
	cw.mu.Lock()
	cw.running++
	cw.mu.Unlock()
}

// workflowEnded has what is held written at once when no workflow is left
// in flight.
func (cw *catalogWriter) workflowEnded() {
	cw.once.Do(cw.start)
	cw.mu.Lock()
	cw.running--
	idle := cw.running == 0 && len(cw.held) > 0
	if idle {
		cw.drain = true
	}
	cw.mu.Unlock()
	if idle {
		nudge(cw.wake)
	}
}

// loop takes the due updates, applies them to their records and writes
// the records they changed, when the earliest held update is due (and a
// tick later), or at once when woken by a flush or the end of the last
// workflow. With nothing held and nothing to retry it sleeps.
func (cw *catalogWriter) loop() {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case <-timer.C:
		case <-cw.wake:
		}
		due, next := cw.takeDue(time.Now())
		failed := cw.write(due)
		cw.done(len(due))
		timer.Stop()
		if failed && (next.IsZero() || time.Until(next) > catalogRetry) {
			next = time.Now().Add(catalogRetry)
		}
		if !next.IsZero() {
			timer.Reset(time.Until(next) + catalogTick)
		}
	}
}

// takeDue removes and returns the updates to apply now: the due ones, or
// all of them while a flush waits or after the last workflow ended. next
// is when the earliest update still held is due (zero when none is).
func (cw *catalogWriter) takeDue(now time.Time) (due []*heldUpdate, next time.Time) {
	cw.mu.Lock()
	defer cw.mu.Unlock()
	all := cw.flushes > 0 || cw.drain
	cw.drain = false
	for key, u := range cw.held {
		switch {
		case all || !u.due.After(now):
			due = append(due, u)
			delete(cw.held, key)
		case next.IsZero() || u.due.Before(next):
			next = u.due
		}
	}
	return due, next
}

func (cw *catalogWriter) done(n int) {
	if n == 0 {
		return
	}
	cw.mu.Lock()
	defer cw.mu.Unlock()
	cw.pending -= n
	if cw.pending == 0 {
		close(cw.idle)
	}
}

// write applies updates to their records and writes every record that
// changed (or whose earlier write failed). It reports whether a write
// failed.
func (cw *catalogWriter) write(updates []*heldUpdate) (failed bool) {
	ctx, cancel := context.WithTimeout(context.Background(), saveTimeout)
	defer cancel()
	now := time.Now()
	// in ID order, so the records a round starts hold consecutive IDs
	slices.SortFunc(updates, func(a, b *heldUpdate) int { return strings.Compare(a.entry.ID, b.entry.ID) })
	for _, u := range updates {
		id := storeID(u.s)
		if u.entry.ID == "" {
			eb := cw.expiries[id]
			if eb == nil {
				eb = newExpiryBook(u.s)
				cw.expiries[id] = eb
			}
			eb.s = u.s
			eb.add(u.entry.Name, u.at)
			continue
		}
		b := cw.books[id]
		if b == nil {
			b = newCatalogBook(u.s)
			cw.books[id] = b
		}
		b.s = u.s // a reload's newer store value
		if err := b.apply(ctx, cw.writer, u.entry, now); err != nil {
			failed = true
			cw.warn(u.s, "reading a catalog record to update it", err)
		}
	}
	var jobs []func() error
	for _, b := range cw.books {
		for _, d := range b.dirty() {
			data, err := d.sheet.encode(cw.writer)
			if err != nil {
				cw.warn(b.s, "encoding a catalog record", err)
				d.sheet.dirty = false
				continue
			}
			d.sheet.dirty = false
			key := b.s.catalogKey(d.hour, d.sheet.start, cw.writer)
			d.sheet.written = true // its start is fixed from now: a failed write is retried under it
			jobs = append(jobs, func() error {
				if err := b.s.storage.Store(ctx, key, data); err != nil {
					d.sheet.dirty = true
					cw.warn(b.s, "writing a catalog record", storageErr("storing", key, err))
					return err
				}
				return nil
			})
		}
		b.evict(now)
	}
	for _, eb := range cw.expiries {
		jobs = append(jobs, eb.writes(ctx, cw, now)...)
	}
	if len(jobs) == 0 {
		return failed
	}
	var mu sync.Mutex
	sem := make(chan struct{}, catalogParallel)
	var wg sync.WaitGroup
	for _, job := range jobs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := job(); err != nil {
				mu.Lock()
				failed = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return failed
}

func (cw *catalogWriter) warn(s store, msg string, err error) {
	if s.logger != nil {
		s.logger.Warn(msg, zap.Error(err))
	}
}

// FlushIndex waits, at most for timeout, until this process has written
// the catalog updates it holds, so a status view served by this process
// lists what it just did.
func FlushIndex(timeout time.Duration) {
	cw := &catalog
	cw.once.Do(cw.start)
	cw.mu.Lock()
	if cw.pending == 0 {
		cw.mu.Unlock()
		return
	}
	idle := cw.idle
	cw.flushes++
	cw.mu.Unlock()
	defer func() {
		cw.mu.Lock()
		cw.flushes--
		cw.mu.Unlock()
	}()
	nudge(cw.wake)
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-idle:
	case <-timer.C:
	}
}

// expiryBook is this writer's expiry notes in one store, by the hour they
// fall in (nameexpiry.go).
type expiryBook struct {
	s     store
	hours map[string]*expirySheet
}

type expirySheet struct {
	names map[string]bool
	dirty bool
}

func newExpiryBook(s store) *expiryBook {
	return &expiryBook{s: s, hours: map[string]*expirySheet{}}
}

func (eb *expiryBook) add(name string, at time.Time) {
	hour := at.UTC().Format(expiryHourLayout)
	sh := eb.hours[hour]
	if sh == nil {
		sh = &expirySheet{names: map[string]bool{}}
		eb.hours[hour] = sh
	}
	if !sh.names[name] {
		sh.names[name] = true
		sh.dirty = true
	}
}

// expiryRecord is a writer's notes of one hour as stored.
type expiryRecord struct {
	Version int      `json:"version"`
	Writer  string   `json:"writer"`
	Names   []string `json:"names"`
}

// writes returns the writes of the changed hours, and forgets the hours
// that are over and written (notes are always for later hours: nothing
// is added to them).
func (eb *expiryBook) writes(ctx context.Context, cw *catalogWriter, now time.Time) []func() error {
	var jobs []func() error
	for hour, sh := range eb.hours {
		if !sh.dirty {
			if end, err := time.Parse(expiryHourLayout, hour); err == nil && now.After(end.Add(time.Hour)) {
				delete(eb.hours, hour)
			}
			continue
		}
		rec := expiryRecord{Version: SchemaVersion, Writer: cw.writer}
		for n := range sh.names {
			rec.Names = append(rec.Names, n)
		}
		slices.Sort(rec.Names)
		data, err := json.Marshal(rec)
		if err != nil {
			continue
		}
		sh.dirty = false
		key := path.Join(eb.s.expiryDir(hour), cw.writer+".json")
		s := eb.s
		jobs = append(jobs, func() error {
			if err := s.storage.Store(ctx, key, data); err != nil {
				sh.dirty = true
				cw.warn(s, "writing the names' expiry notes", storageErr("storing", key, err))
				return err
			}
			return nil
		})
	}
	return jobs
}
