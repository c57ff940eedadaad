// Package dirsnap takes snapshots of a directory's files, for tests that
// check that something changed nothing in a storage directory, byte for
// byte.
package dirsnap

import (
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// Take maps every file under root whose path (relative to root,
// slash-separated) passes keep (nil keeps all) to its bytes.
func Take(tb testing.TB, root string, keep func(rel string) bool) map[string]string {
	tb.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if keep != nil && !keep(rel) {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		out[rel] = string(b)
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	return out
}

// Diff says how two snapshots differ, a line per file ("added", "removed"
// or "changed" and its path, sorted), "" when they do not.
func Diff(before, after map[string]string) string {
	var diffs []string
	for k, v := range before {
		if w, ok := after[k]; !ok {
			diffs = append(diffs, "removed "+k)
		} else if w != v {
			diffs = append(diffs, "changed "+k)
		}
	}
	for k := range after {
		if _, ok := before[k]; !ok {
			diffs = append(diffs, "added "+k)
		}
	}
	slices.Sort(diffs)
	return strings.Join(diffs, "\n")
}
