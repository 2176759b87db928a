package function_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	function "github.com/streamspace-dev/functions/functions/snapshot"
	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/fntest"
)

func TestCreateRefusals(t *testing.T) {
	w := newWorld(t, opts{env: map[string]string{"SNAPSHOT_QUOTA_COUNT": "2"}})
	alice, bob, root := w.alice(), w.h.Token("bob", authn.User), w.h.Token("root", authn.Admin)

	tests := []struct {
		name    string
		token   string
		session string
		body    any
		status  int
		code    string
		message string
	}{
		{name: "missing name", token: alice, session: "s-1", body: map[string]any{}, status: 400, code: "invalid", message: "name"},
		{name: "blank name", token: alice, session: "s-1", body: map[string]any{"name": "   "}, status: 400, code: "invalid", message: "name"},
		{name: "over-long name", token: alice, session: "s-1", body: map[string]any{"name": strings.Repeat("n", 256)}, status: 400, code: "invalid", message: "name"},
		{name: "unknown field", token: alice, session: "s-1", body: map[string]any{"name": "a", "colour": "red"}, status: 400, code: "invalid", message: "colour"},
		{name: "bad expiresIn", token: alice, session: "s-1", body: map[string]any{"name": "a", "expiresIn": "soon"}, status: 400, code: "invalid", message: "expiresIn"},
		{name: "expiresIn too long", token: alice, session: "s-1", body: map[string]any{"name": "a", "expiresIn": "4000d"}, status: 400, code: "invalid", message: "expiresIn"},
		{name: "type a user cannot ask for", token: alice, session: "s-1", body: map[string]any{"name": "a", "type": "pre-restore"}, status: 400, code: "invalid", message: "type"},
		{name: "metadata not an object", token: alice, session: "s-1", body: map[string]any{"name": "a", "metadata": []int{1}}, status: 400, code: "invalid", message: "metadata"},
		{name: "reserved metadata key", token: alice, session: "s-1", body: map[string]any{"name": "a", "metadata": map[string]any{"archive": 1}}, status: 400, code: "invalid", message: "metadata.archive"},
		{name: "session not running", token: alice, session: "s-2", body: map[string]any{"name": "a"}, status: 409, code: "conflict", message: "is not running"},
		{name: "another user's session", token: bob, session: "s-1", body: map[string]any{"name": "a"}, status: 404, code: "not_found"},
		{name: "a missing session", token: alice, session: "nope", body: map[string]any{"name": "a"}, status: 404, code: "not_found"},
		{name: "no token", token: "", session: "s-1", body: map[string]any{"name": "a"}, status: 401, code: "unauthenticated"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, body := w.h.Do(http.MethodPost, "/api/v1/sessions/"+tc.session+"/snapshots", tc.token, tc.body)
			require.Equal(t, tc.status, status, "%s", body)
			code, message := fntest.ErrorBody(t, body)
			assert.Equal(t, tc.code, code)
			assert.Contains(t, message, tc.message)
			assert.Zero(t, w.h.Count(`select count(*) from session_snapshots`), "no row is left behind")
			assert.Zero(t, w.h.Count(`select count(*) from event_outbox`), "no event is queued")
		})
	}

	t.Run("an admin may snapshot anyone's session", func(t *testing.T) {
		status, body := w.h.Do(http.MethodPost, "/api/v1/sessions/s-1/snapshots", root, map[string]any{"name": "by admin", "expiresIn": "7d"})
		require.Equal(t, http.StatusCreated, status, "%s", body)
		assert.Equal(t, 1, w.h.Count(`select count(*) from session_snapshots where user_id = 'alice' and expires_at > localtimestamp + interval '6 days'`),
			"the snapshot is the session owner's")
	})
	t.Run("quota", func(t *testing.T) {
		// A restore's backup counts toward the bytes, not the count.
		w.row(t, "backup", "s-1", "alice", "pre-restore", "available", time.Hour, "", false)
		status, body := w.h.Do(http.MethodPost, "/api/v1/sessions/s-1/snapshots", alice, map[string]any{"name": "second"})
		require.Equal(t, http.StatusCreated, status, "%s", body)
		status, body = w.h.Do(http.MethodPost, "/api/v1/sessions/s-1/snapshots", alice, map[string]any{"name": "third"})
		require.Equal(t, http.StatusConflict, status, "%s", body)
		_, message := fntest.ErrorBody(t, body)
		assert.Contains(t, message, "quota")
		assert.Equal(t, 2, w.h.Count(`select count(*) from session_snapshots where type <> 'pre-restore'`))
	})
}

func TestCreateAnswerAndEvent(t *testing.T) {
	w := newWorld(t, opts{})
	status, body := w.h.Do(http.MethodPost, "/api/v1/sessions/s-1/snapshots", w.alice(), map[string]any{
		"name": "nightly", "description": "before the upgrade", "type": "manual", "expiresIn": "36h", "metadata": map[string]any{"reason": "upgrade"},
	})
	require.Equal(t, http.StatusCreated, status, "%s", body)
	var res map[string]any
	require.NoError(t, json.Unmarshal(body, &res))
	assert.Equal(t, "creating", res["status"])
	assert.Equal(t, "Snapshot creation initiated", res["message"])
	id, _ := res["snapshotId"].(string)
	require.NotEmpty(t, id)

	e := w.requested(t, id)
	assert.Equal(t, "/streamspace/functions/snapshot", e.Source())
	s := w.snapshot(t, "s-1", id)
	assert.Equal(t, "nightly", s.Name)
	assert.Equal(t, "before the upgrade", s.Description)
	assert.Equal(t, "creating", string(s.Status))
	assert.Equal(t, "snapshots/alice/s-1/"+id+".tar.gz", s.StoragePath)
	assert.JSONEq(t, `{"reason":"upgrade"}`, string(s.Metadata))
	require.NotNil(t, s.ExpiresAt)
}

// TestConfig starts the function with bad storage settings: each stops
// start-up, before anything connects, with a message naming the variable.
func TestConfig(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want string
	}{
		{name: "an unknown encryption mode", env: map[string]string{"S3_SSE": "aes256"}, want: `S3_SSE "aes256"`},
		{name: "a KMS key without SSE-KMS", env: map[string]string{"S3_SSE": "AES256", "S3_SSE_KMS_KEY_ID": "k"},
			want: "S3_SSE_KMS_KEY_ID is set but S3_SSE is not aws:kms"},
		{name: "an endpoint that is not a URL", env: map[string]string{"S3_ENDPOINT": "minio:9000"}, want: "S3_ENDPOINT"},
		{name: "no job slot", env: map[string]string{"SNAPSHOT_MAX_JOBS": "0"}, want: "SNAPSHOT_MAX_JOBS 0: want at least 1"},
		{name: "a job cap that is not a number", env: map[string]string{"SNAPSHOT_MAX_JOBS": "two"}, want: "SNAPSHOT_MAX_JOBS"},
		{name: "no entry allowed", env: map[string]string{"SNAPSHOT_MAX_ENTRIES": "0"}, want: "SNAPSHOT_MAX_ENTRIES 0: want at least 1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{
				"DATABASE_URL":                "postgres://nobody@127.0.0.1:1/none",
				"STREAMSPACE_JWT_SECRET_FILE": "/nonexistent",
				"S3_BUCKET":                   "snapshots",
			}
			for k, v := range tc.env {
				env[k] = v
			}
			err := function.New().Start(context.Background(), env)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}
