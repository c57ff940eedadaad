package bench

import (
	"slices"
	"testing"
)

func TestParseScenarios(t *testing.T) {
	got, err := ParseScenarios(" 1, 50x50,200X50 ,3x10,1000x100:certflow,300x100/redis3,10x10/file2:stock,5x5/redis")
	if err != nil {
		t.Fatal(err)
	}
	want := []Scenario{{Names: 1, Concurrency: 1}, {Names: 50, Concurrency: 50}, {Names: 200, Concurrency: 50}, {Names: 3, Concurrency: 3},
		{Names: 1000, Concurrency: 100, Only: Certflow}, {Names: 300, Concurrency: 100, Storage: StorageRedis, Nodes: 3},
		{Names: 10, Concurrency: 10, Only: Stock, Storage: StorageFile, Nodes: 2}, {Names: 5, Concurrency: 5, Storage: StorageRedis, Nodes: 1}}
	if !slices.Equal(got, want) {
		t.Errorf("ParseScenarios = %v, want %v", got, want)
	}
	var names []string
	for _, s := range got {
		names = append(names, s.String())
	}
	if !slices.Equal(names, []string{"1", "50x50", "200x50", "3x3", "1000x100:certflow", "300x100/redis3", "10x10/file2:stock", "5x5/redis"}) {
		t.Errorf("String() = %v", names)
	}
	if got := want[4].issuers([]string{Stock, Certflow}); !slices.Equal(got, []string{Certflow}) {
		t.Errorf("issuers of %s = %v, want certflow alone", want[4], got)
	}
	for _, bad := range []string{"", ",", "0", "x5", "5x0", "5x", "ax1", "1000000", "5x5:other", "5x5:",
		"5x5/", "5x5/disk", "5x5/redis0", "5x5/redis17", "5x5/redisx"} {
		if _, err := ParseScenarios(bad); err == nil {
			t.Errorf("ParseScenarios(%q) succeeded, want an error", bad)
		}
	}
	if s, err := ParseScenarios(DefaultScenarios); err != nil || len(s) != 7 {
		t.Errorf("DefaultScenarios = %v, %v", s, err)
	}
}
