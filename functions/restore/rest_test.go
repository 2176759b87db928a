package function_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/events"
	function "github.com/streamspace-dev/functions/functions/restore"
	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/fntest"
)

func TestRestoreRequest(t *testing.T) {
	h := fntest.Start(t, function.New(), offlineEnv(t))
	h.AddUser("alice", authn.User)
	h.AddUser("bob", authn.User)
	h.AddUser("root", authn.Admin)
	addSession(t, h, "s-alice", "alice", "running")
	addSession(t, h, "s-alice-2", "alice", "running")
	addSession(t, h, "s-alice-3", "alice", "running")
	addSession(t, h, "s-alice-off", "alice", "hibernated")
	addSession(t, h, "s-bob", "bob", "running")
	snap := addSnapshot(t, h, "s-alice", "alice", "available")
	snap2 := addSnapshot(t, h, "s-alice", "alice", "available")
	snap3 := addSnapshot(t, h, "s-alice", "alice", "available")
	creating := addSnapshot(t, h, "s-alice", "alice", "creating")
	bobs := addSnapshot(t, h, "s-bob", "bob", "available")
	alice, bob, root := h.Token("alice", authn.User), h.Token("bob", authn.User), h.StreamSpaceToken("root", authn.Admin)

	tests := []struct {
		name       string
		token      string
		path       string
		body       any
		wantStatus int
		wantTarget string // on 202
		wantInMsg  string // on an error
	}{
		{name: "the owner restores into the snapshot's session, no body", token: alice, path: restorePath("s-alice", snap),
			wantStatus: http.StatusAccepted, wantTarget: "s-alice"},
		{name: "a second restore into a session with one in progress", token: alice, path: restorePath("s-alice", snap2),
			wantStatus: http.StatusConflict, wantInMsg: "already has a restore in progress"},
		{name: "the owner restores into another of their sessions", token: alice, path: restorePath("s-alice", snap2),
			body: map[string]string{"targetSessionId": "s-alice-2"}, wantStatus: http.StatusAccepted, wantTarget: "s-alice-2"},
		{name: "a snapshot being restored is not available", token: alice, path: restorePath("s-alice", snap),
			body: map[string]string{"targetSessionId": "s-alice-3"}, wantStatus: http.StatusConflict, wantInMsg: "not available"},
		{name: "a snapshot still being created", token: alice, path: restorePath("s-alice", creating),
			body: map[string]string{"targetSessionId": "s-alice-3"}, wantStatus: http.StatusConflict, wantInMsg: "not available (status: creating)"},
		{name: "a session that is not running", token: alice, path: restorePath("s-alice", snap3),
			body: map[string]string{"targetSessionId": "s-alice-off"}, wantStatus: http.StatusConflict, wantInMsg: "is not running"},
		{name: "another user's session as the target is not found", token: alice, path: restorePath("s-alice", snap3),
			body: map[string]string{"targetSessionId": "s-bob"}, wantStatus: http.StatusNotFound, wantInMsg: "targetSessionId"},
		{name: "a missing target session", token: alice, path: restorePath("s-alice", snap3),
			body: map[string]string{"targetSessionId": "s-nope"}, wantStatus: http.StatusNotFound, wantInMsg: "targetSessionId"},
		{name: "another user's snapshot is not found", token: alice, path: restorePath("s-bob", bobs),
			wantStatus: http.StatusNotFound, wantInMsg: "session s-bob not found"},
		{name: "a snapshot of another session is not found", token: bob, path: restorePath("s-bob", snap3),
			wantStatus: http.StatusNotFound, wantInMsg: "snapshot"},
		{name: "an unknown field", token: alice, path: restorePath("s-alice", snap3),
			body: map[string]any{"targetSession": "s-alice-3"}, wantStatus: http.StatusBadRequest, wantInMsg: "targetSession"},
		{name: "an over-long target", token: alice, path: restorePath("s-alice", snap3),
			body: map[string]any{"targetSessionId": strings.Repeat("s", 256)}, wantStatus: http.StatusBadRequest, wantInMsg: "targetSessionId"},
		{name: "a target of the wrong type", token: alice, path: restorePath("s-alice", snap3),
			body: map[string]any{"targetSessionId": 7}, wantStatus: http.StatusBadRequest, wantInMsg: "targetSessionId"},
		{name: "no token", path: restorePath("s-alice", snap3), wantStatus: http.StatusUnauthorized},
		{name: "an admin restores a user's snapshot", token: root, path: restorePath("s-alice", snap3),
			body: map[string]string{"targetSessionId": "s-alice-3"}, wantStatus: http.StatusAccepted, wantTarget: "s-alice-3"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			jobsBefore := h.Count(`select count(*) from snapshot_restore_jobs`)
			// Every earlier event has left, so any event now would be this
			// request's.
			require.Eventually(t, func() bool { return h.Count(`select count(*) from event_outbox`) == 0 }, wait, 20*time.Millisecond)
			arrivedBefore := h.Sink.Arrived()
			status, body := h.Do(http.MethodPost, tc.path, tc.token, tc.body)
			require.Equal(t, tc.wantStatus, status, "%s", body)
			if tc.wantStatus != http.StatusAccepted {
				if tc.wantStatus != http.StatusUnauthorized {
					_, msg := fntest.ErrorBody(t, body)
					assert.Contains(t, msg, tc.wantInMsg)
				}
				assert.Equal(t, jobsBefore, h.Count(`select count(*) from snapshot_restore_jobs`), "a refusal leaves no job")
				assert.Equal(t, 0, h.Count(`select count(*) from event_outbox`), "a refusal queues no event")
				assert.Equal(t, arrivedBefore, h.Sink.Arrived(), "a refusal sends no event")
				return
			}
			var res function.RestoreResult
			require.NoError(t, json.Unmarshal(body, &res))
			assert.Equal(t, "Restore job initiated", res.Message)
			assert.Equal(t, function.JobPending, res.Status)
			assert.Equal(t, tc.wantTarget, res.TargetSessionID)
			assert.NotEmpty(t, res.RestoreJobID)
			assert.Equal(t, 1, h.Count(`select count(*) from snapshot_restore_jobs
				where id = $1 and snapshot_id = $2 and target_session_id = $3 and user_id = 'alice' and status = 'pending'`,
				res.RestoreJobID, res.SnapshotID, tc.wantTarget))
			assert.Equal(t, 1, h.Count(`select count(*) from session_snapshots where id = $1 and status = 'restoring'`, res.SnapshotID))
			var d events.RestoreRequestedData
			waitEvent(t, h, events.RestoreRequested, res.RestoreJobID, &d)
			assert.Equal(t, events.RestoreRequestedData{RestoreJobID: res.RestoreJobID, SnapshotID: res.SnapshotID,
				SessionID: tc.wantTarget, UserID: "alice"}, d)
		})
	}
}

