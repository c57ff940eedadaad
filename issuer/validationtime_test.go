package issuer

import (
	"testing"
	"time"
)

func TestValidationTimeFirstPollWait(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		name     string
		observed []time.Duration
		awaiting int64
		want     time.Duration // first poll
		wantStep time.Duration // first gap after it
	}{
		{"nothing observed: poll at once", nil, 0, 0, minPollStep},
		{"one validation: three quarters of it", []time.Duration{8 * ms}, 0, 6 * ms, minPollStep},
		{"a slower one moves the average a quarter of the way", []time.Duration{8 * ms, 40 * ms}, 0, 12 * ms, minPollStep},
		{"a burst's slow validations", []time.Duration{400 * ms}, 1, 300 * ms, 50 * ms},
		{"a burst before anything was learned", nil, 80, 0, 80 * ms},
		{"a very slow CA is capped", []time.Duration{time.Minute}, 5000, maxFirstPollWait, maxFirstPollWait / 8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var v validationTime
			for _, d := range tt.observed {
				v.observe(d)
			}
			v.awaiting.Store(tt.awaiting)
			if got := v.firstPollWait(); got != tt.want {
				t.Fatalf("firstPollWait = %s, want %s", got, tt.want)
			}
			if got := v.pollStep(); got != tt.wantStep {
				t.Fatalf("pollStep = %s, want %s", got, tt.wantStep)
			}
		})
	}
}
