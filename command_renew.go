package certflow

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"text/tabwriter"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

// Exit codes of `caddy certflow renew`.
const (
	// RenewExitOK: the certificate was renewed.
	RenewExitOK = 0
	// RenewExitError: the admin API could not be asked, or no certflow
	// issuer issues the name.
	RenewExitError = 1
	// RenewExitNotRenewed: the renewal failed, or was still running.
	RenewExitNotRenewed = 2
)

// renewCommand is `caddy certflow renew <name>`.
func renewCommand() *cobra.Command {
	renew := &cobra.Command{
		Use:   "renew <name>",
		Short: "Renews a certificate now, through certmagic, and shows the request it became",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			run := caddycmd.WrapCommandFuncForCobra(func(fl caddycmd.Flags) (int, error) {
				code, err := CmdRenew(fl, args[0], c.OutOrStdout())
				if err == nil && code != RenewExitOK {
					c.SilenceErrors = true // the output says why
				}
				return code, err
			})
			return run(c, args)
		},
	}
	renew.Flags().StringP("config", "c", "", "Configuration file to use to parse the admin address, if --address is not used")
	renew.Flags().StringP("adapter", "a", "", "Name of config adapter to apply (when --config is used)")
	renew.Flags().StringP("address", "", "", "The address to use to reach the admin API endpoint, if not the default")
	renew.Flags().Duration("wait", forcedRenewalWait, "How long to wait for the outcome (the renewal goes on after)")
	return renew
}

// CmdRenew implements `caddy certflow renew <name>`, writing to out: it asks
// the admin API at the address given by the flags (address, config,
// adapter) to renew the name's certificate, waiting up to the flag wait,
// and returns the exit status.
func CmdRenew(fl caddycmd.Flags, name string, out io.Writer) (int, error) {
	addr, err := caddycmd.DetermineAdminAPIAddress(fl.String("address"), nil, fl.String("config"), fl.String("adapter"))
	if err != nil {
		return RenewExitError, fmt.Errorf("couldn't determine admin API address: %v", err)
	}
	uri := "/certflow/renew/" + url.PathEscape(name)
	if wait := fl.Duration("wait"); wait > 0 {
		uri += "?wait=" + url.QueryEscape(wait.String())
	}
	resp, err := caddycmd.AdminAPIRequest(addr, http.MethodPost, uri, nil, nil)
	if err != nil {
		return RenewExitError, err
	}
	defer resp.Body.Close()
	var res RenewResult
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&res); err != nil {
		return RenewExitError, fmt.Errorf("decoding the admin API's answer to %s: %v", uri, err)
	}
	printRenewResult(out, &res, time.Now())
	if res.State != "ready" {
		return RenewExitNotRenewed, nil
	}
	return RenewExitOK, nil
}

func printRenewResult(out io.Writer, res *RenewResult, now time.Time) {
	tw := tabwriter.NewWriter(out, 0, 4, 1, ' ', 0)
	defer tw.Flush()
	line := func(label, format string, args ...any) {
		fmt.Fprintf(tw, "%s:\t%s\n", label, fmt.Sprintf(format, args...))
	}
	line("Name", "%s", res.Name)
	if res.Request != "" {
		line("CertificateRequest", "%s", res.Request)
	} else {
		line("CertificateRequest", "none (certflow was not asked)")
	}
	switch res.State {
	case "ready":
		line("State", "renewed")
	case "failed":
		line("State", "failed: %s", oneLine(res.Error, 0))
	default:
		line("State", "still running; `caddy certflow status %s` shows it", res.Name)
	}
	if res.Replaced != "" {
		line("Replaced", "serial %s", res.Replaced)
	}
	if c := res.Certificate; c != nil {
		line("Certificate", "serial %s, valid until %s (%s)", c.Serial, stamp(c.NotAfter), relative(c.NotAfter, now))
		if r := c.Renewal; r != nil {
			line("Next renewal", "%s (%s), %s", stamp(r.At), relative(r.At, now), renewalReasonText(r.Reason))
		}
	}
	if res.State == "ready" {
		served := "not yet (it was not in this node's cache, or is loaded on its next handshake)"
		if res.Served {
			served = "now"
		}
		line("Served here", "%s; by the other nodes sharing the storage within %s", served, time.Duration(res.ServedElsewhereWithin))
	}
}
