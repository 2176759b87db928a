package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// newRoot is a repository root with the functions overlay, as create needs it.
func newRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	overlay := filepath.Join(root, overlayFile)
	require.NoError(t, os.MkdirAll(filepath.Dir(overlay), 0o755))
	require.NoError(t, os.WriteFile(overlay, []byte("resources:\n  - ../../base\n  - ../../functions/tags\ncomponents:\n  - ../../components/event-auth\n"), 0o644))
	return root
}

func TestCreate(t *testing.T) {
	root := newRoot(t)
	require.NoError(t, create(root, "notes", time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)))

	files := []string{
		"functions/notes/function.go", "functions/notes/request.go", "functions/notes/handlers.go",
		"functions/notes/store.go", "functions/notes/events.go", "functions/notes/function_test.go",
		"functions/notes/go.mod", "functions/notes/func.yaml", "functions/notes/cmd/notes/main.go",
		"deploy/functions/notes/kustomization.yaml", "deploy/functions/notes/service.yaml",
		"deploy/functions/notes/serviceaccount.yaml", "deploy/functions/notes/triggers.yaml",
	}
	for _, f := range files {
		t.Run(f, func(t *testing.T) {
			raw, err := os.ReadFile(filepath.Join(root, f))
			require.NoError(t, err)
			assert.NotContains(t, string(raw), "[[", "template left unexpanded")
			assert.Contains(t, string(raw), "notes")
		})
	}
	t.Run("func.yaml keeps func's templates and dates the function", func(t *testing.T) {
		raw, err := os.ReadFile(filepath.Join(root, "functions/notes/func.yaml"))
		require.NoError(t, err)
		assert.Contains(t, string(raw), "'{{ configMap:streamspace-functions }}'")
		assert.Contains(t, string(raw), `created: "2026-01-02T03:04:05Z"`)
	})
	t.Run("the overlay lists it after the other functions", func(t *testing.T) {
		raw, err := os.ReadFile(filepath.Join(root, overlayFile))
		require.NoError(t, err)
		assert.Contains(t, string(raw), "  - ../../functions/tags\n  - ../../functions/notes\ncomponents:")
	})
	t.Run("an existing function is never overwritten", func(t *testing.T) {
		err := create(root, "notes", time.Now())
		require.Error(t, err)
		assert.Contains(t, err.Error(), "exists")
	})
}

func TestRunRefuses(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no name", nil, "usage"},
		{"two names", []string{"a1", "b1"}, "usage"},
		{"upper case", []string{"Notes"}, "lowercase"},
		{"a dash", []string{"my-fn"}, "lowercase"},
		{"a path", []string{"../x"}, "lowercase"},
		{"one letter", []string{"x"}, "lowercase"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := newRoot(t)
			var out bytes.Buffer
			err := run(append([]string{"-root", root, "-no-go-work"}, tc.args...), &out)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
			entries, _ := os.ReadDir(root)
			for _, e := range entries {
				assert.NotEqual(t, "functions", e.Name(), "nothing is created")
			}
		})
	}
	t.Run("a good name prints the next steps", func(t *testing.T) {
		root := newRoot(t)
		var out bytes.Buffer
		require.NoError(t, run([]string{"-root", root, "-no-go-work", "notes"}, &out))
		assert.True(t, strings.HasPrefix(out.String(), "Created functions/notes"), out.String())
		assert.Contains(t, out.String(), "README")
	})
}
