-- The mailtest function's health record of an email integration (a row of
-- StreamSpace's integrations with type 'email'): the result of the last
-- periodic connection check. StreamSpace's own last_test_at and
-- last_success_at keep recording tests. Added columns only, nullable, with
-- no default, so no row is rewritten and StreamSpace's writes never notice
-- them; no down section.

-- healthy or unhealthy; null until the first check.
alter table integrations add column if not exists health_status varchar(16);
-- When the last check ran.
alter table integrations add column if not exists health_checked_at timestamp;
-- The last failed check's stable error class (docs/mail.md) and its one-line
-- description; null after a check that passed.
alter table integrations add column if not exists health_error_class varchar(64);
alter table integrations add column if not exists health_error text;
