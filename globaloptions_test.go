package certflow

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// TestGlobalOptionsLeaveStockIssuersAlone adapts Caddyfiles with global ACME
// options, tls shortcuts, stock and certflow issuers twice: with certflow
// answering Caddy's global-options filler (GetACMEIssuer, globaloptions.go)
// and with that turned off, which is how certflow adapted before. With every
// certflow issuer object blanked out, the two configs must be identical: the
// hook changes certflow's issuers and nothing else (no stock issuer, no
// policy, no shortcut site). And the hook must have changed something, or
// Caddy no longer calls it the way certflow expects.
func TestGlobalOptionsLeaveStockIssuersAlone(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("caddyfile", "testdata", "*.caddyfiletest"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden Caddyfiles: %v", err)
	}
	changedSome := false
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			raw, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			body, _, _ := strings.Cut(string(raw), "\n----------\n")
			with := adaptWithHook(t, body, true)
			without := adaptWithHook(t, body, false)
			if with != without {
				changedSome = true
			}
			if a, b := blankCertflow(t, with), blankCertflow(t, without); a != b {
				t.Errorf("with certflow's global-options hook, more than certflow's issuers changed:\nwith:    %s\nwithout: %s", a, b)
			}
		})
	}
	if !changedSome {
		t.Error("no golden Caddyfile's certflow issuer received a global option: Caddy no longer calls " +
			"GetACMEIssuer from " + globalDefaultsFunc)
	}
}

func adaptWithHook(t *testing.T, body string, on bool) string {
	t.Helper()
	saved := globalOptionsHook
	globalOptionsHook = on
	defer func() { globalOptionsHook = saved }()
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(body), nil)
	if err != nil {
		t.Fatalf("adapting (hook %v): %v", on, err)
	}
	return string(out)
}

// blankCertflow replaces every certflow issuer object in an adapted config
// by {"module":"certflow"}.
func blankCertflow(t *testing.T, cfg string) string {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(cfg), &v); err != nil {
		t.Fatal(err)
	}
	var walk func(any) any
	walk = func(v any) any {
		switch x := v.(type) {
		case map[string]any:
			if x["module"] == "certflow" {
				return map[string]any{"module": "certflow"}
			}
			for k, e := range x {
				x[k] = walk(e)
			}
		case []any:
			for i, e := range x {
				x[i] = walk(e)
			}
		}
		return v
	}
	out, _ := json.Marshal(walk(v))
	return string(out)
}
