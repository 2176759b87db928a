package function

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestBinaryDrainsOnSignal runs the real tags binary and stops it the way
// Kubernetes (SIGTERM) and a developer (Ctrl-C) do: an exit 0 after the
// drain.
func TestBinaryDrainsOnSignal(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin, env := buildBinary(t)
	tests := []struct {
		name   string
		signal os.Signal
	}{
		{"SIGTERM", syscall.SIGTERM},
		{"SIGINT", os.Interrupt},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			port := freePort(t)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin)
			cmd.Env = append(env, "PORT="+port)
			var logs bytes.Buffer
			cmd.Stderr = &logs
			require.NoError(t, cmd.Start())
			waitReady(t, "http://127.0.0.1:"+port+"/health/readiness")
			require.NoError(t, cmd.Process.Signal(tc.signal))
			require.NoError(t, cmd.Wait(), "exit after %s:\n%s", tc.name, logs.String())
			assert.Contains(t, logs.String(), `"msg":"function ready"`)
			assert.Contains(t, logs.String(), `"msg":"draining"`)
		})
	}
}
