package bench

import (
	"os"
	"testing"
)

func TestSettleReturnsForAnIdleProcess(t *testing.T) {
	waited, err := settle(t.Context(), os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if waited >= settleMaxWait {
		t.Errorf("settle waited %s for an idle process, the most it may", waited)
	}
}
