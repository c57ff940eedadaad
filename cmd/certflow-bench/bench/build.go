package bench

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
)

// CaddyPackage is the import path of the Caddy main with certflow compiled
// in; both issuers run this same binary.
const CaddyPackage = "github.com/certflow/certflow/cmd/caddy"

// BuildCaddy builds CaddyPackage into out with the go command on PATH. It
// must run inside the certflow module (any directory of it), as `go run
// ./cmd/certflow-bench` and `go test ./integration` do.
func BuildCaddy(ctx context.Context, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, CaddyPackage)
	var output bytes.Buffer
	cmd.Stdout, cmd.Stderr = &output, &output
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("building %s into %s: %w\n%s", CaddyPackage, out, err, output.Bytes())
	}
	return nil
}
