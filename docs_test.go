package certflow

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/prometheus/client_golang/prometheus"
)

// The documentation says what the code does: these tests read README.md
// and docs/ and compare what they list with what the code registers,
// accepts and emits, so a name added, renamed or removed on one side fails
// here until the other follows.

const (
	readmePath         = "README.md"
	metricsEventsPath  = "docs/metrics-and-events.md"
	quickStartGolden   = "caddyfile/testdata/readme_on_demand.caddyfiletest"
	goldenSeparator    = "\n----------\n"
	issuerGrammarStart = "... certflow [<directory_url>] {"
)

func readDoc(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.ReplaceAll(string(b), "\r\n", "\n")
}

// section returns the part of a markdown document from the heading that
// equals heading up to the next heading of the same or a higher level.
func section(t *testing.T, doc, heading string) string {
	t.Helper()
	level := strings.IndexByte(heading, ' ')
	lines := strings.Split(doc, "\n")
	start := -1
	for i, l := range lines {
		if start < 0 {
			if l == heading {
				start = i + 1
			}
			continue
		}
		if n := strings.IndexByte(l, ' '); n > 0 && n <= level && strings.Trim(l[:n], "#") == "" {
			return strings.Join(lines[start:i], "\n")
		}
	}
	if start < 0 {
		t.Fatalf("no heading %q", heading)
	}
	return strings.Join(lines[start:], "\n")
}

// tableRows returns the cells of every row of the markdown tables in text
// (header and separator rows left out), trimmed.
func tableRows(text string) [][]string {
	var rows [][]string
	lines := strings.Split(text, "\n")
	for i, l := range lines {
		if !strings.HasPrefix(l, "|") {
			continue
		}
		if strings.HasPrefix(l, "|---") || (i+1 < len(lines) && strings.HasPrefix(lines[i+1], "|---")) {
			continue
		}
		// an escaped \| belongs to its cell
		l = strings.ReplaceAll(l, `\|`, "\x00")
		cells := strings.Split(strings.Trim(l, "|"), "|")
		for j := range cells {
			cells[j] = strings.TrimSpace(strings.ReplaceAll(cells[j], "\x00", "|"))
		}
		rows = append(rows, cells)
	}
	return rows
}

var backticked = regexp.MustCompile("`([^`]+)`")

// codeSpans returns the backticked words of a cell.
func codeSpans(cell string) []string {
	var out []string
	for _, m := range backticked.FindAllStringSubmatch(cell, -1) {
		out = append(out, m[1])
	}
	return out
}

// documentedMetric is a row of the metrics tables.
type documentedMetric struct {
	kind   string
	labels []string
}

// TestDocumentedMetrics: the metrics tables list exactly the collectors
// certflow registers (the issuer's and the permission module's), each with
// its type and labels as the collector's descriptor has them.
func TestDocumentedMetrics(t *testing.T) {
	doc := map[string]documentedMetric{}
	for _, row := range tableRows(section(t, readDoc(t, metricsEventsPath), "## Metrics")) {
		if len(row) != 4 {
			t.Fatalf("metrics row with %d cells, want 4: %q", len(row), row)
		}
		names := codeSpans(row[0])
		if len(names) != 1 {
			t.Fatalf("metrics row names %d metrics: %q", len(names), row[0])
		}
		if _, dup := doc[names[0]]; dup {
			t.Errorf("%s is listed twice", names[0])
		}
		labels := codeSpans(row[2])
		sort.Strings(labels)
		doc[names[0]] = documentedMetric{kind: row[1], labels: labels}
	}

	code := map[string]documentedMetric{}
	for _, c := range append(slices.Clone(metrics.allCollectorsList), permissionMetrics.all...) {
		name, labels := describe(t, c)
		code[name] = documentedMetric{kind: collectorKind(t, c), labels: labels}
	}
	if len(code) < 20 {
		t.Fatalf("found only %d collectors in the code", len(code))
	}
	for name, m := range code {
		d, ok := doc[name]
		switch {
		case !ok:
			t.Errorf("%s is registered but not in %s", name, metricsEventsPath)
		case d.kind != m.kind:
			t.Errorf("%s is a %s, documented as a %s", name, m.kind, d.kind)
		case !slices.Equal(d.labels, m.labels):
			t.Errorf("%s has labels %v, documented as %v", name, m.labels, d.labels)
		}
	}
	for name := range doc {
		if _, ok := code[name]; !ok {
			t.Errorf("%s is documented in %s but not registered", name, metricsEventsPath)
		}
	}
}

