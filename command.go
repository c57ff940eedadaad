package certflow

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/certflow/certflow/issuer"
)

// Exit codes of `caddy certflow status`.
const (
	// StatusExitOK: the listing was shown, or the name is issued or issuing.
	StatusExitOK = 0
	// StatusExitError: the admin API could not be asked, or the name is unknown.
	StatusExitError = 1
	// StatusExitFailing: the name's latest request failed or it is backing off.
	StatusExitFailing = 2
)

// statusListLimit is how many of each kind the table shows.
const statusListLimit = 20

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "certflow",
		Usage: "status [<name>] | renew <name> [--address <interface>] [--config <path> [--adapter <name>]]",
		Short: "Shows where certflow's certificates stand, or renews one now",
		Long: `
Inspects the certflow issuer's ACME workflows (CertificateRequest → Order →
Challenge) through the running Caddy's admin API.

  caddy certflow status            recent requests, orders and challenges
  caddy certflow status <name>     the whole chain for one name, its
                                   certificate and when it is renewed
  caddy certflow renew <name>      renew the name's certificate now

The admin API address is taken from --address, else from the admin settings
of the --config file (with --adapter), else Caddy's default. With a name, the
exit status is 2 when the name is failing (its latest request failed, or it
is backing off), 1 when the admin API cannot be asked or the name is
unknown, 0 otherwise. renew exits 0 when the certificate was renewed, 2
when the renewal failed or was still running after --wait, 1 when the
admin API could not be asked or no certflow issuer issues the name.
`,
		CobraFunc: func(cmd *cobra.Command) {
			status := &cobra.Command{
				Use:   "status [<name>]",
				Short: "Shows recent certflow resources, or the chain of one name",
				Args:  cobra.MaximumNArgs(1),
				RunE: func(c *cobra.Command, args []string) error {
					var name string
					if len(args) == 1 {
						name = args[0]
					}
					run := caddycmd.WrapCommandFuncForCobra(func(fl caddycmd.Flags) (int, error) {
						code, err := CmdStatus(fl, name, c.OutOrStdout())
						if err == nil && code != StatusExitOK {
							c.SilenceErrors = true // the output says why
						}
						return code, err
					})
					return run(c, args)
				},
			}
			status.Flags().StringP("config", "c", "", "Configuration file to use to parse the admin address, if --address is not used")
			status.Flags().StringP("adapter", "a", "", "Name of config adapter to apply (when --config is used)")
			status.Flags().StringP("address", "", "", "The address to use to reach the admin API endpoint, if not the default")
			cmd.AddCommand(status)
			cmd.AddCommand(renewCommand())
		},
	})
}

// CmdStatus implements `caddy certflow status [<name>]`, writing to out:
// it reads the admin API at the address given by the flags (address,
// config, adapter) and returns the exit status.
func CmdStatus(fl caddycmd.Flags, name string, out io.Writer) (int, error) {
	addr, err := caddycmd.DetermineAdminAPIAddress(fl.String("address"), nil, fl.String("config"), fl.String("adapter"))
	if err != nil {
		return StatusExitError, fmt.Errorf("couldn't determine admin API address: %v", err)
	}
	now := time.Now()
	if name == "" {
		return StatusExitOK, printTables(addr, out, now)
	}
	// the name as the admin API reads it, so that an invalid one is
	// refused here with the same reason
	name, err = issuer.NormalizeName(name)
	if err != nil {
		return StatusExitError, err
	}
	var st NameStatus
	if err := adminGet(addr, "/certflow/status/"+url.PathEscape(name), &st); err != nil {
		return StatusExitError, err
	}
	printNameStatus(out, &st, now)
	if st.Failing {
		return StatusExitFailing, nil
	}
	return StatusExitOK, nil
}

