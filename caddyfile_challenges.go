package certflow

import (
	"net"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// The Caddyfile subdirectives of the challenge types and the self-check
// (see UnmarshalCaddyfile for the grammar).

func (iss *Issuer) parseEnableHTTP(d *caddyfile.Dispenser) error {
	iss.typeConfig(&iss.challenges().HTTP).Enabled = true
	return noArgs(d)
}

func (iss *Issuer) parseEnableTLSALPN(d *caddyfile.Dispenser) error {
	iss.typeConfig(&iss.challenges().TLSALPN).Enabled = true
	return noArgs(d)
}

func (iss *Issuer) parseDisableHTTP(d *caddyfile.Dispenser) error {
	iss.typeConfig(&iss.challenges().HTTP).Disabled = true
	return noArgs(d)
}

func (iss *Issuer) parseDisableTLSALPN(d *caddyfile.Dispenser) error {
	iss.typeConfig(&iss.challenges().TLSALPN).Disabled = true
	return noArgs(d)
}

func (iss *Issuer) parseAltHTTPPort(d *caddyfile.Dispenser) error {
	port, err := portArg(d, "alt_http_port")
	iss.typeConfig(&iss.challenges().HTTP).AlternatePort = port
	return err
}

func (iss *Issuer) parseAltTLSALPNPort(d *caddyfile.Dispenser) error {
	port, err := portArg(d, "alt_tlsalpn_port")
	iss.typeConfig(&iss.challenges().TLSALPN).AlternatePort = port
	return err
}

// parseDistributed accepts only false: answers are always distributed
// through storage.
func (iss *Issuer) parseDistributed(d *caddyfile.Dispenser) error {
	var v string
	if !d.AllArgs(&v) {
		return d.ArgErr()
	}
	if v != "false" {
		return d.Errf("distributed takes only 'false' (answers are always distributed through storage), not '%s'", v)
	}
	distributed := false
	iss.challenges().Distributed = &distributed
	return nil
}

// challengesOrNil returns iss.Challenges or an empty config, never nil.
func (iss *Issuer) challengesOrNil() *ChallengesConfig {
	if iss.Challenges == nil {
		return new(ChallengesConfig)
	}
	return iss.Challenges
}

// typeConfig returns *field, allocating it first if needed.
func (iss *Issuer) typeConfig(field **ChallengeTypeConfig) *ChallengeTypeConfig {
	if *field == nil {
		*field = new(ChallengeTypeConfig)
	}
	return *field
}

// challenges returns iss.Challenges, allocating it first if needed.
func (iss *Issuer) challenges() *ChallengesConfig {
	if iss.Challenges == nil {
		iss.Challenges = new(ChallengesConfig)
	}
	return iss.Challenges
}

// unmarshalSelfCheck parses either
//
//	self_check off
//
// or
//
//	self_check {
//	    resolvers <host:port...>
//	    port <http-01 port>
//	    tlsalpn_port <port>
//	    interval <duration>
//	    attempt_timeout <duration>
//	    timeout <duration>
//	    advisory
//	}
//
// with the dispenser on the self_check token.
func (iss *Issuer) unmarshalSelfCheck(d *caddyfile.Dispenser) error {
	var sc SelfCheckConfig
	if iss.SelfCheck != nil {
		sc = *iss.SelfCheck
	}

	if d.NextArg() {
		if d.Val() != "off" {
			return d.Errf("self_check takes either 'off' or a block, not '%s'", d.Val())
		}
		if d.NextArg() {
			return d.ArgErr()
		}
		if d.NextBlock(d.Nesting()) {
			d.Prev() // report the line of the opening brace
			return d.Err("self_check off takes no block")
		}
		sc.Disabled = true
	} else {
		nesting := d.Nesting()
		if !d.NextBlock(nesting) {
			if d.Val() == "}" {
				return nil // an empty block changes nothing
			}
			return d.Err("self_check takes either 'off' or a block")
		}
		for ok := true; ok; ok = d.NextBlock(nesting) {
			if err := sc.unmarshalOption(d); err != nil {
				return err
			}
		}
	}

	if sc.Disabled && (len(sc.Resolvers) > 0 || sc.HTTPPort != 0 || sc.TLSALPNPort != 0 ||
		sc.Interval != 0 || sc.AttemptTimeout != 0 || sc.Timeout != 0 || sc.Advisory) {
		return d.Err("self_check is off, so the self_check options would be ignored: remove one or the other")
	}
	iss.SelfCheck = &sc
	return nil
}

// unmarshalOption parses one subdirective of the self_check block, with the
// dispenser on its name.
func (sc *SelfCheckConfig) unmarshalOption(d *caddyfile.Dispenser) error {
	opt := d.Val()
	var err error
	switch opt {
	case "resolvers":
		resolvers := d.RemainingArgs()
		if len(resolvers) == 0 {
			return d.ArgErr()
		}
		for _, r := range resolvers {
			if _, _, splitErr := net.SplitHostPort(r); splitErr != nil {
				return d.Errf("self_check resolver '%s' must be host:port: %v", r, splitErr)
			}
		}
		sc.Resolvers = append(sc.Resolvers, resolvers...)
	case "port":
		sc.HTTPPort, err = portArg(d, "self_check port")
	case "tlsalpn_port":
		sc.TLSALPNPort, err = portArg(d, "self_check tlsalpn_port")
	case "interval":
		sc.Interval, err = durationArg(d, "self_check interval")
	case "attempt_timeout":
		sc.AttemptTimeout, err = durationArg(d, "self_check attempt_timeout")
	case "timeout":
		sc.Timeout, err = durationArg(d, "self_check timeout")
	case "advisory":
		sc.Advisory = true
		err = noArgs(d)
	default:
		return d.Errf("unrecognized certflow self_check option '%s'", d.Val())
	}
	return err
}
