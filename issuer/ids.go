package issuer

import (
	"crypto/rand"
	"encoding/hex"
	"time"
)

// idLayout is the time part of an ID: UTC, digits only, because storage keys
// are lower-cased (certmagic.StorageKeys.Safe) and must equal the ID.
const idLayout = "20060102-150405.000000000"

// newID returns a resource ID that sorts by creation time (so lists and
// retention need no extra index) and is unique across a cluster.
func newID(now time.Time) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return now.UTC().Format(idLayout) + "-" + hex.EncodeToString(b[:])
}

// idTime parses the creation time back out of an ID made by newID.
func idTime(id string) (time.Time, bool) {
	if len(id) < len(idLayout) {
		return time.Time{}, false
	}
	t, err := time.Parse(idLayout, id[:len(idLayout)])
	return t, err == nil
}
