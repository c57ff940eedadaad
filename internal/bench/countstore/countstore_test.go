package countstore

import (
	"context"
	"testing"

	"github.com/caddyserver/certmagic"
	dto "github.com/prometheus/client_model/go"
)

func counted(t *testing.T, op, area string) float64 {
	t.Helper()
	var m dto.Metric
	if err := calls.WithLabelValues(op, area).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func TestArea(t *testing.T) {
	for key, want := range map[string]string{
		"certificates/ca-dir/a.test/a.test.crt":               "certificates",
		"acme/ca-dir/challenge_tokens/a.test.json":            "challenge_tokens",
		"acme/ca-dir/users/x@example.com/x.json":              "acme",
		"certflow/certflow-ca-dir/requests/20260101-x.json":   "certflow/requests",
		"certflow/certflow-ca-dir/catalog/20260101-00/x.json": "certflow/catalog",
		"certflow/certflow-ca-dir/sentinel":                   "certflow/sentinel",
		"certflow/certflow-ca-dir/renewals.json":              "certflow/renewals",
		"rw_test_123":                                         "other",
	} {
		if got := Area(key); got != want {
			t.Errorf("Area(%q) = %q, want %q", key, got, want)
		}
	}
}

// noTryLock is a storage without TryLock.
type noTryLock struct{ certmagic.Storage }

// TestWrapCountsAndForwards: every call is counted by operation and area,
// and the wrapper is a TryLocker exactly when the storage it wraps is one.
func TestWrapCountsAndForwards(t *testing.T) {
	ctx := context.Background()
	fs := &certmagic.FileStorage{Path: t.TempDir()}
	w := Wrap(fs)
	if _, ok := w.(certmagic.TryLocker); !ok {
		t.Fatal("the wrapper of a FileStorage is no TryLocker")
	}
	if _, ok := Wrap(noTryLock{fs}).(certmagic.TryLocker); ok {
		t.Fatal("the wrapper of a storage without TryLock is a TryLocker")
	}
	before := counted(t, OpStore, "certificates")
	if err := w.Store(ctx, "certificates/x/a.crt", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if b, err := w.Load(ctx, "certificates/x/a.crt"); err != nil || string(b) != "x" {
		t.Fatalf("load through the wrapper: %q, %v", b, err)
	}
	if got := counted(t, OpStore, "certificates") - before; got != 1 {
		t.Errorf("%v stores counted, want 1", got)
	}
}
