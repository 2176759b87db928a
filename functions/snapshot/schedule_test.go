package function_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/events"
	function "github.com/streamspace-dev/functions/functions/snapshot"
	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/fntest"
	"github.com/streamspace-dev/functions/shared/homesnap"
)

// ping delivers a PingSource tick from source.
func ping(t *testing.T, h *fntest.Harness, source string) int {
	t.Helper()
	e, err := events.New("test", events.Ping, events.PingData{Job: "test"})
	require.NoError(t, err)
	e.SetSource(source)
	status, _ := h.Deliver(e, false)
	return status
}

// row inserts a snapshot row as StreamSpace's table holds it, created age
// ago, expiring after the interval expires ("" for never), and, when
// stored, its two objects.
func (w *world) row(t *testing.T, id, session, user, typ, status string, age time.Duration, expires string, stored bool) string {
	t.Helper()
	key := homesnap.ArchiveKey(user, session, id)
	_, err := w.h.Pool.Exec(context.Background(), `
		insert into session_snapshots (id, session_id, user_id, name, type, status, storage_path, size_bytes, created_at, expires_at)
		values ($1, $2, $3, $1, $4, $5, $6, 10, localtimestamp - make_interval(secs => $7), localtimestamp + nullif($8, '')::interval)`,
		id, session, user, typ, status, key, age.Seconds(), expires)
	require.NoError(t, err)
	if stored {
		w.put(t, key)
		w.put(t, homesnap.ManifestKey(key))
	}
	return key
}

func (w *world) put(t *testing.T, key string) {
	t.Helper()
	_, err := w.srv.Client().PutObject(context.Background(), &s3.PutObjectInput{
		Bucket: aws.String(w.bucket), Key: aws.String(key), Body: bytes.NewReader([]byte("x"))})
	require.NoError(t, err)
}

func (w *world) exists(t *testing.T, key string) bool {
	t.Helper()
	_, err := w.srv.Client().HeadObject(context.Background(), &s3.HeadObjectInput{Bucket: aws.String(w.bucket), Key: aws.String(key)})
	return err == nil
}

func (w *world) status(t *testing.T, id string) string {
	t.Helper()
	var s string
	require.NoError(t, w.h.Pool.QueryRow(context.Background(), `select status from session_snapshots where id = $1`, id).Scan(&s))
	return s
}

