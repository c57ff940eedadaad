package issuer

import (
	"os"
	"strings"
	"testing"
)

// readmeStateTableHeader is the header of the README's table of states.
const readmeStateTableHeader = "| resource | state | final | written in | why |"

// readmeKinds maps the README's resource names to kinds.
var readmeKinds = map[string]string{
	"CertificateRequest": KindRequest,
	"Order":              KindOrder,
	"Challenge":          KindChallenge,
}

// TestReadmeStateTable: the README's table of states lists every state of
// every kind, in lifecycle order (States), says which are final
// (FinalStates), and where each is written and why, word for word as
// SaveRules says.
func TestReadmeStateTable(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.ReplaceAll(string(b), "\r\n", "\n"), "\n")
	start := -1
	for i, l := range lines {
		if strings.TrimSpace(l) == readmeStateTableHeader {
			start = i + 2 // past the separator row
			break
		}
	}
	if start < 0 || start > len(lines) {
		t.Fatalf("the README has no table headed %q", readmeStateTableHeader)
	}

	type row struct{ kind, state, final, where, why string }
	var rows []row
	for _, l := range lines[start:] {
		if !strings.HasPrefix(l, "|") {
			break
		}
		cells := strings.Split(strings.Trim(l, "|"), "|")
		if len(cells) != 5 {
			t.Fatalf("state table row with %d cells, want 5: %s", len(cells), l)
		}
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		kind, ok := readmeKinds[cells[0]]
		if !ok {
			t.Fatalf("state table row for an unknown resource %q", cells[0])
		}
		rows = append(rows, row{kind, strings.Trim(cells[1], "`"), cells[2], cells[3], cells[4]})
	}

	yesNo := func(b bool) string {
		if b {
			return "yes"
		}
		return "no"
	}
	i := 0
	for _, kind := range []string{KindRequest, KindOrder, KindChallenge} {
		for _, state := range States(kind) {
			if i >= len(rows) {
				t.Errorf("the README's state table ends before %s %s", kind, state)
				continue
			}
			r := rows[i]
			i++
			if r.kind != kind || r.state != state {
				t.Errorf("row %d is %s %s, want %s %s (every state, in lifecycle order)", i, r.kind, r.state, kind, state)
				continue
			}
			rule, ok := SaveRules[kind][state]
			if !ok {
				t.Errorf("SaveRules has no rule for %s %s", kind, state)
				continue
			}
			if want := yesNo(IsFinal(kind, state)); r.final != want {
				t.Errorf("%s %s: final %q, want %q", kind, state, r.final, want)
			}
			want := rule.Where
			if want == NotWritten {
				want = "no"
			}
			if r.where != want {
				t.Errorf("%s %s: written in %q, want %q", kind, state, r.where, want)
			}
			if r.why != rule.Why {
				t.Errorf("%s %s: why\n%q\nwant SaveRules'\n%q", kind, state, r.why, rule.Why)
			}
		}
	}
	if i < len(rows) {
		t.Errorf("the README's state table has %d rows more than there are states: %v", len(rows)-i, rows[i:])
	}
	// and SaveRules names no state the engine does not have
	for kind, rules := range SaveRules {
		for state := range rules {
			found := false
			for _, s := range States(kind) {
				found = found || s == state
			}
			if !found {
				t.Errorf("SaveRules has a rule for %s %s, which is not a state", kind, state)
			}
		}
	}
}