func adminGet(addr, uri string, v any) error {
	resp, err := caddycmd.AdminAPIRequest(addr, http.MethodGet, uri, nil, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(v); err != nil {
		return fmt.Errorf("decoding the admin API's answer to %s: %v", uri, err)
	}
	return nil
}

// listRow is what the table shows of any resource.
type listRow struct {
	ID      string    `json:"id"`
	Name    string    `json:"name"`
	State   string    `json:"state"`
	Reason  string    `json:"reason"`
	Type    string    `json:"type"`
	Created time.Time `json:"created"`
}

func printTables(addr string, out io.Writer, now time.Time) error {
	sections := []struct{ title, path string }{
		{"CERTIFICATEREQUESTS", "certificaterequests"},
		{"ORDERS", "orders"},
		{"CHALLENGES", "challenges"},
	}
	tw := tabwriter.NewWriter(out, 0, 4, 3, ' ', 0)
	shown := false
	for _, s := range sections {
		var rows []listRow
		if err := adminGet(addr, fmt.Sprintf("/certflow/%s?limit=%d", s.path, statusListLimit), &rows); err != nil {
			return err
		}
		if len(rows) == 0 {
			continue
		}
		if shown {
			fmt.Fprintln(tw)
		}
		shown = true
		fmt.Fprintln(tw, s.title)
		challenges := s.path == "challenges"
		if challenges {
			fmt.Fprintln(tw, "NAME\tTYPE\tSTATE\tAGE\tREASON")
		} else {
			fmt.Fprintln(tw, "NAME\tSTATE\tAGE\tREASON")
		}
		for _, r := range rows {
			if challenges {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Name, r.Type, r.State, age(now.Sub(r.Created)), oneLine(r.Reason, 120))
			} else {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Name, r.State, age(now.Sub(r.Created)), oneLine(r.Reason, 120))
			}
		}
	}
	if !shown {
		fmt.Fprintln(tw, "No certflow resources found.")
	}
	return tw.Flush()
}

// summary is the one-line state of a name.
func summary(st *NameStatus, now time.Time) string {
	cr := st.Request
	switch {
	case st.BackingOff:
		failures := 0
		if st.Record != nil {
			failures = st.Record.Failures
		}
		return fmt.Sprintf("Failing: backing off after %d failed attempt(s); next attempt %s (%s)",
			failures, stamp(st.NextAttempt), relative(st.NextAttempt, now))
	case len(st.Holds) > 0:
		return fmt.Sprintf("Held: new orders for %s are held until %s (%s)", st.Holds[0].Scope, stamp(st.NextAttempt), relative(st.NextAttempt, now))
	case cr != nil && cr.State == issuer.RequestFailed:
		return fmt.Sprintf("Failing: the latest request failed (charged to %s); the next handshake or renewal tries again", chargedLabel(cr.ChargedTo))
	case cr != nil && cr.State == issuer.RequestPending:
		return "Issuing: a certificate request is in progress"
	case st.Certificate != nil && !st.Certificate.NotAfter.After(now):
		return "Expired: the stored certificate is past its Not After"
	case st.Certificate != nil:
		return "Ready: the certificate is issued and stored"
	case cr != nil && cr.State == issuer.RequestReady:
		return "Ready: issued (the certificate is not in this storage)"
	}
	return "Unknown"
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format("2006-01-02T15:04:05.000Z")
}

// relative is "in 59s" or "3m ago".
func relative(t, now time.Time) string {
	if d := t.Sub(now); d >= 0 {
		return "in " + age(d)
	}
	return age(now.Sub(t)) + " ago"
}

// age formats a duration like kubectl's AGE column.
func age(d time.Duration) string {
	switch {
	case d < 0:
		d = 0
		fallthrough
	case d < 2*time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < 2*time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

// oneLine flattens s to a single line and, when max > 0, shortens it to
// about max runes by cutting out its middle: a reason starts with the step
// that failed and ends with the cause, both worth keeping.
func oneLine(s string, max int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); max > 0 && len(r) > max {
		keep := max - 3
		return string(r[:keep/2]) + " … " + string(r[len(r)-(keep-keep/2):])
	}
	return s
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func chargedLabel(p issuer.Party) string {
	if p == "" {
		return "the name"
	}
	return string(p)
}

// renewalReasonText says why a certificate is (or was) renewed.
func renewalReasonText(reason string) string {
	switch reason {
	case issuer.RenewalARIWindow:
		return "the CA's renewal window (ARI)"
	case issuer.RenewalLifetime:
		return "the share of its lifetime left (renewal_window_ratio)"
	case issuer.RenewalExpired:
		return "it expired"
	case issuer.RenewalForced:
		return "forced"
	}
	return reason
}

// renewsLine describes the certificate a renewal replaces.
func renewsLine(r *issuer.Renewal) string {
	s := fmt.Sprintf("serial %s (not after %s), because of %s", r.Serial, stamp(r.NotAfter), renewalReasonText(r.Reason))
	switch {
	case r.Replaces:
		s += "; the order carries replaces " + r.ARIID
	case r.NoReplaces != "":
		s += "; no replaces: " + r.NoReplaces
	}
	return s
}