func TestRetentionAndSweep(t *testing.T) {
	w := newWorld(t, opts{env: map[string]string{"SNAPSHOT_SWEEP_GRACE": "0s"}})
	day := 24 * time.Hour
	_, err := w.h.Pool.Exec(context.Background(),
		`update sessions set snapshot_config = '{"retention":{"maxSnapshots":2,"retentionDays":30,"deleteExpiredAuto":true}}' where id = 's-1'`)
	require.NoError(t, err)
	keys := map[string]string{
		"expired":        w.row(t, "expired", "s-b", "bob", "manual", "available", day, "-1 hour", true),
		"oldest-of-3":    w.row(t, "oldest-of-3", "s-1", "alice", "manual", "available", 3*day, "10 days", true),
		"middle-of-3":    w.row(t, "middle-of-3", "s-1", "alice", "manual", "available", 2*day, "10 days", true),
		"newest-of-3":    w.row(t, "newest-of-3", "s-1", "alice", "manual", "available", day, "10 days", true),
		"old-automatic":  w.row(t, "old-automatic", "s-b", "bob", "automatic", "available", 40*day, "100 days", true),
		"old-manual":     w.row(t, "old-manual", "s-b", "bob", "manual", "available", 40*day, "100 days", true),
		"creating":       w.row(t, "creating", "s-b", "bob", "manual", "creating", 2*day, "-1 hour", false),
		"already-gone":   w.row(t, "already-gone", "s-b", "bob", "manual", "deleted", day, "10 days", true),
		"failed-old":     w.row(t, "failed-old", "s-b", "bob", "manual", "failed", 40*day, "100 days", false),
		"failed-recent":  w.row(t, "failed-recent", "s-b", "bob", "manual", "failed", day, "100 days", false),
		"row-was-purged": homesnap.ArchiveKey("carol", "s-x", "row-was-purged"),
		// Pre-restore backups: no expiry, not counted for maxSnapshots,
		// kept retentionDays, and kept while a restore may need them.
		"backup-newest":       w.row(t, "backup-newest", "s-1", "alice", "pre-restore", "available", 36*time.Hour, "", true),
		"backup-old":          w.row(t, "backup-old", "s-b", "bob", "pre-restore", "available", 40*day, "", true),
		"backup-failed-old":   w.row(t, "backup-failed-old", "s-b", "bob", "pre-restore", "failed", 40*day, "", false),
		"backup-young":        w.row(t, "backup-young", "s-b", "bob", "pre-restore", "available", time.Hour, "-1 minute", true),
		"backup-in-use":       w.row(t, "backup-in-use", "s-2", "alice", "pre-restore", "available", 40*day, "", true),
		"being-restored":      w.row(t, "being-restored", "s-2", "alice", "manual", "restoring", 50*day, "-1 hour", true),
		"backup-not-put-back": w.row(t, "backup-not-put-back", "s-b", "bob", "pre-restore", "available", 40*day, "", true),
	}
	_, err = w.h.Pool.Exec(context.Background(), `
		insert into snapshot_restore_jobs (id, snapshot_id, session_id, target_session_id, user_id, status) values
			('job-running', 'being-restored', 's-2', 's-2', 'alice', 'in_progress'),
			('job-done', 'old-manual', 's-b', 's-b', 'bob', 'completed')`)
	require.NoError(t, err)
	_, err = w.h.Pool.Exec(context.Background(), `
		insert into snapshot_restore_jobs (id, snapshot_id, session_id, target_session_id, user_id, status, backup_snapshot_id, rolled_back, rollback_failed) values
			('job-rollback-failed', 'old-manual', 's-b', 's-b', 'bob', 'failed', 'backup-not-put-back', false, true)`)
	require.NoError(t, err)
	w.put(t, keys["row-was-purged"])
	w.put(t, "snapshots/README")

	require.Equal(t, http.StatusAccepted, ping(t, w.h, events.SnapshotRetentionSource))

	tests := []struct {
		id     string
		status string // "" for a row that does not exist
		stored bool
	}{
		{id: "expired", status: "deleted"},
		{id: "oldest-of-3", status: "deleted"},
		{id: "middle-of-3", status: "available", stored: true},
		{id: "newest-of-3", status: "available", stored: true},
		{id: "old-automatic", status: "deleted"},
		{id: "old-manual", status: "available", stored: true},
		{id: "creating", status: "creating"},
		{id: "already-gone", status: "deleted"},
		{id: "failed-old", status: "deleted"},
		{id: "failed-recent", status: "failed"},
		{id: "row-was-purged"},
		{id: "backup-newest", status: "available", stored: true},
		{id: "backup-old", status: "deleted"},
		{id: "backup-failed-old", status: "deleted"},
		{id: "backup-young", status: "available", stored: true},
		{id: "backup-in-use", status: "available", stored: true},
		{id: "being-restored", status: "restoring", stored: true},
		{id: "backup-not-put-back", status: "available", stored: true},
	}
	for _, tc := range tests {
		t.Run(tc.id, func(t *testing.T) {
			if tc.status != "" {
				assert.Equal(t, tc.status, w.status(t, tc.id))
			}
			assert.Equal(t, tc.stored, w.exists(t, keys[tc.id]), "archive stored")
			assert.Equal(t, tc.stored, w.exists(t, homesnap.ManifestKey(keys[tc.id])), "manifest stored")
		})
	}
	assert.True(t, w.exists(t, "snapshots/README"), "a key that names no snapshot is left alone")

	t.Run("a second tick changes nothing", func(t *testing.T) {
		require.Equal(t, http.StatusAccepted, ping(t, w.h, events.SnapshotRetentionSource))
		assert.Equal(t, "available", w.status(t, "middle-of-3"))
		assert.True(t, w.exists(t, keys["middle-of-3"]))
	})
}

func TestSweepGrace(t *testing.T) {
	w := newWorld(t, opts{})
	key := homesnap.ArchiveKey("alice", "s-1", "written-before-its-row")
	w.put(t, key)
	require.Equal(t, http.StatusAccepted, ping(t, w.h, events.SnapshotRetentionSource))
	assert.True(t, w.exists(t, key), "an object younger than SNAPSHOT_SWEEP_GRACE is not an orphan yet")
}

