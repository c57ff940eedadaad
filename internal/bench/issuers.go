package bench

import "fmt"

// benchEmail is the ACME account contact of both issuers.
const benchEmail = "bench@example.com"

// issuerEnv is what an issuer object needs to know about a run.
type issuerEnv struct {
	directoryURL string // the CA's ACME directory
	serverRoots  string // PEM file trusted for the CA's HTTPS server
	dnsAddr      string // DNS server answering 127.0.0.1 for every name
	httpPort     int    // Caddy's HTTP port, where HTTP-01 is answered
}

// issuerObject returns the Caddy JSON issuer object for issuer (Stock or
// Certflow). Both use the same CA, account email and trusted roots and only
// HTTP-01 (TLS-ALPN-01 disabled); certflow's self-check resolves names with
// the rig's DNS and fetches tokens on Caddy's HTTP port, as the CA does.
// Everything else is each issuer's default.
func issuerObject(issuer string, env issuerEnv) (map[string]any, error) {
	common := map[string]any{
		"ca":                      env.directoryURL,
		"email":                   benchEmail,
		"trusted_roots_pem_files": []string{env.serverRoots},
		"challenges":              map[string]any{"tls-alpn": map[string]any{"disabled": true}},
	}
	switch issuer {
	case Stock:
		common["module"] = "acme"
	case Certflow:
		common["module"] = "certflow"
		common["self_check"] = map[string]any{
			"resolvers": []string{env.dnsAddr},
			"http_port": env.httpPort,
		}
	default:
		return nil, fmt.Errorf("unknown issuer %q (want %q or %q)", issuer, Stock, Certflow)
	}
	return common, nil
}
