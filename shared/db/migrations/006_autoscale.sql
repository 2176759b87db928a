-- The autoscale function's state (docs/autoscale.md, docs/data.md). It uses
-- StreamSpace's autoscaling_policies and scaling_events as they are, adds two
-- columns StreamSpace's scaling_events lacks, and keeps what StreamSpace has
-- no place for in two tables of its own. No foreign key points at
-- StreamSpace's tables: one would install triggers on them. Rows of a deleted
-- policy are removed in the transaction that deletes it, and swept on the
-- tick. There is no down section.

-- Why a scaling attempt failed (StreamSpace's own handler wrote this column,
-- which its schema never created), and the id of the autoscale.scaled or
-- autoscale.failed event that reported the row.
alter table scaling_events add column if not exists error_message text;
alter table scaling_events add column if not exists decision_id uuid;

-- Per policy: the refusal in force (a missing target, another scaler, ...),
-- since when, and when the function last changed the replica count (the
-- cooldown runs from it). conflict is null while the policy can act. A
-- refusal leaves a scaling_events row and an autoscale.failed event when it
-- starts or changes, not on every tick while it lasts; this row is how the
-- next tick knows.
create table if not exists autoscale_policy_state (
    policy_id      integer primary key,
    conflict       text,
    conflict_since timestamptz,
    last_change_at timestamptz,
    updated_at     timestamptz not null default now()
);

-- The recommendation history the stabilization windows read (the HPA keeps
-- it in memory; this function scales to zero, so it lives here). Rows older
-- than the longest window (one hour) are pruned on the tick.
create table if not exists autoscale_recommendations (
    policy_id   integer not null,
    replicas    integer not null,
    at          timestamptz not null
);

create index if not exists autoscale_recommendations_policy_at_idx on autoscale_recommendations (policy_id, at);

-- The history route reads a policy's newest events first.
create index if not exists scaling_events_policy_created_idx on scaling_events (policy_id, created_at desc, id desc);