var (
	descName   = regexp.MustCompile(`fqName: "([^"]+)"`)
	descLabels = regexp.MustCompile(`variableLabels: \{([^}]*)\}`)
)

// describe returns the metric name and the sorted variable labels of a
// collector of one metric family, from its descriptor.
func describe(t *testing.T, c prometheus.Collector) (string, []string) {
	t.Helper()
	ch := make(chan *prometheus.Desc, 4)
	c.Describe(ch)
	close(ch)
	var descs []*prometheus.Desc
	for d := range ch {
		descs = append(descs, d)
	}
	if len(descs) != 1 {
		t.Fatalf("collector %T describes %d metrics, want 1", c, len(descs))
	}
	s := descs[0].String()
	m := descName.FindStringSubmatch(s)
	l := descLabels.FindStringSubmatch(s)
	if m == nil || l == nil {
		t.Fatalf("cannot read the descriptor %s", s)
	}
	var labels []string
	for _, v := range strings.Split(l[1], ",") {
		if v != "" {
			labels = append(labels, v)
		}
	}
	sort.Strings(labels)
	return m[1], labels
}

// collectorKind is the Prometheus type of a collector. A gauge func is the
// only kind that satisfies none of the typed interfaces (certflow has no
// counter funcs).
func collectorKind(t *testing.T, c prometheus.Collector) string {
	t.Helper()
	switch c.(type) {
	case *prometheus.CounterVec:
		return "counter"
	case *prometheus.GaugeVec:
		return "gauge"
	case *prometheus.HistogramVec:
		return "histogram"
	case prometheus.Histogram:
		return "histogram"
	case prometheus.Gauge:
		return "gauge"
	case prometheus.Counter:
		return "counter"
	case prometheus.GaugeFunc:
		return "gauge"
	}
	t.Fatalf("collector %T of unknown kind", c)
	return ""
}

// codeEventNames are the events the issuer and the permission module emit.
func codeEventNames() []string {
	return append(EventNames(), EventClientBudgetExceeded)
}

// TestDocumentedEvents: the events tables list exactly the events certflow
// emits, once each.
func TestDocumentedEvents(t *testing.T) {
	events := section(t, readDoc(t, metricsEventsPath), "## Events")
	var doc []string
	for _, row := range tableRows(events) {
		if names := codeSpans(row[0]); len(names) == 1 && strings.HasPrefix(names[0], "certflow_") {
			doc = append(doc, names[0])
		}
	}
	want := codeEventNames()
	sort.Strings(doc)
	sort.Strings(want)
	if !slices.Equal(doc, want) {
		t.Errorf("%s lists the events\n%v\nthe code emits\n%v", metricsEventsPath, doc, want)
	}
}

// TestReadmeListsMetricsAndEventsNowhere: the metric and event names are
// listed once, in docs/metrics-and-events.md; the README links there.
func TestReadmeListsMetricsAndEventsNowhere(t *testing.T) {
	readme := readDoc(t, readmePath)
	names := codeEventNames()
	for _, c := range append(slices.Clone(metrics.allCollectorsList), permissionMetrics.all...) {
		name, _ := describe(t, c)
		names = append(names, name)
	}
	for _, n := range names {
		if strings.Contains(readme, n) {
			t.Errorf("the README names %s; metrics and events are listed in %s only", n, metricsEventsPath)
		}
	}
	if !strings.Contains(readme, "("+metricsEventsPath+")") {
		t.Errorf("the README does not link %s", metricsEventsPath)
	}
}

// jsonLeafPaths lists the dotted JSON paths of the leaf fields of a config
// type: structs are walked into, values with a JSON form of their own
// (durations, raw module objects) are leaves.
func jsonLeafPaths(typ reflect.Type) []string {
	var paths []string
	var walk func(t reflect.Type, prefix string)
	walk = func(t reflect.Type, prefix string) {
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name == "" || name == "-" {
				continue
			}
			ft := f.Type
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct && !reflect.PointerTo(ft).Implements(reflect.TypeFor[json.Marshaler]()) {
				walk(ft, prefix+name+".")
				continue
			}
			paths = append(paths, prefix+name)
		}
	}
	walk(typ, "")
	return paths
}

