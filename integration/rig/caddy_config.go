package rig

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"
)

// HelloBody is the response body template of the rig's catch-all route;
// Caddy replaces the placeholder with the request's host, so a request for
// a.test is answered "hello from a.test".
const HelloBody = "hello from {http.request.host}"

// defaultGracePeriod bounds how long stopping Caddy waits for connections.
const defaultGracePeriod = 2 * time.Second

// Policy is a TLS automation policy of a CaddyConfig.
type Policy struct {
	// Subjects are the names the policy applies to; empty makes it the
	// catch-all policy (at most one, placed last).
	Subjects []string
	// Issuers are the policy's issuer objects, each with its "module" key,
	// e.g. {"module": "certflow", "ca": ...}. Empty means Caddy's defaults.
	Issuers []map[string]any
	// OnDemand obtains certificates during TLS handshakes, subject to the
	// config's AskURL.
	OnDemand bool
}

// CaddyConfig builds the rig's Caddy JSON config: an HTTPS server on
// 127.0.0.1:HTTPSPort whose catch-all route answers HelloBody, an HTTP
// server on 127.0.0.1:HTTPPort (where Caddy answers HTTP-01 challenges and
// redirects everything else to HTTPS), a TLS app with the given automation
// policies and file-system storage.
type CaddyConfig struct {
	// AdminListen is the admin endpoint's address, e.g. "127.0.0.1:2999";
	// empty disables the admin endpoint. The config is never persisted.
	AdminListen string
	// HTTPPort and HTTPSPort are Caddy's http_port and https_port, and the
	// ports of its servers on 127.0.0.1. Required.
	HTTPPort, HTTPSPort int
	// StorageRoot is the directory of Caddy's file_system storage. Required.
	StorageRoot string
	// CountingStorage makes the storage the certflow_rig_counting module
	// at StorageRoot: the same files, with writes and lists counted
	// (StorageWrites, StorageLists).
	CountingStorage bool
	// AskURL is the on-demand permission endpoint (see StartAsk), required
	// when a policy is on demand.
	AskURL string
	// Issuer, when set, adds a catch-all on-demand policy with this issuer
	// object (e.g. {"module": "certflow", ...}) after Policies. The catch-all
	// policy is what answers challenges: Pebble's validator sends
	// "Host: name:port", and Caddy looks the policy up with the port kept.
	Issuer map[string]any
	// Fallbacks are more issuer objects of the catch-all policy, tried in
	// order after Issuer (certmagic moves to the next on any error).
	Fallbacks []map[string]any
	// Policies are automation policies placed before the catch-all one,
	// e.g. with Subjects for managed names or for a second issuer.
	Policies []Policy
	// Automate lists names Caddy manages (obtains and renews) at start,
	// without waiting for a handshake; give them a policy with Subjects.
	Automate []string
	// LogLevel is the level of Caddy's default log (e.g. "DEBUG", "ERROR");
	// empty keeps Caddy's default.
	LogLevel string
	// LogFile, when set, writes Caddy's default log to this file instead of
	// stderr.
	LogFile string
	// GracePeriod bounds how long stopping Caddy waits for connections.
	// Zero means 2s.
	GracePeriod time.Duration
	// KeepLocalCAOutOfSystemTrust configures Caddy's local CA (the pki app)
	// never to install its root into the system's trust store, which
	// Caddy otherwise does as soon as it manages an internal name such as
	// an IP address (and which needs root and changes the machine).
	KeepLocalCAOutOfSystemTrust bool
}

// JSON returns the config as Caddy JSON, for RunCaddy.
func (c CaddyConfig) JSON() ([]byte, error) {
	cfg, err := c.Build()
	if err != nil {
		return nil, err
	}
	out, err := json.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("encoding Caddy config: %w", err)
	}
	return out, nil
}

// Build returns the config as a JSON-ready map, for callers that want to
// adjust it before encoding.
func (c CaddyConfig) Build() (map[string]any, error) {
	if err := c.validate(); err != nil {
		return nil, err
	}
	admin := map[string]any{"config": map[string]any{"persist": false}}
	if c.AdminListen == "" {
		admin["disabled"] = true
	} else {
		admin["listen"] = c.AdminListen
	}

	apps := map[string]any{
		"http": c.httpApp(),
		"tls":  c.tlsApp(),
	}
	if c.KeepLocalCAOutOfSystemTrust {
		apps["pki"] = map[string]any{"certificate_authorities": map[string]any{
			"local": map[string]any{"install_trust": false},
		}}
	}
	storage := "file_system"
	if c.CountingStorage {
		storage = "certflow_rig_counting"
	}
	cfg := map[string]any{
		"admin":   admin,
		"storage": map[string]any{"module": storage, "root": c.StorageRoot},
		"apps":    apps,
	}
	if logs := c.logging(); logs != nil {
		cfg["logging"] = logs
	}
	return cfg, nil
}