func TestRestoreStatus(t *testing.T) {
	h := fntest.Start(t, function.New(), offlineEnv(t))
	h.AddUser("alice", authn.User)
	h.AddUser("bob", authn.User)
	addSession(t, h, "s-alice", "alice", "running")
	snap := addSnapshot(t, h, "s-alice", "alice", "available")
	none := addSnapshot(t, h, "s-alice", "alice", "available")
	alice, bob := h.Token("alice", authn.User), h.Token("bob", authn.User)
	status, body := h.Do(http.MethodPost, restorePath("s-alice", snap), alice, nil)
	require.Equal(t, http.StatusAccepted, status, "%s", body)
	var res function.RestoreResult
	require.NoError(t, json.Unmarshal(body, &res))

	tests := []struct {
		name       string
		token      string
		snapshot   string
		wantStatus int
		wantJobs   []string
	}{
		{name: "the owner sees the pending job", token: alice, snapshot: snap, wantStatus: http.StatusOK, wantJobs: []string{res.RestoreJobID}},
		{name: "no jobs yet", token: alice, snapshot: none, wantStatus: http.StatusOK, wantJobs: []string{}},
		{name: "another user gets 404", token: bob, snapshot: snap, wantStatus: http.StatusNotFound},
		{name: "a missing snapshot is 404", token: alice, snapshot: "00000000-0000-4000-8000-000000000000", wantStatus: http.StatusNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, body := h.Do(http.MethodGet, restorePath("s-alice", tc.snapshot)+"/status", tc.token, nil)
			require.Equal(t, tc.wantStatus, status, "%s", body)
			if status != http.StatusOK {
				fntest.ErrorBody(t, body)
				return
			}
			var got function.StatusResult
			require.NoError(t, json.Unmarshal(body, &got))
			ids := []string{}
			for _, j := range got.RestoreJobs {
				ids = append(ids, j.ID)
				assert.Equal(t, function.JobPending, j.Status)
				assert.Equal(t, function.Progress{Phase: function.PhasePending, Step: 0, Steps: 6, Percent: 0}, j.Progress)
				assert.False(t, j.RolledBack)
				assert.False(t, j.RollbackFailed)
				assert.Nil(t, j.CompletedAt)
			}
			assert.Equal(t, tc.wantJobs, ids)
			assert.Equal(t, len(tc.wantJobs), got.Count)
		})
	}
}