// TestReadmeJSONFields: every JSON field of the issuer and of the
// permission module is in the README's reference tables, by its full
// dotted path, and every path those tables give is a field.
func TestReadmeJSONFields(t *testing.T) {
	reference := section(t, readDoc(t, readmePath), "## Reference")
	for _, tc := range []struct {
		heading string
		typ     reflect.Type
	}{
		{"### `issuer certflow` / `cert_issuer certflow`", reflect.TypeFor[Issuer]()},
		{"### `permission certflow`", reflect.TypeFor[Permission]()},
	} {
		var documented []string
		for _, row := range tableRows(section(t, reference, tc.heading)) {
			if len(row) != 4 {
				t.Fatalf("%s: row with %d cells, want 4: %q", tc.heading, len(row), row)
			}
			documented = append(documented, codeSpans(row[1])...)
		}
		fields := jsonLeafPaths(tc.typ)
		if len(fields) < 9 {
			t.Fatalf("found only %d JSON fields of %s", len(fields), tc.typ)
		}
		for _, f := range fields {
			if !slices.Contains(documented, f) {
				t.Errorf("%s: the JSON field %s is not in the table", tc.heading, f)
			}
		}
		for _, d := range documented {
			if !slices.Contains(fields, d) {
				t.Errorf("%s: the table gives %s, which is not a JSON field of %s", tc.heading, d, tc.typ)
			}
		}
	}
}

// TestReadmeCaddyfileOptions: the issuer table's Caddyfile column names
// every subdirective the parser knows, and each subdirective the README
// names (in the issuer and permission tables, self_check's included) is one
// the parser knows.
func TestReadmeCaddyfileOptions(t *testing.T) {
	reference := section(t, readDoc(t, readmePath), "## Reference")
	issuerRows := tableRows(section(t, reference, "### `issuer certflow` / `cert_issuer certflow`"))
	top := map[string]bool{}
	var nested []string
	for _, row := range issuerRows {
		for _, span := range codeSpans(row[0]) {
			words := strings.Fields(strings.Trim(span, "{} "))
			if len(words) == 0 {
				continue
			}
			switch {
			case words[0] == "self_check" && len(words) > 2 && words[1] == "{":
				nested = append(nested, words[2])
			case words[0] == "self_check" && len(words) > 1 && words[1] != "off":
				nested = append(nested, words[1])
			case strings.HasPrefix(span, "{"):
				nested = append(nested, words[0])
			default:
				top[words[0]] = true
			}
		}
	}
	for opt := range issuerOptions {
		if !top[opt] {
			t.Errorf("the issuer subdirective %s is not in the README's table", opt)
		}
	}
	for opt := range top {
		if _, ok := issuerOptions[opt]; !ok {
			t.Errorf("the README's table names %s, which the issuer's parser does not know", opt)
		}
	}
	if len(nested) < 6 {
		t.Fatalf("found only %d self_check options in the README: %v", len(nested), nested)
	}
	for _, opt := range nested {
		err := parseIssuerBlock(fmt.Sprintf("self_check {\n%s 1s\n}", opt))
		if err != nil && strings.Contains(err.Error(), "unrecognized") {
			t.Errorf("the README names the self_check option %s: %v", opt, err)
		}
	}

	permissionRows := tableRows(section(t, reference, "### `permission certflow`"))
	if len(permissionRows) < 5 {
		t.Fatalf("found only %d rows in the permission table", len(permissionRows))
	}
	for _, row := range permissionRows {
		for _, span := range codeSpans(row[0]) {
			opt := strings.Fields(span)[0]
			var p Permission
			d := caddyfile.NewTestDispenser(fmt.Sprintf("certflow {\n%s x\n}", opt))
			if err := p.UnmarshalCaddyfile(d); err != nil && strings.Contains(err.Error(), "unrecognized") {
				t.Errorf("the README names the permission option %s: %v", opt, err)
			}
		}
	}
}