// validate reports missing or contradictory settings.
func (c CaddyConfig) validate() error {
	var errs []error
	if c.HTTPPort <= 0 || c.HTTPSPort <= 0 {
		errs = append(errs, fmt.Errorf("HTTPPort (%d) and HTTPSPort (%d) must be set", c.HTTPPort, c.HTTPSPort))
	} else if c.HTTPPort == c.HTTPSPort {
		errs = append(errs, fmt.Errorf("HTTPPort and HTTPSPort must differ (both %d)", c.HTTPPort))
	}
	if c.StorageRoot == "" {
		errs = append(errs, errors.New("StorageRoot must be set"))
	}
	onDemand := c.Issuer != nil
	for i, p := range c.Policies {
		onDemand = onDemand || p.OnDemand
		if len(p.Subjects) == 0 && (c.Issuer != nil || i != len(c.Policies)-1) {
			errs = append(errs, fmt.Errorf("policy %d has no subjects but is not the last policy", i))
		}
	}
	if onDemand && c.AskURL == "" {
		errs = append(errs, errors.New("AskURL must be set when a policy is on demand"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("invalid Caddy config: %w", err)
	}
	return nil
}

// httpApp returns the http app: the HTTPS server with the hello route and
// the HTTP server on HTTPPort (automatic HTTPS adds its redirect routes to
// it; Caddy answers HTTP-01 challenges on every server before any route).
func (c CaddyConfig) httpApp() map[string]any {
	grace := c.GracePeriod
	if grace == 0 {
		grace = defaultGracePeriod
	}
	hello := map[string]any{
		"handle": []any{map[string]any{
			"handler": "static_response",
			"body":    HelloBody,
			"headers": map[string]any{"Content-Type": []string{"text/plain; charset=utf-8"}},
		}},
	}
	return map[string]any{
		"http_port":    c.HTTPPort,
		"https_port":   c.HTTPSPort,
		"grace_period": grace.String(),
		"servers": map[string]any{
			"https": map[string]any{
				"listen": []string{loopback(c.HTTPSPort)},
				"routes": []any{hello},
			},
			"http": map[string]any{
				"listen": []string{loopback(c.HTTPPort)},
			},
		},
	}
}

// tlsApp returns the tls app with the automation policies.
func (c CaddyConfig) tlsApp() map[string]any {
	policies := make([]any, 0, len(c.Policies)+1)
	for _, p := range c.Policies {
		policies = append(policies, p.toJSON())
	}
	if c.Issuer != nil {
		policies = append(policies, Policy{Issuers: append([]map[string]any{c.Issuer}, c.Fallbacks...), OnDemand: true}.toJSON())
	}
	automation := map[string]any{"policies": policies}
	if c.AskURL != "" {
		automation["on_demand"] = map[string]any{
			"permission": map[string]any{"module": "http", "endpoint": c.AskURL},
		}
	}
	app := map[string]any{"automation": automation}
	if len(c.Automate) > 0 {
		app["certificates"] = map[string]any{"automate": c.Automate}
	}
	return app
}

// toJSON returns p as a Caddy automation policy object.
func (p Policy) toJSON() map[string]any {
	out := map[string]any{}
	if len(p.Subjects) > 0 {
		out["subjects"] = p.Subjects
	}
	if len(p.Issuers) > 0 {
		out["issuers"] = p.Issuers
	}
	if p.OnDemand {
		out["on_demand"] = true
	}
	return out
}

// logging returns the logging config, or nil to keep Caddy's default.
func (c CaddyConfig) logging() map[string]any {
	if c.LogLevel == "" && c.LogFile == "" {
		return nil
	}
	def := map[string]any{}
	if c.LogLevel != "" {
		def["level"] = c.LogLevel
	}
	if c.LogFile != "" {
		def["writer"] = map[string]any{"output": "file", "filename": c.LogFile}
	}
	return map[string]any{"logs": map[string]any{"default": def}}
}

// loopback returns "127.0.0.1:<port>".
func loopback(port int) string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}
