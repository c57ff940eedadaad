package issuer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"time"

	"github.com/caddyserver/certmagic"
)

// What store.load does with a stored value it cannot trust, beyond JSON
// that does not decode (set aside in load itself): a value that is not the
// resource stored under its key, and a value the storage itself cannot
// return. Both are set aside, so the workflow starts clean for the name
// instead of failing on every attempt.

// belongsAt checks that a decoded resource is the one its key names: a
// CertificateRequest, Order or Challenge carries its ID, a name record its
// name. A value that decodes but names nothing, or something else (e.g.
// `{"version":1}`, or a copy of another resource), must not be taken for
// the resource: its empty URLs and states would be acted on.
func belongsAt(kind, id string, v any) error {
	var got string
	switch r := v.(type) {
	case *CertificateRequest:
		got = r.ID
	case *Order:
		got = r.ID
	case *Challenge:
		got = r.ID
	case *NameRecord:
		got = r.Name
	case *resourceHead:
		if kind == kindNames {
			got = r.Name
		} else {
			got = r.ID
		}
	default:
		return nil // records keyed by something they do not carry (blocks)
	}
	// keys are certmagic.StorageKeys.Safe of the ID or name (lower case):
	// compare what each would be stored under
	if got == "" || certmagic.StorageKeys.Safe(got) != certmagic.StorageKeys.Safe(id) {
		return fmt.Errorf("the stored %s names %q, not %q: not the resource of this key", kindSingular(kind), got, id)
	}
	return nil
}

func kindSingular(kind string) string {
	switch kind {
	case KindRequest:
		return "certificate request"
	case KindOrder:
		return "order"
	case KindChallenge:
		return "challenge"
	case kindNames:
		return "name record"
	}
	return kind
}

// unreadable handles a load that failed with something other than "not
// found". Usually that is the storage failing, and the step is retried. But
// a backend that wraps values in an envelope of its own (the Redis module:
// JSON with compression and encryption flags) cannot return a value that
// was not written through it, e.g. garbage or a truncated copy, and fails
// on it forever: the name would then fail on every attempt. So when the
// store is answering (the sentinel reads back) and a second read of the key
// fails again the same way, the value is taken as corrupt: what is known
// of it (the key, the error, the time) is kept under corrupt/ and the key
// is removed, as for a value certflow cannot decode. The value itself
// cannot be kept: the storage does not return it.
//
// An outage is never taken for corruption: the sentinel does not read back
// then (backends that report an outage as "not found" never get here). A
// storage that cannot read anything (a wrong encryption key, say) fails the
// sentinel too, so nothing is removed then either.
func (s store) unreadable(ctx context.Context, key string, loadErr error) error {
	failure := fmt.Errorf("%w: loading %s: %w", ErrStorage, key, loadErr)
	if ctx.Err() != nil {
		return failure
	}
	if _, err := s.storage.Load(ctx, s.sentinelKey()); err != nil {
		return failure
	}
	_, again := s.storage.Load(ctx, key)
	if again == nil || errors.Is(again, fs.ErrNotExist) || ctx.Err() != nil {
		// it reads now (or is gone): a passing failure; the step is retried
		return failure
	}
	note, err := json.Marshal(unreadableNote{
		Key:   key,
		Error: again.Error(),
		Found: time.Now().UTC(),
		Note:  "the storage could not return this value, so it was removed to let the workflow start clean",
	})
	if err != nil {
		return failure
	}
	return s.setAside(ctx, key, note, fmt.Errorf("unreadable: %w", again))
}

// unreadableNote is what is kept under corrupt/ of a value the storage
// could not return.
type unreadableNote struct {
	Key   string    `json:"key"`
	Error string    `json:"error"`
	Found time.Time `json:"found"`
	Note  string    `json:"note"`
}
