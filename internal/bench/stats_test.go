package bench

import (
	"testing"
	"time"
)

func TestPercentileAndMedian(t *testing.T) {
	ms := func(vs ...int) []time.Duration {
		out := make([]time.Duration, len(vs))
		for i, v := range vs {
			out[i] = time.Duration(v) * time.Millisecond
		}
		return out
	}
	ds := ms(5, 1, 4, 2, 3, 10, 9, 8, 7, 6)
	for _, tt := range []struct {
		p    float64
		want int
	}{{50, 5}, {90, 9}, {99, 10}, {100, 10}, {1, 1}} {
		if got := percentile(ds, tt.p); got != time.Duration(tt.want)*time.Millisecond {
			t.Errorf("percentile(p%v) = %v, want %dms", tt.p, got, tt.want)
		}
	}
	if percentile(nil, 50) != 0 {
		t.Error("percentile of nothing is not 0")
	}
	if got := median(ms(3, 1, 2)); got != 2*time.Millisecond {
		t.Errorf("median odd = %v", got)
	}
	if got := median(ms(4, 1, 3, 2)); got != 2500*time.Microsecond {
		t.Errorf("median even = %v", got)
	}
	if ds[0] != 5*time.Millisecond {
		t.Error("percentile sorted its input in place")
	}
}

func TestFormatting(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "0", 500 * time.Microsecond: "500µs", 1234 * time.Microsecond: "1.23ms",
		523 * time.Millisecond: "523.0ms", 41600 * time.Millisecond: "41.60s", 192 * time.Second: "192.0s",
	} {
		if got := fmtDuration(d); got != want {
			t.Errorf("fmtDuration(%v) = %q, want %q", d, got, want)
		}
	}
	for _, tt := range []struct {
		num, den float64
		want     string
	}{{1, 0, "n/a"}, {0, 1, "0"}, {1, 2, "0.5"}, {1, 3, "0.333"}, {0.1045, 1, "0.104"}, {1, 400, "0.0025"}, {1234.5, 1, "1234"}} {
		if got := fmtRatio(tt.num, tt.den); got != tt.want {
			t.Errorf("fmtRatio(%v, %v) = %q, want %q", tt.num, tt.den, got, tt.want)
		}
	}
}
