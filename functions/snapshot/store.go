package function

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/errs"
)

// The metadata keys the function writes into session_snapshots.metadata
// beside the client's own (which may not use them): the stored archive's
// record, and the failed stage.
const (
	archiveKey = "archive"
	failureKey = "failure"
)

// Snapshot is a row of StreamSpace's session_snapshots, in the JSON shape
// of StreamSpace's snapshot handler.
type Snapshot struct {
	ID           string          `json:"id"`
	SessionID    string          `json:"sessionId"`
	UserID       string          `json:"userId"`
	Name         string          `json:"name"`
	Description  string          `json:"description,omitempty"`
	Type         Type            `json:"type"`
	Status       Status          `json:"status"`
	StoragePath  string          `json:"storagePath,omitempty"`
	SizeBytes    int64           `json:"sizeBytes"`
	Metadata     json.RawMessage `json:"metadata,omitempty"`
	CreatedAt    time.Time       `json:"createdAt"`
	CompletedAt  *time.Time      `json:"completedAt,omitempty"`
	ExpiresAt    *time.Time      `json:"expiresAt,omitempty"`
	ErrorMessage string          `json:"errorMessage,omitempty"`
}

// snapshotColumns are the columns Snapshot scans, from session_snapshots s.
// StreamSpace's columns are nullable; a NULL reads as empty.
const snapshotColumns = `s.id, coalesce(s.session_id, ''), coalesce(s.user_id, ''), s.name,
	coalesce(s.description, ''), coalesce(s.type, 'manual'), coalesce(s.status, 'creating'),
	coalesce(s.storage_path, ''), coalesce(s.size_bytes, 0), coalesce(s.metadata, '{}'),
	coalesce(s.created_at, localtimestamp), s.completed_at, s.expires_at, coalesce(s.error_message, '')`

func scanSnapshot(row pgx.Row) (Snapshot, error) {
	var s Snapshot
	var meta []byte
	err := row.Scan(&s.ID, &s.SessionID, &s.UserID, &s.Name, &s.Description, &s.Type, &s.Status,
		&s.StoragePath, &s.SizeBytes, &meta, &s.CreatedAt, &s.CompletedAt, &s.ExpiresAt, &s.ErrorMessage)
	s.Metadata = meta
	return s, err
}

// Session is the part of StreamSpace's sessions row the function uses.
type Session struct {
	ID, UserID, State, Namespace string
	Config                       SnapshotConfig
}

// sessionSQL reads a session; session() adds "for no key update" when a
// snapshot of it is being created or its config set, so its state cannot
// change under the check.
const sessionSQL = `
	select id, coalesce(user_id, ''), coalesce(state, ''), coalesce(namespace, ''), snapshot_config
	from sessions where id = $1`

// session loads session id for who: errs.NotFound when it does not exist
// or who may not see it (allowed).
func session(ctx context.Context, tx pgx.Tx, who authn.Identity, id string, lock bool) (Session, error) {
	q := sessionSQL
	if lock {
		q += ` for no key update`
	}
	var s Session
	var raw []byte
	err := tx.QueryRow(ctx, q, id).Scan(&s.ID, &s.UserID, &s.State, &s.Namespace, &raw)
	if errors.Is(err, pgx.ErrNoRows) || (err == nil && !allowed(who, s.UserID)) {
		return Session{}, errs.E(errs.NotFound, "session %s not found", id)
	}
	if err != nil {
		return Session{}, db.Classify(fmt.Errorf("load session %s: %w", id, err))
	}
	s.Config = readConfig(raw)
	return s, nil
}

// allowed is the access rule: a session's snapshots are its owner's
// (sessions.user_id), and admins may act on every session's. Anyone else is
// told the session does not exist.
func allowed(who authn.Identity, owner string) bool {
	return who.Role == authn.Admin || (owner != "" && who.Subject == owner)
}

// runningState is sessions.state of a session whose pod runs.
const runningState = "running"

// quotaLockSQL serialises the snapshots one user creates: a
// transaction-level advisory lock, which PgBouncer's transaction mode
// allows.
const quotaLockSQL = `select pg_advisory_xact_lock(hashtextextended('snapshot-quota:' || $1, 0))`

