package testbin_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/testbin"
)

func TestLookup(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "bin"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "bin", "built"), []byte("#!/bin/sh\n"), 0o755))
	t.Setenv("TOOLS_DIR", dir)

	tests := []struct {
		name    string
		tool    string
		wantErr string
	}{
		{name: "a built server is found", tool: "built"},
		{name: "a missing server says how to build it", tool: "missing", wantErr: "run `scripts/tools missing`"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path, err := testbin.Lookup(tc.tool)
			if tc.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, filepath.Join(dir, "bin", tc.tool), path)
		})
	}
}

func TestProcess(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		ready   func(context.Context) error
		wantErr string
	}{
		{name: "ready when the check passes", args: []string{"-c", "echo started; exec sleep 600"},
			ready: func(context.Context) error { return nil }},
		{name: "a server that exits is reported with its output", args: []string{"-c", "echo bad flag; exit 2"},
			ready: func(context.Context) error { return errors.New("no answer") }, wantErr: "bad flag"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := testbin.Start("/bin/sh", tc.args)
			require.NoError(t, err)
			t.Cleanup(p.Stop)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			err = p.WaitReady(ctx, tc.ready)
			if tc.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.wantErr)
				assert.True(t, p.Exited())
				return
			}
			require.NoError(t, err)
			assert.False(t, p.Exited())
		})
	}
}
