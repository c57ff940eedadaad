package issuer

import "context"

// writeSentinel writes s's sentinel, as a running engine does the first
// time a key is found missing.
func writeSentinel(ctx context.Context, s store) error {
	return s.storage.Store(ctx, s.sentinelKey(), []byte("certflow"))
}