func parseIssuerBlock(body string) error {
	var iss Issuer
	return iss.UnmarshalCaddyfile(caddyfile.NewTestDispenser("certflow {\n" + body + "\n}"))
}

// TestReadmeStockTable: the table of the stock acme issuer's options names
// every field the stock issuer has (found by reflection, as
// TestStockFieldParity does) by its full path, and says "refused" exactly
// for the ones certflow refuses.
func TestReadmeStockTable(t *testing.T) {
	rows := tableRows(section(t, readDoc(t, readmePath), "### Global options and the stock `acme` issuer's options"))
	cases := parityCases(t)
	for _, path := range stockFieldPaths() {
		var found []string
		for _, row := range rows {
			if slices.Contains(codeSpans(row[0]), path) {
				found = row
			}
		}
		if found == nil {
			t.Errorf("the stock field %s is not in the README's table", path)
			continue
		}
		refused := strings.Contains(found[len(found)-1], "refused")
		if want := cases[path].refusal != ""; refused != want {
			t.Errorf("the README says %s is refused: %v; certflow refuses it: %v", path, refused, want)
		}
	}
}

// TestReadmeQuickStart: the README's first Caddyfile is the golden file's,
// which caddyfile.TestAdapt adapts.
func TestReadmeQuickStart(t *testing.T) {
	readme := section(t, readDoc(t, readmePath), "## Quick start")
	_, rest, ok := strings.Cut(readme, "```caddyfile\n")
	if !ok {
		t.Fatal("no Caddyfile in the README's quick start")
	}
	example, _, _ := strings.Cut(rest, "```")
	golden, _, ok := strings.Cut(readDoc(t, quickStartGolden), goldenSeparator)
	if !ok {
		t.Fatalf("%s has no separator", quickStartGolden)
	}
	var body []string
	for _, l := range strings.Split(golden, "\n") {
		if !strings.HasPrefix(l, "#") {
			body = append(body, l)
		}
	}
	if want := strings.TrimSpace(strings.Join(body, "\n")); strings.TrimSpace(example) != want {
		t.Errorf("the README's quick start differs from %s:\n%s\nwant:\n%s", quickStartGolden, example, want)
	}
}

var (
	mdLink   = regexp.MustCompile(`\]\(([^)\s]+)\)`)
	htmlID   = regexp.MustCompile(`<a id="([^"]+)">`)
	notSlug  = regexp.MustCompile(`[^a-z0-9 _-]`)
	headingR = regexp.MustCompile(`(?m)^#{1,6} (.+)$`)
)

// TestDocLinks: the relative links of the README and docs/ lead to files
// that exist, and their anchors to headings (GitHub's slugs) or ids there.
func TestDocLinks(t *testing.T) {
	docs, _ := filepath.Glob("docs/*.md")
	for _, path := range append([]string{readmePath, "CONTRIBUTING.md"}, docs...) {
		text := readDoc(t, path)
		for _, m := range mdLink.FindAllStringSubmatch(text, -1) {
			link := m[1]
			if strings.Contains(link, "://") || strings.HasPrefix(link, "mailto:") {
				continue
			}
			file, anchor, _ := strings.Cut(link, "#")
			target := path
			if file != "" {
				target = filepath.Join(filepath.Dir(path), file)
				if _, err := os.Stat(target); err != nil {
					t.Errorf("%s links %s, which does not exist", path, link)
					continue
				}
			}
			if anchor == "" || !strings.HasSuffix(target, ".md") {
				continue
			}
			if !slices.Contains(anchors(readDoc(t, target)), anchor) {
				t.Errorf("%s links %s: no such heading in %s", path, link, target)
			}
		}
	}
}

// anchors returns GitHub's anchors of a markdown document's headings, and
// its explicit ids.
func anchors(doc string) []string {
	var out []string
	for _, m := range headingR.FindAllStringSubmatch(doc, -1) {
		slug := notSlug.ReplaceAllString(strings.ToLower(m[1]), "")
		out = append(out, strings.ReplaceAll(slug, " ", "-"))
	}
	for _, m := range htmlID.FindAllStringSubmatch(doc, -1) {
		out = append(out, m[1])
	}
	return out
}