func TestAutomaticSnapshots(t *testing.T) {
	w := newWorld(t, opts{env: map[string]string{"SNAPSHOT_AUTO_JITTER": "0s", "SNAPSHOT_AUTO_CONCURRENCY": "1"}})
	// Due ten minutes ago, every hour.
	minute := time.Now().UTC().Add(-10 * time.Minute).Minute()
	cfg := fmt.Sprintf(`{"automaticSnapshots":{"enabled":true,"schedule":"%d * * * *"}}`, minute)
	_, err := w.h.Pool.Exec(context.Background(), `update sessions set snapshot_config = $1 where id in ('s-1', 's-2', 's-b')`, cfg)
	require.NoError(t, err)
	auto := func() int {
		return w.h.Count(`select count(*) from session_snapshots where type = 'automatic'`)
	}

	require.Equal(t, http.StatusAccepted, ping(t, w.h, events.SnapshotScheduleSource))
	assert.Equal(t, 1, auto(), "one at a time (SNAPSHOT_AUTO_CONCURRENCY)")
	require.Len(t, w.h.Sink.WaitFor(context.Background(), events.SnapshotRequested, time.Minute), 1)

	require.Equal(t, http.StatusAccepted, ping(t, w.h, events.SnapshotScheduleSource))
	assert.Equal(t, 1, auto(), "none while one is being created")

	_, err = w.h.Pool.Exec(context.Background(), `update session_snapshots set status = 'available' where type = 'automatic'`)
	require.NoError(t, err)
	require.Equal(t, http.StatusAccepted, ping(t, w.h, events.SnapshotScheduleSource))
	assert.Equal(t, 2, auto(), "the other running session's turn")
	assert.Zero(t, w.h.Count(`select count(*) from session_snapshots where session_id = 's-2'`), "a hibernated session is skipped")

	_, err = w.h.Pool.Exec(context.Background(), `update session_snapshots set status = 'available' where type = 'automatic'`)
	require.NoError(t, err)
	require.Equal(t, http.StatusAccepted, ping(t, w.h, events.SnapshotScheduleSource))
	assert.Equal(t, 2, auto(), "nothing is due again until the next scheduled time")
}

func TestStaleJobs(t *testing.T) {
	w := newWorld(t, opts{})
	ids := map[string]string{}
	for _, name := range []string{"stale", "abandoned", "running", "fresh"} {
		ids[name] = uuid.NewString()
	}
	w.row(t, ids["stale"], "s-1", "alice", "manual", "creating", 10*time.Minute, "10 days", false)
	w.row(t, ids["abandoned"], "s-1", "alice", "manual", "creating", 4*24*time.Hour, "10 days", false)
	w.row(t, ids["running"], "s-1", "alice", "manual", "creating", 10*time.Minute, "10 days", false)
	w.row(t, ids["fresh"], "s-1", "alice", "manual", "creating", time.Second, "10 days", false)
	w.row(t, "snap_s-1_1700000000", "s-1", "alice", "manual", "creating", 10*time.Minute, "10 days", false)
	_, err := w.h.Pool.Exec(context.Background(), `insert into job_leases (name, owner, lease_until, heartbeat_at)
		values ($1, 'live', now() + interval '1 hour', now())`, "snapshot:"+ids["running"])
	require.NoError(t, err)

	require.Equal(t, http.StatusAccepted, ping(t, w.h, events.SnapshotScheduleSource))
	require.Len(t, w.h.Sink.WaitFor(context.Background(), events.SnapshotFailed, time.Minute), 1)
	require.Len(t, w.h.Sink.WaitFor(context.Background(), events.SnapshotRequested, time.Minute), 1)
	assert.Len(t, w.eventsFor(events.SnapshotRequested, ids["stale"]), 1, "a job nobody runs is asked for again")
	assert.Len(t, w.eventsFor(events.SnapshotFailed, ids["abandoned"]), 1, "one too old is given up")
	assert.Equal(t, "failed", w.status(t, ids["abandoned"]))
	assert.Equal(t, "creating", w.status(t, ids["running"]), "a job with a live lease is left alone")
	assert.Equal(t, "creating", w.status(t, ids["fresh"]), "a new one waits for its first delivery")
	assert.Equal(t, "failed", w.status(t, "snap_s-1_1700000000"), "a row StreamSpace's API left creating is failed")
}

