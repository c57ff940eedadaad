package integration

import (
	"encoding/json"
	"io"
	"net/http"
	"sync/atomic"

	"github.com/certflow/certflow/integration/rig"
)

// rejectFirstOrder returns a CA fault hook answering the first new-order
// request naming name with a 400 rejectedIdentifier problem carrying
// detail; every other request goes to Pebble.
func rejectFirstOrder(name, detail string) rig.Fault {
	var done atomic.Bool
	problem, _ := json.Marshal(map[string]any{
		"type":   "urn:ietf:params:acme:error:rejectedIdentifier",
		"detail": detail,
		"status": http.StatusBadRequest,
	})
	return func(r *http.Request) (int, http.Header, string, bool) {
		if rig.KindOf(r) != rig.KindNewOrder || done.Load() {
			return 0, nil, "", false
		}
		body, err := io.ReadAll(r.Body)
		if err != nil || !contains(rig.OrderIdentifiers(body), name) {
			return 0, nil, "", false
		}
		if !done.CompareAndSwap(false, true) {
			return 0, nil, "", false
		}
		h := http.Header{}
		h.Set("Content-Type", "application/problem+json")
		return http.StatusBadRequest, h, string(problem), true
	}
}
