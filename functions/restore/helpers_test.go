package function_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/fntest"
	"github.com/streamspace-dev/functions/shared/homesnap"
)

// wait bounds every wait on a condition: generous, so a busy machine is
// slow rather than failing; a passing test never waits for it.
const wait = 2 * time.Minute

// offlineEnv is the storage and Kubernetes configuration of a test that
// never reaches either: Start builds both clients without contacting them.
func offlineEnv(t *testing.T) map[string]string {
	t.Helper()
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	require.NoError(t, os.WriteFile(kubeconfig, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`), 0o600))
	return map[string]string{
		"S3_BUCKET":             "snapshots",
		"S3_ENDPOINT":           "http://127.0.0.1:1",
		"S3_FORCE_PATH_STYLE":   "true",
		"AWS_ACCESS_KEY_ID":     "test",
		"AWS_SECRET_ACCESS_KEY": "test-secret",
		"KUBECONFIG":            kubeconfig,
	}
}

func sqlExec(t *testing.T, h *fntest.Harness, sql string, args ...any) {
	t.Helper()
	_, err := h.Pool.Exec(context.Background(), sql, args...)
	require.NoError(t, err, sql)
}

// addSession adds a StreamSpace session of user in state.
func addSession(t *testing.T, h *fntest.Harness, id, user, state string) {
	t.Helper()
	sqlExec(t, h, `insert into sessions (id, user_id, template_name, state, namespace) values ($1, $2, 'firefox', $3, 'streamspace')`,
		id, user, state)
}

// addSnapshot adds a snapshot of session in status and returns its id.
func addSnapshot(t *testing.T, h *fntest.Harness, session, user, status string) string {
	t.Helper()
	id := uuid.NewString()
	sqlExec(t, h, `insert into session_snapshots (id, session_id, user_id, name, type, status, storage_path)
		values ($1, $2, $3, 'nightly', 'manual', $4, $5)`,
		id, session, user, status, homesnap.ArchiveKey(user, session, id))
	return id
}

func restorePath(session, snapshot string) string {
	return "/api/v1/sessions/" + session + "/snapshots/" + snapshot + "/restore"
}

// waitEvent waits for an event of type typ about restore job job to reach
// the sink, and decodes its data into data.
func waitEvent(t *testing.T, h *fntest.Harness, typ, job string, data any) {
	t.Helper()
	require.Eventually(t, func() bool {
		for _, e := range h.Sink.Events() {
			var d struct {
				RestoreJobID string `json:"restoreJobId"`
			}
			if e.Type() == typ && e.DataAs(&d) == nil && d.RestoreJobID == job {
				require.NoError(t, e.DataAs(data))
				return true
			}
		}
		return false
	}, wait, 20*time.Millisecond, "no %s for job %s", typ, job)
}

// jobState is what a restore job's row records of its own state, in the
// columns migration 008 adds; a null boolean reads false.
type jobState struct {
	Phase, FailedPhase, Backup string
	RolledBack, RollbackFailed bool
}

func stateOf(t *testing.T, h *fntest.Harness, job string) jobState {
	t.Helper()
	var s jobState
	require.NoError(t, h.Pool.QueryRow(context.Background(), `
		select coalesce(phase, ''), coalesce(failed_phase, ''), coalesce(backup_snapshot_id, ''),
		       coalesce(rolled_back, false), coalesce(rollback_failed, false)
		from snapshot_restore_jobs where id = $1`, job).
		Scan(&s.Phase, &s.FailedPhase, &s.Backup, &s.RolledBack, &s.RollbackFailed))
	return s
}
