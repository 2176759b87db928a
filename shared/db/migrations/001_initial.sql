-- The schema every function shares.
--
-- User ids are the subject of a verified token. They carry no foreign key to
-- users, because a subject may act before anything has recorded it there;
-- team membership is the exception, as it is managed explicitly.
-- Free-text columns are not null with a default of '' so readers never need
-- to tell "empty" from "absent".

create table users (
    id           text primary key,
    username     text not null unique,
    email        text,
    display_name text not null default '',
    role         text not null default 'user' check (role in ('admin', 'operator', 'user')),
    created_at   timestamptz not null default now(),
    updated_at   timestamptz not null default now()
);

create table teams (
    id          text primary key,
    name        text not null unique,
    description text not null default '',
    created_at  timestamptz not null default now()
);

create table team_members (
    team_id    text not null references teams (id) on delete cascade,
    user_id    text not null references users (id) on delete cascade,
    role       text not null default 'member' check (role in ('owner', 'admin', 'member', 'viewer')),
    created_at timestamptz not null default now(),
    primary key (team_id, user_id)
);

-- "Which teams is this user in?" is asked on every share check.
create index team_members_user_id_idx on team_members (user_id);

-- The state belongs to the session controller, so it is not constrained here.
create table sessions (
    id          text primary key,
    user_id     text not null,
    template_id text,
    state       text not null default 'pending',
    -- Elements are validated strings (the tags function is the only
    -- writer); a per-row jsonpath check here cost 20% of a batch update.
    tags        jsonb not null default '[]'
                check (jsonb_typeof(tags) = 'array'),
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now()
) with (fillfactor = 80); -- room on each page for HOT updates of tags and state

create index sessions_user_id_idx on sessions (user_id);

-- tags is unconstrained: rows synced from older installs may hold any JSON,
-- and readers skip what is not an array of strings.
create table catalog_templates (
    id          text primary key,
    name        text not null,
    description text not null default '',
    category    text,
    tags        jsonb,
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now()
);

create index catalog_templates_tags_idx on catalog_templates using gin (tags);
create index catalog_templates_category_idx on catalog_templates (category);

create table user_session_templates (
    id          text primary key,
    user_id     text not null,
    name        text not null,
    description text not null default '',
    category    text,
    config      jsonb not null default '{}' check (jsonb_typeof(config) = 'object'),
    -- Elements are validated strings (the tags function is the only
    -- writer); a per-row jsonpath check here cost 20% of a batch update.
    tags        jsonb not null default '[]'
                check (jsonb_typeof(tags) = 'array'),
    created_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now()
) with (fillfactor = 80); -- room on each page for HOT updates of tags and state

create index user_session_templates_user_id_idx on user_session_templates (user_id);

-- A share is revoked, not deleted, so the history stays; at most one share per
-- grantee and template is active at a time.
create table template_shares (
    id                  bigserial primary key,
    template_id         text not null references user_session_templates (id) on delete cascade,
    shared_by           text not null,
    shared_with_user_id text,
    shared_with_team_id text references teams (id) on delete cascade,
    permission_level    text not null default 'read' check (permission_level in ('read', 'write', 'manage')),
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now(),
    revoked_at          timestamptz,
    revoked_by          text,
    check (num_nonnulls(shared_with_user_id, shared_with_team_id) = 1),
    check (revoked_by is null or revoked_at is not null)
);

create unique index template_shares_active_user_idx
    on template_shares (template_id, shared_with_user_id) where revoked_at is null;
create unique index template_shares_active_team_idx
    on template_shares (template_id, shared_with_team_id) where revoked_at is null;
-- Full (not partial) indexes: they serve the cascades as well as the
-- "shared with me" and "all shares of this template" lookups.
create index template_shares_template_id_idx on template_shares (template_id);
create index template_shares_user_idx on template_shares (shared_with_user_id);
create index template_shares_team_idx on template_shares (shared_with_team_id);

create table template_versions (
    id             bigserial primary key,
    template_id    text not null,
    version_number integer not null check (version_number > 0),
    template_data  jsonb not null check (jsonb_typeof(template_data) = 'object'),
    description    text not null default '',
    created_by     text not null,
    created_at     timestamptz not null default now(),
    tags           text[] not null default '{}' check (array_position(tags, null) is null),
    restored_from  integer check (restored_from > 0),
    unique (template_id, version_number)
);

create table notifications (
    id         bigserial primary key,
    user_id    text not null,
    kind       text not null,
    title      text not null,
    message    text not null default '',
    data       jsonb not null default '{}',
    read_at    timestamptz,
    created_at timestamptz not null default now()
);

create index notifications_user_id_created_at_idx on notifications (user_id, created_at desc);

create table audit_log (
    id            bigserial primary key,
    actor         text not null,
    action        text not null,
    resource_type text not null,
    resource_id   text not null,
    details       jsonb not null default '{}',
    created_at    timestamptz not null default now()
);

-- The history of one resource, newest first.
create index audit_log_resource_idx on audit_log (resource_type, resource_id, created_at desc);

create table batch_operations (
    id             uuid primary key default gen_random_uuid(),
    user_id        text not null,
    operation_type text not null,
    resource_type  text not null,
    status         text not null default 'pending'
                   check (status in ('pending', 'running', 'completed', 'partial', 'failed')),
    total_items    integer not null default 0 check (total_items >= 0),
    success_count  integer not null default 0 check (success_count >= 0),
    failure_count  integer not null default 0 check (failure_count >= 0),
    results        jsonb,
    error          text,
    created_at     timestamptz not null default now(),
    completed_at   timestamptz,
    check (success_count + failure_count <= total_items)
);

create index batch_operations_user_id_created_at_idx on batch_operations (user_id, created_at desc);

-- The idempotency record: a handler inserts its row in the same transaction
-- as its effect, so both commit or neither does.
create table processed_events (
    source       text not null,
    id           text not null,
    function     text not null,
    processed_at timestamptz not null default now(),
    primary key (source, id, function)
);

-- Leases for long jobs. lease_until is compared with the database clock only,
-- so skew between pods does not matter.
create table job_leases (
    name         text primary key,
    owner        text not null,
    lease_until  timestamptz not null,
    heartbeat_at timestamptz not null,
    created_at   timestamptz not null default now()
);

-- Events emitted from REST routes are written here in the route's transaction
-- and sent to K_SINK afterwards; a sent event's row is deleted.
create table event_outbox (
    id              uuid primary key default gen_random_uuid(),
    function        text not null,
    event           jsonb not null
                    check (jsonb_typeof(event) = 'object'
                           and event ? 'specversion' and event ? 'id'
                           and event ? 'source' and event ? 'type'),
    created_at      timestamptz not null default now(),
    attempts        integer not null default 0 check (attempts >= 0),
    last_error      text,
    next_attempt_at timestamptz not null default now()
);

create index event_outbox_next_attempt_at_idx on event_outbox (next_attempt_at);

---- create above / drop below ----

drop table event_outbox;
drop table job_leases;
drop table processed_events;
drop table batch_operations;
drop table audit_log;
drop table notifications;
drop table template_versions;
drop table template_shares;
drop table user_session_templates;
drop table catalog_templates;
drop table sessions;
drop table team_members;
drop table teams;
drop table users;
