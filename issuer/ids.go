package issuer

import (
	"crypto/rand"
	"encoding/hex"
	"time"
)

// newID returns a resource ID that sorts by creation time (so lists and
// retention need no extra index) and is unique across a cluster.
func newID(now time.Time) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return now.UTC().Format("20060102T150405.000000000Z") + "-" + hex.EncodeToString(b[:])
}

// idTime parses the creation time back out of an ID made by newID.
func idTime(id string) (time.Time, bool) {
	const layout = "20060102T150405.000000000Z"
	if len(id) < len(layout) {
		return time.Time{}, false
	}
	t, err := time.Parse(layout, id[:len(layout)])
	return t, err == nil
}