// quotaSQL counts what the quota counts: the user's snapshots not deleted
// or failed, and the bytes they store. Pre-restore backups count toward the
// bytes, which they really occupy, but not toward the count: a restore must
// not use up a snapshot the user meant to take (docs/snapshots.md).
const quotaSQL = `
	select count(*) filter (where coalesce(type, 'manual') <> 'pre-restore'), coalesce(sum(size_bytes), 0)
	from session_snapshots
	where user_id = $1 and status not in ('deleted', 'failed')`

// Quota is the per-user limit on snapshots.
type Quota struct {
	Count int64
	Bytes int64
}

// checkQuota refuses a new snapshot of user's beyond q with errs.Conflict.
// It runs in the creating transaction, after quotaLockSQL.
func checkQuota(ctx context.Context, tx pgx.Tx, user string, q Quota) error {
	if _, err := tx.Exec(ctx, quotaLockSQL, user); err != nil {
		return db.Classify(fmt.Errorf("lock quota of %s: %w", user, err))
	}
	var n, bytes int64
	if err := tx.QueryRow(ctx, quotaSQL, user).Scan(&n, &bytes); err != nil {
		return db.Classify(fmt.Errorf("count snapshots of %s: %w", user, err))
	}
	if n >= q.Count {
		return errs.E(errs.Conflict, "snapshot quota reached: %d snapshots of at most %d; delete one first", n, q.Count)
	}
	if bytes >= q.Bytes {
		return errs.E(errs.Conflict, "snapshot quota reached: %d bytes stored of at most %d; delete a snapshot first", bytes, q.Bytes)
	}
	return nil
}

// insertSQL creates a snapshot row, creating, with its storage path set.
// $1 id, $2 session, $3 user, $4 name, $5 description, $6 type, $7 path,
// $8 metadata, $9 lifetime in seconds or null.
const insertSQL = `
	insert into session_snapshots
		(id, session_id, user_id, name, description, type, status, storage_path, metadata, expires_at)
	values ($1, $2, $3, $4, nullif($5, ''), $6, 'creating', $7, $8::jsonb,
		localtimestamp + make_interval(secs => $9::double precision))
	returning created_at, expires_at`

func insertSnapshot(ctx context.Context, tx pgx.Tx, s *Snapshot, in CreateInput) error {
	var life *float64
	if in.ExpiresIn > 0 {
		v := in.ExpiresIn.Seconds()
		life = &v
	}
	err := tx.QueryRow(ctx, insertSQL, s.ID, s.SessionID, s.UserID, s.Name, s.Description, string(s.Type), s.StoragePath, in.Metadata, life).
		Scan(&s.CreatedAt, &s.ExpiresAt)
	if err != nil {
		return db.Classify(fmt.Errorf("insert snapshot: %w", err))
	}
	s.Status = Creating
	s.Metadata = in.Metadata
	return nil
}

// getSQL reads one snapshot of a session.
const getSQL = `select ` + snapshotColumns + ` from session_snapshots s where s.id = $1 and s.session_id = $2`

func getSnapshot(ctx context.Context, tx pgx.Tx, session, id string, lock bool) (Snapshot, error) {
	q := getSQL
	if lock {
		// The lock the status update takes itself: a restore's claim
		// (an update) still waits for it, and a foreign-key check of a
		// row that references the snapshot does not.
		q += ` for no key update`
	}
	s, err := scanSnapshot(tx.QueryRow(ctx, q, id, session))
	if errors.Is(err, pgx.ErrNoRows) {
		return Snapshot{}, errs.E(errs.NotFound, "snapshot %s not found", id)
	}
	if err != nil {
		return Snapshot{}, db.Classify(fmt.Errorf("load snapshot %s: %w", id, err))
	}
	return s, nil
}

// byIDSQL reads a snapshot by id alone, for the job.
const byIDSQL = `select ` + snapshotColumns + ` from session_snapshots s where s.id = $1`

