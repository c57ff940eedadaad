package issuer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
)

// Reads that change nothing. The admin API and the CLI read the same
// resources as the workflow, but a read must never move or delete what it
// finds: during a rolling upgrade an older node answering a status request
// would otherwise remove records a newer node wrote. And a record written by
// a newer certflow is not this binary's to judge, so even the workflow
// leaves it in place.

// ErrNewerSchema marks a stored resource written by a newer certflow: its
// schema version is above SchemaVersion. It is left in place and reported,
// never set aside; the step that needed it fails, and nobody is charged for
// it (it is not the name's failure).
var ErrNewerSchema = errors.New("written by a newer certflow")

// decodeResource decodes the stored value b of kind/id into v, after
// checking its schema version and that it is the resource of its key
// (belongsAt). A newer version is ErrNewerSchema; any other problem is
// returned as is, for the caller to set aside (load) or report (inspect).
func decodeResource(kind, id string, b []byte, v any) error {
	var head struct {
		Version int `json:"version"`
	}
	if err := json.Unmarshal(b, &head); err != nil {
		return fmt.Errorf("decoding: %w", err)
	}
	if head.Version > SchemaVersion {
		// not this binary's to judge, and not the name's failure
		return charge(PartyNobody, fmt.Errorf("%w (schema version %d; this one knows %d): left in place", ErrNewerSchema, head.Version, SchemaVersion))
	}
	if head.Version != SchemaVersion {
		return fmt.Errorf("schema version %d, want %d", head.Version, SchemaVersion)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("decoding: %w", err)
	}
	return belongsAt(kind, id, v)
}

// inspect is load without side effects: what load would set aside is
// reported as ErrCorrupt and left where it is (the workflow sets it aside
// when it next needs it), a value the storage cannot return is a storage
// error, and a newer resource is ErrNewerSchema, as for load.
func (s store) inspect(ctx context.Context, kind, id string, v any) error {
	key := s.key(kind, id)
	b, err := s.storage.Load(ctx, key)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("loading %s: %w", key, fs.ErrNotExist)
	}
	if err != nil {
		return storageErr("loading", key, err)
	}
	if err := decodeResource(kind, id, b, v); err != nil {
		if errors.Is(err, ErrNewerSchema) {
			return fmt.Errorf("%s: %w", key, err)
		}
		return fmt.Errorf("%w: %s: %w (left in place; the next issuance of the name sets it aside)", ErrCorrupt, key, err)
	}
	return nil
}
