// Package testbin finds the real servers the tests start — kube-apiserver,
// etcd, MinIO, Mailpit, Ory Hydra — which scripts/tools builds once into
// .tools/bin at the repository root (`make test` runs it first).
package testbin

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Dir returns the folder scripts/tools builds into: TOOLS_DIR when it is set,
// else .tools beside the go.work file above the working directory.
func Dir() (string, error) {
	if dir := os.Getenv("TOOLS_DIR"); dir != "" {
		return dir, nil
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			return filepath.Join(dir, ".tools"), nil
		}
		if filepath.Dir(dir) == dir {
			return "", errors.New("no go.work above " + wd + " and TOOLS_DIR is not set")
		}
	}
}

// Lookup returns the path of the built server name, or an error that says
// how to build it.
func Lookup(name string) (string, error) {
	dir, err := Dir()
	if err != nil {
		return "", fmt.Errorf("testbin: %w", err)
	}
	path := filepath.Join(dir, "bin", name)
	if _, err := exec.LookPath(path); err != nil {
		return "", fmt.Errorf("testbin: %s is not built in %s: run `scripts/tools %s` (make test does)", name, dir, name)
	}
	return path, nil
}

// Path is Lookup for a test: a server that is not built fails the test.
func Path(tb testing.TB, name string) string {
	tb.Helper()
	path, err := Lookup(name)
	if err != nil {
		tb.Fatal(err)
	}
	return path
}
