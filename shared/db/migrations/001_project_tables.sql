-- The tables this project owns. StreamSpace's own tables are never created
-- here: Migrate refuses a database that lacks them (docs/data.md).

-- The idempotency record: a handler inserts its row in the same transaction
-- as its effect, so both commit or neither does. Rows older than
-- PROCESSED_EVENTS_RETENTION are pruned, found through the processed_at index.
create table if not exists processed_events (
    source       text not null,
    id           text not null,
    function     text not null,
    processed_at timestamptz not null default now(),
    primary key (source, id, function)
);

create index if not exists processed_events_processed_at_idx on processed_events (processed_at);

-- Leases for long jobs. lease_until is compared with the database clock only,
-- so skew between pods does not matter.
create table if not exists job_leases (
    name         text primary key,
    owner        text not null,
    lease_until  timestamptz not null,
    heartbeat_at timestamptz not null,
    created_at   timestamptz not null default now()
);

-- Events are written here in the transaction of the change they report and
-- sent to K_SINK afterwards; a sent event's row is deleted.
create table if not exists event_outbox (
    id              uuid primary key,
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

create index if not exists event_outbox_next_attempt_at_idx on event_outbox (next_attempt_at);

-- Events the sink refused for good (a permanent 4xx) or past the attempt
-- limit, moved out of the outbox so they stop being retried; kept for an
-- operator to read and, if wanted, re-queue.
create table if not exists event_dead_letters (
    id         uuid primary key,
    function   text not null,
    event      jsonb not null,
    attempts   integer not null check (attempts >= 0),
    last_error text not null,
    queued_at  timestamptz not null,
    dead_at    timestamptz not null default now()
);

create index if not exists event_dead_letters_dead_at_idx on event_dead_letters (dead_at);

---- create above / drop below ----

drop table if exists event_dead_letters;
drop table if exists event_outbox;
drop table if exists job_leases;
drop table if exists processed_events;
