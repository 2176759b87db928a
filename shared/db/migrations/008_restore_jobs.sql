-- The restore function's job state (functions/restore, docs/restore.md,
-- docs/data.md). StreamSpace's snapshot_restore_jobs records a job's status,
-- times and error message; these columns add what the job needs beside them:
-- the step it is in, the pre-restore backup it took and how a failure ended.
-- Added columns only, nullable and without default, so no row is rewritten
-- and StreamSpace's own writes never notice them; a row written before this
-- migration has them null. No foreign key, constraint or trigger; no down
-- section.

-- The job's phase: pending, vetting, backing-up, clearing, extracting,
-- verifying, rolling-back, completed or failed. The status route's progress
-- is computed from it and the status.
alter table snapshot_restore_jobs add column if not exists phase text;
-- The id of the job's pre-restore snapshot (a session_snapshots row of type
-- pre-restore), set in the transaction that creates that row. Not a foreign
-- key: StreamSpace deletes snapshots as it always did, and a job whose
-- backup is gone has nothing to roll back to.
alter table snapshot_restore_jobs add column if not exists backup_snapshot_id varchar(255);
-- For a failed job: the phase it failed in, whether /config was put back
-- from the backup, and whether putting it back failed too.
alter table snapshot_restore_jobs add column if not exists failed_phase text;
alter table snapshot_restore_jobs add column if not exists rolled_back boolean;
alter table snapshot_restore_jobs add column if not exists rollback_failed boolean;
-- When the function last changed the job: a sweep asks again for a job
-- that is pending or in progress, has no live lease and has not changed for
-- longer than a job may take.
alter table snapshot_restore_jobs add column if not exists updated_at timestamp;