// TestRestoreStatusReadsTheJobState lists jobs whose state is in the
// columns migration 008 adds, and jobs recorded before it (those columns
// null): the answer keeps StreamSpace's shape with progress, backup and
// rollback read from the job's own row.
func TestRestoreStatusReadsTheJobState(t *testing.T) {
	h := fntest.Start(t, function.New(), offlineEnv(t))
	h.AddUser("alice", authn.User)
	addSession(t, h, "s-alice", "alice", "running")
	snap := addSnapshot(t, h, "s-alice", "alice", "available")

	tests := []struct {
		name string
		// columns are the row's values beside StreamSpace's: status,
		// phase, failed_phase, backup_snapshot_id, rolled_back,
		// rollback_failed.
		status, phase, failedPhase, backup string
		rolledBack, rollbackFailed         *bool
		want                               map[string]any
	}{
		{name: "in progress, extracting, with its backup", status: "in_progress", phase: "extracting", backup: "b-1",
			want: map[string]any{"status": "in_progress", "backupSnapshotId": "b-1", "rolledBack": false, "rollbackFailed": false,
				"progress": map[string]any{"phase": "extracting", "step": 4, "steps": 6, "percent": 66}}},
		{name: "failed while vetting, no backup", status: "failed", phase: "failed", failedPhase: "vetting", rolledBack: new(false),
			rollbackFailed: new(false),
			want: map[string]any{"status": "failed", "rolledBack": false, "rollbackFailed": false,
				"progress": map[string]any{"phase": "failed", "step": 6, "steps": 6, "percent": 100}}},
		{name: "failed and rolled back", status: "failed", phase: "failed", failedPhase: "extracting", backup: "b-2", rolledBack: new(true),
			rollbackFailed: new(false),
			want: map[string]any{"status": "failed", "backupSnapshotId": "b-2", "rolledBack": true, "rollbackFailed": false,
				"progress": map[string]any{"phase": "failed", "step": 6, "steps": 6, "percent": 100}}},
		{name: "failed and the rollback failed", status: "failed", phase: "failed", failedPhase: "extracting", backup: "b-3",
			rolledBack: new(false), rollbackFailed: new(true),
			want: map[string]any{"status": "failed", "backupSnapshotId": "b-3", "rolledBack": false, "rollbackFailed": true,
				"progress": map[string]any{"phase": "failed", "step": 6, "steps": 6, "percent": 100}}},
		{name: "in progress, recorded before migration 008", status: "in_progress",
			want: map[string]any{"status": "in_progress", "rolledBack": false, "rollbackFailed": false,
				"progress": map[string]any{"phase": "vetting", "step": 1, "steps": 6, "percent": 16}}},
		{name: "completed, recorded before migration 008", status: "completed",
			want: map[string]any{"status": "completed", "rolledBack": false, "rollbackFailed": false,
				"progress": map[string]any{"phase": "completed", "step": 6, "steps": 6, "percent": 100}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id := uuid.NewString()
			sqlExec(t, h, `insert into snapshot_restore_jobs (id, snapshot_id, session_id, target_session_id, user_id, status, started_at,
				completed_at, phase, failed_phase, backup_snapshot_id, rolled_back, rollback_failed)
				values ($1, $2, 's-alice', 's-alice', 'alice', $3::text, localtimestamp,
					case when $3::text in ('completed', 'failed') then localtimestamp end, nullif($4, ''), nullif($5, ''), nullif($6, ''), $7, $8)`,
				id, snap, tc.status, tc.phase, tc.failedPhase, tc.backup, tc.rolledBack, tc.rollbackFailed)
			status, body := h.Do(http.MethodGet, restorePath("s-alice", snap)+"/status", h.Token("alice", authn.User), nil)
			require.Equal(t, http.StatusOK, status, "%s", body)
			var got struct {
				RestoreJobs []map[string]any `json:"restoreJobs"`
			}
			require.NoError(t, json.Unmarshal(body, &got))
			var job map[string]any
			for _, j := range got.RestoreJobs {
				if j["id"] == id {
					job = j
				}
			}
			require.NotNil(t, job, "job %s is listed", id)
			want := map[string]any{"id": id, "targetSessionId": "s-alice", "startedAt": job["startedAt"]}
			if tc.status == "completed" || tc.status == "failed" {
				want["completedAt"] = job["completedAt"]
				assert.NotEmpty(t, job["completedAt"])
			}
			for k, v := range tc.want {
				want[k] = v
			}
			wantJSON, err := json.Marshal(want)
			require.NoError(t, err)
			gotJSON, err := json.Marshal(job)
			require.NoError(t, err)
			assert.JSONEq(t, string(wantJSON), string(gotJSON), "StreamSpace's fields, progress, backup and rollback; nothing else")
		})
	}
}

