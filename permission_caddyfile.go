package certflow

import (
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
)

// UnmarshalCaddyfile deserializes Caddyfile tokens into p, inside
// on_demand_tls:
//
//	permission certflow [<ask_url>] {
//	    ask <url>
//	    permission <module> [<args...>] [{
//	        <module options>
//	    }]
//	    cache_allowed <duration>
//	    cache_denied <duration>
//	    cache_size <n>
//	    max_concurrent_asks <n>
//	    ask_timeout <duration>
//	    ask_queue_timeout <duration>
//	    client_new_names <n> <window> | off
//	}
//
// Exactly one of ask (or the argument) and permission is given: permission
// wraps any other tls.permission module (e.g. `permission http <url>`).
// Durations and counts must be positive; ask_queue_timeout may not exceed
// ask_timeout. client_new_names off turns the per-client budget off.
func (p *Permission) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume module name

	if d.NextArg() {
		p.Ask = d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
	}

	for d.NextBlock(0) {
		opt := d.Val()
		switch opt {
		case "ask", "permission":
			if err := p.parseEndpoint(d); err != nil {
				return err
			}

		case "cache_allowed":
			dur, err := durationArg(d, opt)
			if err != nil {
				return err
			}
			p.CacheAllowed = dur

		case "cache_denied":
			dur, err := durationArg(d, opt)
			if err != nil {
				return err
			}
			p.CacheDenied = dur

		case "cache_size":
			n, err := countArg(d, opt)
			if err != nil {
				return err
			}
			p.CacheSize = n

		case "max_concurrent_asks":
			n, err := countArg(d, opt)
			if err != nil {
				return err
			}
			p.MaxConcurrentAsks = n

		case "ask_timeout":
			dur, err := durationArg(d, opt)
			if err != nil {
				return err
			}
			p.AskTimeout = dur

		case "ask_queue_timeout":
			dur, err := durationArg(d, opt)
			if err != nil {
				return err
			}
			p.AskQueueTimeout = dur

		case "client_new_names":
			budget, err := parseClientNewNames(d)
			if err != nil {
				return err
			}
			p.ClientNewNames = budget

		default:
			return d.Errf("unrecognized certflow permission option '%s'", opt)
		}
	}

	if p.Ask == "" && p.PermissionRaw == nil {
		return d.Err("certflow permission needs an endpoint: 'ask <url>' or 'permission <module> ...'")
	}
	if p.AskTimeout > 0 && p.AskQueueTimeout > p.AskTimeout {
		return d.Errf("ask_queue_timeout %s is longer than ask_timeout %s", time.Duration(p.AskQueueTimeout), time.Duration(p.AskTimeout))
	}
	return nil
}

// parseEndpoint parses the endpoint asked, with the dispenser on ask or
// permission:
//
//	ask <url>
//	permission <module> [<args...>] [{ <module options> }]
func (p *Permission) parseEndpoint(d *caddyfile.Dispenser) error {
	if p.Ask != "" || p.PermissionRaw != nil {
		return d.Err("the endpoint is already specified: give one ask or one permission")
	}
	if d.Val() == "ask" {
		if !d.AllArgs(&p.Ask) {
			return d.ArgErr()
		}
		return nil
	}
	if !d.NextArg() {
		return d.Err("permission needs a module name, e.g. 'permission http <url>'")
	}
	name := d.Val()
	if name == "certflow" {
		return d.Err("the wrapped permission module cannot be certflow itself")
	}
	modID := "tls.permission." + name
	unm, err := caddyfile.UnmarshalModule(d, modID)
	if err != nil {
		return err
	}
	if _, ok := unm.(caddytls.OnDemandPermission); !ok {
		return d.Errf("module %s is not an on-demand TLS permission module", modID)
	}
	p.PermissionRaw = caddyconfig.JSONModuleObject(unm, "module", name, nil)
	return nil
}

// parseClientNewNames parses the arguments of
//
//	client_new_names <n> <window> | off
func parseClientNewNames(d *caddyfile.Dispenser) (*ClientBudgetConfig, error) {
	args := d.RemainingArgs()
	if len(args) == 1 && args[0] == "off" {
		return &ClientBudgetConfig{Disabled: true}, nil
	}
	if len(args) != 2 {
		return nil, d.ArgErr()
	}
	n, err := parseCount(d, "client_new_names count", args[0])
	if err != nil {
		return nil, err
	}
	window, err := parseDuration(d, "client_new_names window", args[1])
	if err != nil {
		return nil, err
	}
	return &ClientBudgetConfig{Names: n, Window: window}, nil
}
