package bench

import (
	"slices"
	"testing"
)

func TestParseScenarios(t *testing.T) {
	got, err := ParseScenarios(" 1, 50x50,200X50 ,3x10")
	if err != nil {
		t.Fatal(err)
	}
	want := []Scenario{{1, 1}, {50, 50}, {200, 50}, {3, 3}}
	if !slices.Equal(got, want) {
		t.Errorf("ParseScenarios = %v, want %v", got, want)
	}
	var names []string
	for _, s := range got {
		names = append(names, s.String())
	}
	if !slices.Equal(names, []string{"1", "50x50", "200x50", "3x3"}) {
		t.Errorf("String() = %v", names)
	}
	for _, bad := range []string{"", ",", "0", "x5", "5x0", "5x", "ax1", "1000000"} {
		if _, err := ParseScenarios(bad); err == nil {
			t.Errorf("ParseScenarios(%q) succeeded, want an error", bad)
		}
	}
	if s, err := ParseScenarios(DefaultScenarios); err != nil || len(s) != 4 {
		t.Errorf("DefaultScenarios = %v, %v", s, err)
	}
}