func snapshotByID(ctx context.Context, tx pgx.Tx, id string) (Snapshot, error) {
	s, err := scanSnapshot(tx.QueryRow(ctx, byIDSQL, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return Snapshot{}, errs.E(errs.NotFound, "snapshot %s not found", id)
	}
	if err != nil {
		return Snapshot{}, db.Classify(fmt.Errorf("load snapshot %s: %w", id, err))
	}
	return s, nil
}

// listSessionSQL is a page of a session's snapshots that are not deleted,
// newest first; $2 limit, $3 offset. The window count is the total.
const listSessionSQL = `
	select ` + snapshotColumns + `, count(*) over ()
	from session_snapshots s
	where s.session_id = $1 and s.status <> 'deleted'
	order by s.created_at desc, s.id
	limit $2 offset $3`

// countSessionSQL is the total of listSessionSQL alone, for a page past the
// end, which has no row to carry the window count.
const countSessionSQL = `select count(*) from session_snapshots where session_id = $1 and status <> 'deleted'`

// listUserSQL and countUserSQL are the same across the sessions of user $1.
const (
	listUserSQL = `
	select ` + snapshotColumns + `, count(*) over ()
	from session_snapshots s
	where s.user_id = $1 and s.status <> 'deleted'
	order by s.created_at desc, s.id
	limit $2 offset $3`
	countUserSQL = `select count(*) from session_snapshots where user_id = $1 and status <> 'deleted'`
)

// listQuery is a list route's SQL: a page and the total alone.
type listQuery struct{ page, count string }

var (
	listSession = listQuery{page: listSessionSQL, count: countSessionSQL}
	listUser    = listQuery{page: listUserSQL, count: countUserSQL}
)

func listSnapshots(ctx context.Context, tx pgx.Tx, q listQuery, key string, p Page) ([]Snapshot, int, error) {
	out, total, err := listPage(ctx, tx, q.page, key, p)
	if err != nil || len(out) > 0 || p.Offset() == 0 {
		return out, total, err
	}
	if err := tx.QueryRow(ctx, q.count, key).Scan(&total); err != nil {
		return nil, 0, db.Classify(fmt.Errorf("count snapshots: %w", err))
	}
	return out, total, nil
}

func listPage(ctx context.Context, tx pgx.Tx, query, key string, p Page) ([]Snapshot, int, error) {
	rows, err := tx.Query(ctx, query, key, p.Limit, p.Offset())
	if err != nil {
		return nil, 0, db.Classify(fmt.Errorf("list snapshots: %w", err))
	}
	defer rows.Close()
	out := []Snapshot{}
	total := 0
	for rows.Next() {
		var s Snapshot
		var meta []byte
		if err := rows.Scan(&s.ID, &s.SessionID, &s.UserID, &s.Name, &s.Description, &s.Type, &s.Status,
			&s.StoragePath, &s.SizeBytes, &meta, &s.CreatedAt, &s.CompletedAt, &s.ExpiresAt, &s.ErrorMessage, &total); err != nil {
			return nil, 0, db.Classify(fmt.Errorf("list snapshots: %w", err))
		}
		s.Metadata = meta
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		return nil, 0, db.Classify(fmt.Errorf("list snapshots: %w", err))
	}
	return out, total, nil
}

// Stats is the answer of GET /snapshots/stats, StreamSpace's shape.
type Stats struct {
	TotalSnapshots     int64   `json:"totalSnapshots"`
	AvailableSnapshots int64   `json:"availableSnapshots"`
	TotalSizeBytes     int64   `json:"totalSizeBytes"`
	TotalSizeGB        float64 `json:"totalSizeGB"`
}

const statsSQL = `
	select count(*), count(*) filter (where status = 'available'), coalesce(sum(size_bytes), 0)
	from session_snapshots
	where user_id = $1 and status <> 'deleted'`

func stats(ctx context.Context, tx pgx.Tx, user string) (Stats, error) {
	var st Stats
	if err := tx.QueryRow(ctx, statsSQL, user).Scan(&st.TotalSnapshots, &st.AvailableSnapshots, &st.TotalSizeBytes); err != nil {
		return st, db.Classify(fmt.Errorf("snapshot stats: %w", err))
	}
	st.TotalSizeGB = float64(st.TotalSizeBytes) / (1 << 30)
	return st, nil
}

// markDeletedSQL marks a snapshot deleted; its objects are removed after
// the commit (and by the retention sweep, should that fail).
const markDeletedSQL = `
	update session_snapshots set status = 'deleted', updated_at = localtimestamp
	where id = $1`

// setConfigSQL stores a session's snapshot config.
const setConfigSQL = `update sessions set snapshot_config = $2::jsonb where id = $1`

// leaseHeldSQL checks, and holds until commit, that owner still holds the
// job's lease: a job that lost it must not write its outcome.
const leaseHeldSQL = `
	select 1 from job_leases where name = $1 and owner = $2 and lease_until > now() for update`

// completeSQL records a stored archive: available, its size, the archive's
// record under metadata.archive, completed. Only a creating row changes; a
// snapshot deleted meanwhile stays deleted.
const completeSQL = `
	update session_snapshots
	set status = 'available', size_bytes = $2, completed_at = localtimestamp, updated_at = localtimestamp,
		error_message = null,
		metadata = coalesce(metadata, '{}') || jsonb_build_object('archive', $3::jsonb)
	where id = $1 and status = 'creating'`

// failSQL records a failed snapshot: failed, the message, and the stage
// under metadata.failure. Only a creating row changes.
const failSQL = `
	update session_snapshots
	set status = 'failed', error_message = $2, completed_at = localtimestamp, updated_at = localtimestamp,
		metadata = coalesce(metadata, '{}') || jsonb_build_object('failure', $3::jsonb)
	where id = $1 and status = 'creating'`

// jobSession loads the session a job snapshots, whoever asked for it.
func jobSession(ctx context.Context, tx pgx.Tx, id string) (Session, error) {
	var s Session
	var raw []byte
	err := tx.QueryRow(ctx, sessionSQL, id).Scan(&s.ID, &s.UserID, &s.State, &s.Namespace, &raw)
	if errors.Is(err, pgx.ErrNoRows) {
		return Session{}, errs.E(errs.NotFound, "session %s not found", id)
	}
	if err != nil {
		return Session{}, db.Classify(fmt.Errorf("load session %s: %w", id, err))
	}
	s.Config = readConfig(raw)
	return s, nil
}

// retentionSQL finds, for the daily retention tick, the snapshots to
// delete and why (as docs/snapshots.md states the rules):
//
//   - expired: expires_at has passed;
//   - maxSnapshots: an available manual or automatic snapshot beyond the
//     session's newest retention.maxSnapshots available ones of those two
//     types: a pre-restore backup, which the user did not ask for, never
//     pushes out one they did;
//   - retentionDays: an automatic snapshot older than retention.retentionDays
//     while retention.deleteExpiredAuto is on, a pre-restore backup older
//     than that (it has no expiry of its own), or a failed one of any type
//     older than that (it has no objects; only its row is kept for a while).
//
// A pre-restore backup is kept whatever the rules while its restore may
// still need it to roll back, and after a rollback that failed
// (backupInUse).
//
// A session's config is read key by key with its default where a key is
// missing or not of the right JSON type (StreamSpace's own API stores the
// config unchecked), and bounded as PUT bounds it. Only available and
// failed snapshots are candidates: one being created or restored is left.
const retentionSQL = `
	with cfg as (
		select se.id,
			case when jsonb_typeof(se.snapshot_config->'retention'->'maxSnapshots') = 'number'
				then least(greatest((se.snapshot_config->'retention'->>'maxSnapshots')::numeric, 1), 1000)::int
				else 10 end as max_snapshots,
			case when jsonb_typeof(se.snapshot_config->'retention'->'retentionDays') = 'number'
				then least(greatest((se.snapshot_config->'retention'->>'retentionDays')::numeric, 1), 3650)::int
				else 30 end as retention_days,
			case when jsonb_typeof(se.snapshot_config->'retention'->'deleteExpiredAuto') = 'boolean'
				then (se.snapshot_config->'retention'->>'deleteExpiredAuto')::boolean
				else true end as delete_expired_auto
		from sessions se
		where exists (select 1 from session_snapshots x where x.session_id = se.id and x.status in ('available', 'failed'))
	), typed as (
		select s.*, coalesce(s.type, 'manual') as kind,
			s.status = 'available' and coalesce(s.type, 'manual') in ('manual', 'automatic') as counted
		from session_snapshots s
		where s.status in ('available', 'failed')
	), ranked as (
		select s.id, coalesce(s.storage_path, '') as storage_path, s.kind, s.status, s.created_at, s.expires_at, s.session_id,
			case when s.counted
				then row_number() over (partition by s.session_id, s.counted order by s.created_at desc, s.id)
			end as rank
		from typed s
		where not (` + backupInUse + `)
	)
	select r.id, r.storage_path,
		case when r.expires_at < localtimestamp then 'expired'
		     when r.rank > c.max_snapshots then 'maxSnapshots'
		     else 'retentionDays' end
	from ranked r join cfg c on c.id = r.session_id
	where r.expires_at < localtimestamp
	   or r.rank > c.max_snapshots
	   or (r.created_at < localtimestamp - make_interval(days => c.retention_days)
	       and ((r.kind = 'automatic' and c.delete_expired_auto) or r.kind = 'pre-restore' or r.status = 'failed'))
	limit $1`

// backupInUse is the condition, on a snapshot row s, that it is a
// pre-restore backup its restore may still roll back to, or one that holds
// the only copy of a home a rollback failed to put back: one younger than a
// day (far beyond RESTORE_JOB_TIMEOUT), one of a session a restore into
// which is pending or in progress, or the backup of a job whose rollback
// failed (snapshot_restore_jobs.backup_snapshot_id and rollback_failed,
// migration 008), which only a person deletes.
const backupInUse = `coalesce(s.type, 'manual') = 'pre-restore' and (
		s.created_at > localtimestamp - interval '1 day'
		or exists (select 1 from snapshot_restore_jobs j
			where j.target_session_id = s.session_id and j.status in ('pending', 'in_progress'))
		or exists (select 1 from snapshot_restore_jobs j
			where j.backup_snapshot_id = s.id and j.rollback_failed))`

// retireSQL marks the chosen snapshots deleted, if they are still
// available or failed and not a backup in use (a restore may have started
// since they were chosen), and returns those it marked.
const retireSQL = `
	update session_snapshots s set status = 'deleted', updated_at = localtimestamp
	where s.id = any($1) and s.status in ('available', 'failed') and not (` + backupInUse + `)
	returning s.id, coalesce(s.storage_path, '')`

// liveSQL returns which of the ids have a row, and whether it is not
// deleted: the objects of a live row stay.
const liveSQL = `select id, status <> 'deleted' from session_snapshots where id = any($1)`

// staleSQL finds the snapshots still creating with no live lease: their
// job's instance died (or their request was lost) and nobody runs them. A
// row of StreamSpace's own (not a UUID) is only ever failed, once it is
// older than $1.
// $1 is how long a job may wait for its first delivery, $2 the age past
// which one is given up.
const staleSQL = `
	select ` + snapshotColumns + `, s.created_at < localtimestamp - make_interval(secs => $2::double precision)
	from session_snapshots s
	where s.status = 'creating'
	  and s.created_at < localtimestamp - make_interval(secs => $1::double precision)
	  and not exists (select 1 from job_leases l where l.name = 'snapshot:' || s.id and l.lease_until > now())
	order by s.created_at
	limit 100`

// scheduleLockSQL keeps two ticks (a redelivery) from scheduling at once.
const scheduleLockSQL = `select pg_advisory_xact_lock(hashtextextended('snapshot-schedule', 0))`

// dueSQL lists the running sessions with automatic snapshots on, with how
// long ago (in seconds, measured by the database so its time zone does not
// matter) their last automatic snapshot was made, and the automatic
// snapshots being created now.
const dueSQL = `
	select se.id, se.user_id, se.snapshot_config,
		(select extract(epoch from localtimestamp - max(s.created_at))::double precision
		   from session_snapshots s where s.session_id = se.id and s.type = 'automatic'),
		(select count(*) from session_snapshots s where s.status = 'creating' and s.type = 'automatic')
	from sessions se
	where se.state = 'running' and se.user_id is not null
	  and se.snapshot_config->'automaticSnapshots'->>'enabled' = 'true'
	order by se.id
	limit $1`
