-- The mailtest function's record of the env integration (docs/mail.md): the
-- email integration built from the SMTP_* variables, which has no row in
-- StreamSpace's integrations table. It keeps what 005's columns and
-- StreamSpace's last_test_at and last_success_at keep for a row, so every
-- instance, and one started after a scale to zero, sees the same test times
-- and reports a change of health once. One row, id 'env', written on the
-- first test or health check. The project's own table: it points at no
-- StreamSpace table.
create table if not exists mailtest_env_integration (
    id                 text primary key,
    -- When the last test ran, and the last one that succeeded.
    last_test_at       timestamptz,
    last_success_at    timestamptz,
    -- healthy or unhealthy; null until the first periodic check.
    health_status      varchar(16),
    -- When the last check ran.
    health_checked_at  timestamptz,
    -- The last failed check's stable error class and its one-line
    -- description; null after a check that passed.
    health_error_class varchar(64),
    health_error       text
);