func TestConfigRoutes(t *testing.T) {
	w := newWorld(t, opts{})
	alice, bob := w.alice(), w.h.Token("bob", authn.User)
	path := "/api/v1/sessions/s-1/snapshots/config"

	status, body := w.h.Do(http.MethodGet, path, alice, nil)
	require.Equal(t, http.StatusOK, status, "%s", body)
	assert.JSONEq(t, `{"automaticSnapshots":{"enabled":false,"schedule":"0 2 * * *"},
		"retention":{"maxSnapshots":10,"retentionDays":30,"deleteExpiredAuto":true},
		"compression":{"enabled":true,"level":6}}`, string(body))

	tests := []struct {
		name    string
		token   string
		body    string
		status  int
		message string
	}{
		{name: "bad schedule", token: alice, body: `{"automaticSnapshots":{"enabled":true,"schedule":"every night"}}`, status: 400, message: "automaticSnapshots.schedule"},
		{name: "bad timezone", token: alice, body: `{"automaticSnapshots":{"enabled":true,"schedule":"0 2 * * *","timezone":"Mars/Olympus"}}`, status: 400, message: "automaticSnapshots.timezone"},
		{name: "maxSnapshots zero", token: alice, body: `{"retention":{"maxSnapshots":0,"retentionDays":30}}`, status: 400, message: "retention.maxSnapshots"},
		{name: "level out of range", token: alice, body: `{"compression":{"enabled":true,"level":12}}`, status: 400, message: "compression.level"},
		{name: "unknown field", token: alice, body: `{"retention":{"keepForever":true}}`, status: 400, message: "keepForever"},
		{name: "another user's session", token: bob, body: `{}`, status: 404},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, body := w.h.Do(http.MethodPut, path, tc.token, json.RawMessage(tc.body))
			require.Equal(t, tc.status, status, "%s", body)
			_, message := fntest.ErrorBody(t, body)
			assert.Contains(t, message, tc.message)
			assert.Zero(t, w.h.Count(`select count(*) from sessions where snapshot_config <> '{}'`), "nothing was stored")
		})
	}

	status, body = w.h.Do(http.MethodPut, path, alice, json.RawMessage(`{"automaticSnapshots":{"enabled":true,"schedule":"30 3 * * 1-5","timezone":"Europe/Berlin"},"compression":{"enabled":false,"level":1}}`))
	require.Equal(t, http.StatusOK, status, "%s", body)
	status, body = w.h.Do(http.MethodGet, path, alice, nil)
	require.Equal(t, http.StatusOK, status)
	var got function.SnapshotConfig
	require.NoError(t, json.Unmarshal(body, &got))
	assert.Equal(t, "Europe/Berlin", got.AutomaticSnapshots.Timezone)
	assert.Equal(t, 10, got.Retention.MaxSnapshots, "a key left out keeps its default")
	assert.Equal(t, 0, got.GzipLevel())
}

func TestDue(t *testing.T) {
	now := time.Date(2026, 6, 1, 1, 30, 0, 0, time.UTC) // 03:30 in Berlin (CEST)
	at := func(h, m int) time.Time { return time.Date(2026, 6, 1, h, m, 0, 0, time.UTC) }
	tests := []struct {
		name   string
		cfg    function.AutomaticConfig
		last   time.Time
		jitter time.Duration
		due    bool
	}{
		{name: "disabled", cfg: function.AutomaticConfig{Schedule: "0 * * * *"}},
		{name: "never ran, due this hour", cfg: function.AutomaticConfig{Enabled: true, Schedule: "0 * * * *"}, due: true},
		{name: "never ran, next one later", cfg: function.AutomaticConfig{Enabled: true, Schedule: "0 2 * * *"}},
		{name: "ran at the last due time", cfg: function.AutomaticConfig{Enabled: true, Schedule: "0 * * * *"}, last: at(1, 0)},
		{name: "ran the hour before", cfg: function.AutomaticConfig{Enabled: true, Schedule: "0 * * * *"}, last: at(0, 0), due: true},
		{name: "3:00 Berlin is 1:00 UTC", cfg: function.AutomaticConfig{Enabled: true, Schedule: "0 3 * * *", Timezone: "Europe/Berlin"}, last: at(0, 0).Add(-24 * time.Hour), due: true},
		{name: "a missed time is caught up once", cfg: function.AutomaticConfig{Enabled: true, Schedule: "0 2 * * *"}, last: at(0, 0).Add(-24 * time.Hour), due: true},
		{name: "2:00 UTC is not yet", cfg: function.AutomaticConfig{Enabled: true, Schedule: "0 2 * * *"}, last: at(2, 0).Add(-24 * time.Hour)},
		{name: "jitter past now waits", cfg: function.AutomaticConfig{Enabled: true, Schedule: "25 * * * *"}, last: at(0, 25).Add(function.Jitter("s-1", time.Hour)), jitter: time.Hour},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			due, _ := function.Due(tc.cfg, "s-1", tc.last, now, tc.jitter)
			if tc.jitter > 0 {
				// The offset is fixed per session; due only once it passed.
				off := function.Jitter("s-1", tc.jitter)
				tc.due = !at(1, 25).Add(off).After(now)
			}
			assert.Equal(t, tc.due, due)
		})
	}
}
