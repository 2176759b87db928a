-- The versioning function's retention rule deletes, in the transaction that
-- adds a version, the old versions that carry no user tag. This partial index
-- holds exactly those rows (tags null, empty or only the auto-backup marker),
-- so the delete reads none of a template's tagged versions however many it
-- has. The predicate is the one the delete writes, word for word, so the
-- planner can match them (functions/versioning/store.go, pruneSQL).
--
-- An index only: StreamSpace's columns, rows and writes are untouched. Its
-- build holds a share lock on the table for as long as it takes, which on a
-- versions table of ordinary size is a moment. There is no down section:
-- nothing here is taken back from StreamSpace's tables.
create index if not exists user_session_template_versions_prunable_idx
    on user_session_template_versions (template_id, version_number)
    where tags is null or tags <@ '{auto-backup}'::text[];
