package issuer

import (
	"fmt"
	"time"
)

// When is a challenge that is not final abandoned, its answer to be removed
// and the challenge ended by maintenance? Only when no process will finish
// it: by its own deadline and its own owner's heartbeat, never by the
// settings of another policy. A challenge still queued in a live process
// has no deadline yet and a fresh heartbeat: it is never abandoned,
// however long it waits.

// deadlineMargin is how long after its deadline a challenge may still be
// finished by its process: the final write and clean-up (saveTimeout),
// and clocks that disagree by a few seconds.
const deadlineMargin = 30 * time.Second

// ownerView is what maintenance knows of a challenge's owner.
type ownerView struct {
	// here: the owner is the engine looking (this process).
	here bool
	// running: ...and it runs the challenge now.
	running bool
	// known: the heartbeat records could be read (and, for a missing
	// one, the store was confirmed to answer).
	known bool
	// beat is the owner's last heartbeat, zero when it has no record.
	beat time.Time
}

// abandonedAt returns when the challenge is to be taken as abandoned if
// nothing changes, and why; zero when nothing foreseeable makes it so
// (final, run by this process, or queued in a live process, whose
// heartbeat moves on). legacyTimeout judges a challenge written by a
// version that recorded no owner: the longest challenge_timeout known.
func abandonedAt(ch *Challenge, o ownerView, legacyTimeout time.Duration) (time.Time, string) {
	touched := lastTouched(ch)
	switch {
	case IsFinal(KindChallenge, ch.State):
		return time.Time{}, ""
	case o.here && o.running:
		return time.Time{}, "" // its own deadline ends it
	case o.here:
		// this process wrote it and no longer runs it: the run ended
		// without recording its end (a write that failed)
		return touched, "abandoned: the run that had it ended without recording it"
	case ch.Owner == "":
		return touched.Add(legacyTimeout + deadlineMargin),
			fmt.Sprintf("abandoned: not updated since %s (written by a version that records no owner)", stamp(touched))
	}
	var at time.Time
	var why string
	if !ch.Deadline.IsZero() {
		at = ch.Deadline.Add(deadlineMargin)
		why = fmt.Sprintf("abandoned: no process finished it by its deadline, %s", stamp(ch.Deadline))
	}
	if o.known {
		lapse := touched.Add(heartbeatLapse)
		reason := fmt.Sprintf("abandoned: its process (owner %s) left no heartbeat", ch.Owner)
		if !o.beat.IsZero() {
			lapse = o.beat.Add(heartbeatLapse)
			reason = fmt.Sprintf("abandoned: its process (owner %s) stopped; last heartbeat %s", ch.Owner, stamp(o.beat))
		}
		if at.IsZero() || lapse.Before(at) {
			at, why = lapse, reason
		}
	}
	return at, why
}

// isAbandoned reports whether the challenge is abandoned at now, and why.
func isAbandoned(ch *Challenge, o ownerView, legacyTimeout time.Duration, now time.Time) (bool, string) {
	at, why := abandonedAt(ch, o, legacyTimeout)
	if at.IsZero() || now.Before(at) {
		return false, ""
	}
	return true, why
}

// lastTouched is when the challenge was last written (created, at the
// least).
func lastTouched(ch *Challenge) time.Time {
	t := ch.Updated
	if ch.Created.After(t) {
		t = ch.Created
	}
	if t.IsZero() {
		return time.Unix(0, 0)
	}
	return t
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }
