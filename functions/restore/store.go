package function

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/errs"
	"github.com/streamspace-dev/functions/shared/homesnap"
)

// The SQL of the restore function. It uses StreamSpace's own tables as they
// are: sessions, session_snapshots, snapshot_restore_jobs, users and
// notifications, and the columns migration 008 adds to
// snapshot_restore_jobs for the job's own state: phase, backup_snapshot_id,
// failed_phase, rolled_back, rollback_failed and updated_at (docs/data.md).
// The job's pre-restore backup is a snapshot like any other: its metadata
// holds the archive record the snapshot function writes, and the id of the
// job that took it, for a reader of the snapshot alone.

// querier is what the store reads through: a pool or a transaction.
type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// JobStatus is a restore job's status, StreamSpace's values.
type JobStatus string

// The job statuses.
const (
	JobPending    JobStatus = "pending"
	JobInProgress JobStatus = "in_progress"
	JobCompleted  JobStatus = "completed"
	JobFailed     JobStatus = "failed"
)

// SnapshotStatus is a session_snapshots status, StreamSpace's values.
type SnapshotStatus string

// The snapshot statuses this function reads or writes.
const (
	SnapshotCreating  SnapshotStatus = "creating"
	SnapshotAvailable SnapshotStatus = "available"
	SnapshotRestoring SnapshotStatus = "restoring"
	SnapshotFailed    SnapshotStatus = "failed"
)

// PreRestoreType is the session_snapshots type of the backup a restore
// takes of the /config it is about to replace.
const PreRestoreType = "pre-restore"

// SessionRunning is the sessions.state of a session with a pod.
const SessionRunning = "running"

// session is a row of StreamSpace's sessions.
type session struct {
	ID, UserID, State, Namespace string
}

// sessionSQL reads a session; lockSessionSQL serialises restores into one
// target session for the rest of the transaction: the check that none is
// running and the insert of the new job must not interleave with another
// request's. An advisory transaction lock, so StreamSpace's own writes to the
// session row never wait on it, and it is PgBouncer-safe.
const (
	sessionSQL = `
select id, coalesce(user_id, ''), coalesce(state, ''), coalesce(namespace, '')
from sessions
where id = $1`
	lockSessionSQL = `select pg_advisory_xact_lock(hashtextextended('restore:' || $1, 0))`
)

func loadSession(ctx context.Context, q querier, id string) (session, error) {
	var s session
	err := q.QueryRow(ctx, sessionSQL, id).Scan(&s.ID, &s.UserID, &s.State, &s.Namespace)
	if errors.Is(err, pgx.ErrNoRows) {
		return s, errs.E(errs.NotFound, "session %s not found", id)
	}
	if err != nil {
		return s, db.Classify(fmt.Errorf("load session %s: %w", id, err))
	}
	return s, nil
}

// snapshot is a row of StreamSpace's session_snapshots.
type snapshot struct {
	ID, SessionID, UserID, Type string
	Status                      SnapshotStatus
	StoragePath                 string
	Metadata                    json.RawMessage
}

// snapshotSQL reads a snapshot of session $2 that is not deleted.
const snapshotSQL = `
select id, coalesce(session_id, ''), coalesce(user_id, ''), coalesce(type, ''), coalesce(status, ''),
       coalesce(storage_path, ''), coalesce(metadata, '{}')
from session_snapshots
where id = $1 and session_id = $2 and status <> 'deleted'`

func loadSnapshot(ctx context.Context, q querier, id, sessionID string) (snapshot, error) {
	var s snapshot
	err := q.QueryRow(ctx, snapshotSQL, id, sessionID).Scan(&s.ID, &s.SessionID, &s.UserID, &s.Type, &s.Status, &s.StoragePath, &s.Metadata)
	if errors.Is(err, pgx.ErrNoRows) {
		return s, errs.E(errs.NotFound, "snapshot %s not found", id)
	}
	if err != nil {
		return s, db.Classify(fmt.Errorf("load snapshot %s: %w", id, err))
	}
	return s, nil
}

// activeJobSQL says whether session $1 has a restore pending or running.
const activeJobSQL = `
select exists (
	select 1 from snapshot_restore_jobs
	where target_session_id = $1 and status in ('pending', 'in_progress'))`

// claimSnapshotSQL marks an available snapshot as being restored; no row
// means it was not available.
const claimSnapshotSQL = `
update session_snapshots set status = 'restoring', updated_at = localtimestamp
where id = $1 and status = 'available'
returning id`

// insertJobSQL adds a pending job: $1 id, $2 snapshot, $3 the path
// session, $4 the target session, $5 the owner.
const insertJobSQL = `
insert into snapshot_restore_jobs (id, snapshot_id, session_id, target_session_id, user_id, status, started_at, phase, updated_at)
values ($1, $2, $3, $4, $5, 'pending', localtimestamp, 'pending', localtimestamp)`

// job is a row of snapshot_restore_jobs with what the job needs of its
// snapshot, its target session and its backup.
type job struct {
	ID, SnapshotID, SessionID, TargetSessionID, UserID string
	Status                                             JobStatus
	// Phase is the phase recorded last; empty for a job not yet started,
	// or recorded before migration 008.
	Phase    Phase
	Snapshot snapshot
	Target   session
	// Backup is the job's pre-restore snapshot; its ID is empty until one
	// was created.
	Backup backup
}

// backup is a job's pre-restore snapshot row.
type backup struct {
	ID          string
	Status      SnapshotStatus
	StoragePath string
	// Archive is its metadata.archive, set once it is available.
	Archive homesnap.ArchiveRecord
}

// jobSQL reads job $1, locked against a concurrent change of its status,
// with its snapshot, its target session and its backup. The lock is "for no
// key update", which leaves StreamSpace's foreign-key checks unblocked.
const jobSQL = `
select j.id, coalesce(j.snapshot_id, ''), coalesce(j.session_id, ''), coalesce(j.target_session_id, ''),
       coalesce(j.user_id, ''), coalesce(j.status, ''), coalesce(j.phase, ''),
       coalesce(s.session_id, ''), coalesce(s.user_id, ''), coalesce(s.status, ''), coalesce(s.storage_path, ''),
       coalesce(t.user_id, ''), coalesce(t.state, ''), coalesce(t.namespace, ''),
       coalesce(b.id, ''), coalesce(b.status, ''), coalesce(b.storage_path, ''), coalesce(b.metadata->'archive', '{}')
from snapshot_restore_jobs j
left join session_snapshots s on s.id = j.snapshot_id
left join sessions t on t.id = j.target_session_id
left join session_snapshots b on b.id = j.backup_snapshot_id
where j.id = $1
for no key update of j`

func loadJob(ctx context.Context, q querier, id string) (job, error) {
	var (
		j   job
		rec []byte
	)
	err := q.QueryRow(ctx, jobSQL, id).Scan(&j.ID, &j.SnapshotID, &j.SessionID, &j.TargetSessionID, &j.UserID, &j.Status, &j.Phase,
		&j.Snapshot.SessionID, &j.Snapshot.UserID, &j.Snapshot.Status, &j.Snapshot.StoragePath,
		&j.Target.UserID, &j.Target.State, &j.Target.Namespace,
		&j.Backup.ID, &j.Backup.Status, &j.Backup.StoragePath, &rec)
	if errors.Is(err, pgx.ErrNoRows) {
		return j, errs.E(errs.NotFound, "restore job %s not found", id)
	}
	if err != nil {
		return j, db.Classify(fmt.Errorf("load restore job %s: %w", id, err))
	}
	j.Snapshot.ID = j.SnapshotID
	j.Target.ID = j.TargetSessionID
	if err := json.Unmarshal(rec, &j.Backup.Archive); err != nil {
		return j, fmt.Errorf("restore job %s: backup %s: metadata.archive: %w", id, j.Backup.ID, err)
	}
	return j, nil
}

// startJobSQL moves job $1 to in_progress, as StreamSpace's API did,
// setting started_at to when it really started, and its phase to $3
// (vetting) unless the phase recorded is one of $2: those say /config may
// have been changed, which a new attempt must know until it records a phase
// of its own (job.go).
const startJobSQL = `
update snapshot_restore_jobs
set status = 'in_progress', started_at = localtimestamp, updated_at = localtimestamp,
    phase = case when phase = any($2::text[]) then phase else $3::text end
where id = $1 and status in ('pending', 'in_progress')`

// phaseSQL records that job $1 entered phase $2.
const phaseSQL = `update snapshot_restore_jobs set phase = $2, updated_at = localtimestamp where id = $1`

// finishJobSQL ends job $1 with status $2 and error message $3 (null when
// empty), and puts its snapshot in status $4. $5 is the job's last phase
// (completed or failed), $6 the phase it failed in (null when empty), $7
// and $8 whether it rolled back and whether the rollback failed.
const finishJobSQL = `
with j as (
	update snapshot_restore_jobs
	set status = $2::text, completed_at = localtimestamp, error_message = nullif($3::text, ''),
	    phase = $5::text, failed_phase = nullif($6::text, ''), rolled_back = $7, rollback_failed = $8,
	    updated_at = localtimestamp
	where id = $1
	returning snapshot_id)
update session_snapshots s
set status = $4::text, updated_at = localtimestamp,
    error_message = case when $4::text = 'failed' then nullif($3::text, '') else s.error_message end
from j
where s.id = j.snapshot_id and s.status = 'restoring'`

// insertBackupSQL creates the job's pre-restore snapshot: $1 id, $2
// session, $3 user, $4 name, $5 storage path, $6 metadata.
const insertBackupSQL = `
insert into session_snapshots (id, session_id, user_id, name, description, type, status, storage_path, metadata, created_at, updated_at)
values ($1, $2, $3, $4, 'Taken automatically before a restore replaced this session''s files', 'pre-restore', 'creating', $5, $6, localtimestamp, localtimestamp)`

// backingUpSQL records that job $1 entered phase $3 (backing-up) with its
// backup snapshot $2.
const backingUpSQL = `
update snapshot_restore_jobs
set phase = $3, backup_snapshot_id = $2, updated_at = localtimestamp
where id = $1`

// backupDoneSQL records the backup archive as the snapshot function
// records any: available, its size $2, its record $3 under metadata.archive.
// A previous attempt's failure on a reused row is dropped.
const backupDoneSQL = `
update session_snapshots
set status = 'available', size_bytes = $2, completed_at = localtimestamp, updated_at = localtimestamp,
    error_message = null,
    metadata = (coalesce(metadata, '{}') - 'failure') || jsonb_build_object('archive', $3::jsonb)
where id = $1`

// backupFailedSQL records a failed backup as the snapshot function records
// a failed snapshot: failed, the message $2, and the stage under
// metadata.failure ($3).
const backupFailedSQL = `
update session_snapshots
set status = 'failed', error_message = $2, completed_at = localtimestamp, updated_at = localtimestamp,
    metadata = coalesce(metadata, '{}') || jsonb_build_object('failure', $3::jsonb)
where id = $1`

// notifyAdminsSQL tells every active admin, in StreamSpace's notifications
// table, that a restore could not be rolled back: $1 title, $2 message, $3
// data. One row each, since a notification belongs to one user.
const notifyAdminsSQL = `
insert into notifications (id, user_id, type, title, message, data, priority, created_at)
select gen_random_uuid()::text, u.id, 'snapshot.restore.rollback_failed', $1, $2, $3, 'urgent', localtimestamp
from users u
where u.role = 'admin' and coalesce(u.active, true)`

