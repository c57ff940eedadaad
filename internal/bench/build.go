package bench

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
)

// CaddyPackage is the import path of the benchmark's Caddy main: certflow,
// the Redis storage module and the counting storage (countstore) compiled
// in; both issuers run this same binary.
const CaddyPackage = "github.com/certflow/certflow/internal/bench/caddy"

// BuildCaddy builds CaddyPackage into out with the go command on PATH, with
// the race detector when race is true. It must run inside the certflow
// module (any directory of it), as `go run ./cmd/certflow-bench` and
// `go test ./integration` do.
//
// A test passes RaceEnabled as race: the build then reuses the packages the
// go command just compiled for the test binary, which keeps it to seconds
// even with an empty build cache, and Caddy itself runs under the race
// detector (see caddyProcess.raceReport).
func BuildCaddy(ctx context.Context, out string, race bool) error {
	args := []string{"build", "-o", out}
	if race {
		args = append(args, "-race")
	}
	cmd := exec.CommandContext(ctx, "go", append(args, CaddyPackage)...)
	var output bytes.Buffer
	cmd.Stdout, cmd.Stderr = &output, &output
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("building %s into %s (go %v): %w\n%s", CaddyPackage, out, args, err, output.Bytes())
	}
	return nil
}
