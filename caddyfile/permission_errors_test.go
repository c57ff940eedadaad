package caddyfile_test

import (
	"strings"
	"testing"
)

// onDemandWith wraps options in `permission certflow { … }` inside the
// global on_demand_tls; the first option is on line 4 of the result.
func onDemandWith(options ...string) string {
	return "{\n" +
		"\ton_demand_tls {\n" +
		"\t\tpermission certflow {\n" +
		"\t\t\t" + strings.Join(options, "\n\t\t\t") + "\n" +
		"\t\t}\n" +
		"\t}\n" +
		"}\n\n" +
		"https:// {\n" +
		"\ttls {\n" +
		"\t\ton_demand\n" +
		"\t}\n" +
		"\trespond ok\n" +
		"}\n"
}

func TestAdaptPermissionErrors(t *testing.T) {
	const ask = "ask http://localhost:9123/allowed"
	for _, tc := range []struct {
		name      string
		caddyfile string
		wantMsg   string
		wantLine  int
	}{
		{"unknown option", onDemandWith(ask, "cache_forever"), "unrecognized certflow permission option 'cache_forever'", 5},
		{"no endpoint", onDemandWith("cache_denied 1m"), "certflow permission needs an endpoint", 5},
		{"ask twice", onDemandWith(ask, ask), "the endpoint is already specified", 5},
		{"ask and permission", onDemandWith(ask, "permission http http://localhost:9123/other"), "the endpoint is already specified", 5},
		{"ask without URL", onDemandWith("ask"), "wrong argument count", 4},
		{"ask with two URLs", onDemandWith("ask http://a/ask http://b/ask"), "wrong argument count", 4},
		{"permission without module", onDemandWith("permission"), "permission needs a module name", 4},
		{"permission of an unknown module", onDemandWith("permission nosuch"), "getting module named 'tls.permission.nosuch'", 4},
		{"permission certflow inside certflow", onDemandWith("permission certflow http://a/ask"), "cannot be certflow itself", 4},
		{"bad duration", onDemandWith(ask, "cache_allowed soon"), "invalid cache_allowed duration 'soon'", 5},
		{"zero duration", onDemandWith(ask, "ask_timeout 0s"), "invalid ask_timeout duration '0s': must be positive", 5},
		{"negative count", onDemandWith(ask, "max_concurrent_asks -1"), "invalid max_concurrent_asks -1: must be positive", 5},
		{"count not an integer", onDemandWith(ask, "cache_size many"), "invalid cache_size 'many': not an integer", 5},
		{"queue wait past ask_timeout", onDemandWith(ask, "ask_timeout 1s", "ask_queue_timeout 2s"), "ask_queue_timeout 2s is longer than ask_timeout 1s", 7},
		{"budget without window", onDemandWith(ask, "client_new_names 20"), "wrong argument count", 5},
		{"budget bad window", onDemandWith(ask, "client_new_names 20 often"), "invalid client_new_names window duration 'often'", 5},
		{"budget zero", onDemandWith(ask, "client_new_names 0 1m"), "invalid client_new_names count 0: must be positive", 5},
		{"budget on", onDemandWith(ask, "client_new_names on"), "wrong argument count", 5},
		{"two arguments", strings.Replace(onDemandWith(ask), "permission certflow {", "permission certflow http://a/ask http://b/ask {", 1), "wrong argument count", 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkAdaptError(t, tc.caddyfile, tc.wantMsg, tc.wantLine)
		})
	}
}
