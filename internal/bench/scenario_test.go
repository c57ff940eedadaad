package bench

import (
	"slices"
	"testing"
)

func TestParseScenarios(t *testing.T) {
	got, err := ParseScenarios(" 1, 50x50,200X50 ,3x10,1000x100:certflow")
	if err != nil {
		t.Fatal(err)
	}
	want := []Scenario{{1, 1, ""}, {50, 50, ""}, {200, 50, ""}, {3, 3, ""}, {1000, 100, Certflow}}
	if !slices.Equal(got, want) {
		t.Errorf("ParseScenarios = %v, want %v", got, want)
	}
	var names []string
	for _, s := range got {
		names = append(names, s.String())
	}
	if !slices.Equal(names, []string{"1", "50x50", "200x50", "3x3", "1000x100:certflow"}) {
		t.Errorf("String() = %v", names)
	}
	if got := want[4].issuers([]string{Stock, Certflow}); !slices.Equal(got, []string{Certflow}) {
		t.Errorf("issuers of %s = %v, want certflow alone", want[4], got)
	}
	for _, bad := range []string{"", ",", "0", "x5", "5x0", "5x", "ax1", "1000000", "5x5:other", "5x5:"} {
		if _, err := ParseScenarios(bad); err == nil {
			t.Errorf("ParseScenarios(%q) succeeded, want an error", bad)
		}
	}
	if s, err := ParseScenarios(DefaultScenarios); err != nil || len(s) != 5 {
		t.Errorf("DefaultScenarios = %v, %v", s, err)
	}
}