// JobView is one restore job as GET …/restore/status answers it:
// StreamSpace's fields and progress.
type JobView struct {
	ID           string     `json:"id"`
	Status       JobStatus  `json:"status"`
	StartedAt    time.Time  `json:"startedAt"`
	CompletedAt  *time.Time `json:"completedAt,omitempty"`
	ErrorMessage string     `json:"errorMessage,omitempty"`
	Progress     Progress   `json:"progress"`
	// TargetSessionID is where the snapshot was restored.
	TargetSessionID string `json:"targetSessionId"`
	// BackupSnapshotID is the pre-restore snapshot the job took.
	BackupSnapshotID string `json:"backupSnapshotId,omitempty"`
	// RolledBack is true when the job failed and /config was put back as it
	// was before the restore.
	RolledBack bool `json:"rolledBack"`
	// RollbackFailed is true when the job failed after clearing /config
	// and putting the backup back failed too: /config needs an operator.
	RollbackFailed bool `json:"rollbackFailed"`
}

// listJobsSQL reads the ten newest jobs of snapshot $1, as StreamSpace's
// API did, with their state.
const listJobsSQL = `
select id, coalesce(status, ''), coalesce(started_at, localtimestamp), completed_at, coalesce(error_message, ''),
       coalesce(target_session_id, ''), coalesce(backup_snapshot_id, ''), coalesce(phase, ''), coalesce(rolled_back, false),
       coalesce(rollback_failed, false)
from snapshot_restore_jobs
where snapshot_id = $1
order by started_at desc, id
limit 10`

func listJobs(ctx context.Context, q querier, snapshotID string) ([]JobView, error) {
	rows, err := q.Query(ctx, listJobsSQL, snapshotID)
	if err != nil {
		return nil, db.Classify(fmt.Errorf("list restore jobs of %s: %w", snapshotID, err))
	}
	defer rows.Close()
	out := []JobView{}
	for rows.Next() {
		var (
			v     JobView
			phase Phase
		)
		if err := rows.Scan(&v.ID, &v.Status, &v.StartedAt, &v.CompletedAt, &v.ErrorMessage, &v.TargetSessionID,
			&v.BackupSnapshotID, &phase, &v.RolledBack, &v.RollbackFailed); err != nil {
			return nil, fmt.Errorf("list restore jobs of %s: %w", snapshotID, err)
		}
		v.Progress = progressOf(v.Status, phase)
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, db.Classify(fmt.Errorf("list restore jobs of %s: %w", snapshotID, err))
	}
	return out, nil
}

// staleJobsSQL picks up to 50 jobs that are pending or in progress, were
// last changed (or, for a row written before migration 008, started) more
// than $1 seconds ago, and have no live lease: their
// event was lost (dead-lettered while the function was down), or their
// owner died and the broker stopped redelivering. Rows another sweep holds
// are skipped.
const staleJobsSQL = `
select j.id, coalesce(j.snapshot_id, ''), coalesce(j.target_session_id, ''), coalesce(j.user_id, '')
from snapshot_restore_jobs j
where j.status in ('pending', 'in_progress')
  and coalesce(j.updated_at, j.started_at) < localtimestamp - make_interval(secs => $1)
  and not exists (select 1 from job_leases l where l.name = 'restore:' || j.id and l.lease_until > now())
order by coalesce(j.updated_at, j.started_at)
limit 50
for update of j skip locked`

// touchJobSQL restarts a stale job's clock, so it is asked again only after
// another quiet interval. StreamSpace's started_at is left as it is.
const touchJobSQL = `update snapshot_restore_jobs set updated_at = localtimestamp where id = $1`

// staleJob is a job a sweep asks for again.
type staleJob struct {
	ID, SnapshotID, TargetSessionID, UserID string
}

func staleJobs(ctx context.Context, q querier, after time.Duration) ([]staleJob, error) {
	rows, err := q.Query(ctx, staleJobsSQL, after.Seconds())
	if err != nil {
		return nil, db.Classify(fmt.Errorf("stale restore jobs: %w", err))
	}
	defer rows.Close()
	var out []staleJob
	for rows.Next() {
		var j staleJob
		if err := rows.Scan(&j.ID, &j.SnapshotID, &j.TargetSessionID, &j.UserID); err != nil {
			return nil, fmt.Errorf("stale restore jobs: %w", err)
		}
		out = append(out, j)
	}
	if err := rows.Err(); err != nil {
		return nil, db.Classify(fmt.Errorf("stale restore jobs: %w", err))
	}
	return out, nil
}
