package issuer

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// TestRunMaintenancePassOptions: a pass run on demand refuses options it
// cannot run with, with an error saying which, and reports a context that
// ended before the pass did; with valid options over an empty store it
// succeeds and writes nothing but the sweep's marker.
func TestRunMaintenancePassOptions(t *testing.T) {
	at := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		desc    string
		ctx     context.Context
		opts    func(ms *memStorage) Options
		at      time.Time
		wantErr string
	}{
		{"no storage", context.Background(), func(*memStorage) Options { return Options{IssuerKey: "certflow-test"} }, at, "no storage"},
		{"no issuer key", context.Background(), func(ms *memStorage) Options { return Options{Storage: ms} }, at, "no issuer key"},
		{"no clock", context.Background(), func(ms *memStorage) Options { return Options{Storage: ms, IssuerKey: "certflow-test"} }, time.Time{}, "no time"},
		{"context ended", canceled, func(ms *memStorage) Options { return Options{Storage: ms, IssuerKey: "certflow-test"} }, at, "cut short"},
		{"empty store", context.Background(), func(ms *memStorage) Options { return Options{Storage: ms, IssuerKey: "certflow-test"} }, at, ""},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			ms := newMemStorage()
			err := RunMaintenancePass(tc.ctx, tc.opts(ms), tc.at)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("RunMaintenancePass: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("RunMaintenancePass: error %v, want one saying %q", err, tc.wantErr)
			case tc.desc == "context ended" && !errors.Is(err, context.Canceled):
				t.Fatalf("RunMaintenancePass: error %v does not wrap context.Canceled", err)
			}
			if tc.wantErr != "" && tc.desc != "context ended" && len(ms.m) != 0 {
				t.Errorf("refused options, yet the store holds %d keys", len(ms.m))
			}
			if tc.wantErr == "" {
				s := store{storage: ms, issuerKey: "certflow-test"}
				for k := range ms.m {
					if k != s.nameSweepKey() {
						t.Errorf("a pass over an empty store wrote %s", k)
					}
				}
			}
		})
	}
}
