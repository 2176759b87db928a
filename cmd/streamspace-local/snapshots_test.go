package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/testbin"
)

// TestPrintedSnapshotCommandsWork runs the banner's snapshot commands as
// printed, against MinIO and the local API server's demo session pod whose
// /config is a folder here: a snapshot of demo-1, its listing, then a
// restore over a changed /config, which puts the demo files back.
func TestPrintedSnapshotCommandsWork(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl is not installed")
	}
	for _, name := range []string{"etcd", "kube-apiserver", "minio"} {
		testbin.Path(t, name)
	}
	lr := startLocalRunWith(t, func(c *Config) { c.Kube = true })
	require.NotNil(t, lr.Snapshots)
	var out bytes.Buffer
	require.NoError(t, lr.banner(&out))
	banner := out.String()
	require.Contains(t, banner, "snapshots     on: MinIO ", banner)
	assert.Contains(t, banner, "its /config is "+lr.Snapshots.Dir)

	var cmds []string
	for _, cmd := range printedCommands(banner) {
		if strings.Contains(cmd, "/snapshots") {
			cmds = append(cmds, cmd)
		}
	}
	require.Len(t, cmds, 4, "create, list, restore and status commands in:\n%s", banner)
	create, list, restore, status := cmds[0], cmds[1], cmds[2], cmds[3]

	// run runs a printed command in bash with SNAPSHOT set as the create
	// command leaves it, and returns its stdout.
	snapshot := ""
	run := func(t *testing.T, cmd string) string {
		t.Helper()
		c := exec.Command("bash", "-c", cmd)
		c.Env = append(os.Environ(), "SNAPSHOT="+snapshot)
		var stderr strings.Builder
		c.Stderr = &stderr
		got, err := c.Output()
		require.NoError(t, err, "%s\n-> %s (stderr %s)", cmd, got, stderr.String())
		return string(got)
	}
	const timeout, poll = 3 * time.Minute, 100 * time.Millisecond

	snapshot = strings.TrimSpace(run(t, create))
	require.Regexp(t, `^[0-9a-f-]{36}$`, snapshot, "the create command echoes the snapshot's id")
	require.Eventually(t, func() bool {
		return strings.Contains(run(t, list), `"status":"available"`)
	}, timeout, poll, "the snapshot becomes available")
	assert.Contains(t, run(t, list), snapshot)

	dir := lr.Snapshots.Dir
	require.NoError(t, os.WriteFile(filepath.Join(dir, "README.txt"), []byte("changed\n"), 0o644))
	require.NoError(t, os.Remove(filepath.Join(dir, "Documents", "notes.md")))

	assert.Contains(t, run(t, restore), snapshot)
	require.Eventually(t, func() bool {
		return strings.Contains(run(t, status), `"status":"completed"`)
	}, timeout, poll, "the restore completes")

	tests := []struct {
		name, path, want string
	}{
		{name: "changed file restored", path: "README.txt", want: demoConfigFiles["README.txt"]},
		{name: "deleted file restored", path: "Documents/notes.md", want: demoConfigFiles["Documents/notes.md"]},
		{name: "hidden file kept", path: ".config/streamspace/app.json", want: demoConfigFiles[".config/streamspace/app.json"]},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := os.ReadFile(filepath.Join(dir, tc.path))
			require.NoError(t, err)
			assert.Equal(t, tc.want, string(got))
		})
	}
}