// TestStaleJobsAreAskedAgain delivers the outbox-drain tick: jobs left
// pending or running with no live lease for longer than a job may take are
// asked for again, once per quiet interval; the others are left alone.
func TestStaleJobsAreAskedAgain(t *testing.T) {
	h := fntest.Start(t, function.New(), offlineEnv(t))
	h.AddUser("alice", authn.User)
	addSession(t, h, "s-alice", "alice", "running")
	snap := addSnapshot(t, h, "s-alice", "alice", "restoring")
	jobs := map[string]struct {
		status string
		age    string
		// changed is how long ago the function last changed the row
		// (updated_at); "" for a row written before migration 008.
		changed string
		lease   string // "" none, else the lease's remaining time
		asked   bool
	}{
		"pending, its event lost":     {status: "pending", age: "1 hour", asked: true},
		"running, changed long ago":   {status: "in_progress", age: "2 hours", changed: "1 hour", asked: true},
		"running, changed just now":   {status: "in_progress", age: "1 hour", changed: "1 minute"},
		"running, its owner gone":     {status: "in_progress", age: "1 hour", lease: "-1 minute", asked: true},
		"running, its owner renewing": {status: "in_progress", age: "1 hour", lease: "30 seconds"},
		"pending, just asked":         {status: "pending", age: "1 minute"},
		"completed long ago":          {status: "completed", age: "1 hour"},
		"failed long ago":             {status: "failed", age: "1 hour"},
	}
	ids := map[string]string{}
	for name, j := range jobs {
		id := uuid.NewString()
		ids[name] = id
		sqlExec(t, h, `insert into snapshot_restore_jobs (id, snapshot_id, session_id, target_session_id, user_id, status, started_at, updated_at)
			values ($1, $2, 's-alice', 's-alice', 'alice', $3, localtimestamp - $4::interval, localtimestamp - nullif($5, '')::interval)`,
			id, snap, j.status, j.age, j.changed)
		if j.lease != "" {
			sqlExec(t, h, `insert into job_leases (name, owner, lease_until, heartbeat_at) values ($1, 'pod-a', now() + $2::interval, now())`,
				"restore:"+id, j.lease)
		}
	}
	tests := []struct {
		name string
		want func(asked bool) bool
	}{
		{name: "the first tick asks for the stale jobs", want: func(asked bool) bool { return asked }},
		{name: "the next tick asks for none again", want: func(bool) bool { return false }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := map[string]int{}
			for name := range jobs {
				before[name] = countRequested(h, ids[name])
			}
			e, err := events.New("test", events.Ping, events.PingData{Job: "outbox-drain"})
			require.NoError(t, err)
			e.SetSource(events.OutboxDrainSource)
			status, _ := h.Deliver(e, false)
			require.Equal(t, 2, status/100)
			require.Eventually(t, func() bool { return h.Count(`select count(*) from event_outbox`) == 0 }, wait, 20*time.Millisecond)
			for name, j := range jobs {
				got := countRequested(h, ids[name]) - before[name]
				want := 0
				if tc.want(j.asked) {
					want = 1
				}
				assert.Equal(t, want, got, name)
			}
		})
	}
	assert.Equal(t, len(jobs), h.Count(`select count(*) from snapshot_restore_jobs
		where snapshot_id = $1 and started_at < localtimestamp - interval '50 seconds'`, snap),
		"the sweep restarts its own clock, never StreamSpace's started_at")
}

func countRequested(h *fntest.Harness, job string) int {
	n := 0
	for _, e := range h.Sink.Events() {
		var d events.RestoreRequestedData
		if e.Type() == events.RestoreRequested && e.DataAs(&d) == nil && d.RestoreJobID == job {
			n++
		}
	}
	return n
}
