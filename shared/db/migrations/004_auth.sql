-- The auth function's tables (functions/auth, docs/data.md). They sit beside
-- StreamSpace's users, groups and group_memberships and only point at them by
-- id: no foreign key, so StreamSpace deletes its rows as it always did, and
-- the function treats a dangling id as gone.

-- Who a user is at an OpenID provider: (provider, sub) is stable, an email is
-- not, so a changed email never makes a second StreamSpace user.
create table if not exists auth_identities (
    provider   text not null,
    subject    text not null,
    user_id    text not null,
    email      text,
    created_at timestamptz not null default now(),
    last_login timestamptz not null default now(),
    primary key (provider, subject)
);

create index if not exists auth_identities_user_id_idx on auth_identities (user_id);

-- The StreamSpace groups a provider's group sync created. Only these groups
-- and their memberships are ever changed by a login; a local group is never
-- touched.
create table if not exists auth_provider_groups (
    group_id   text primary key,
    provider   text not null,
    idp_group  text not null,
    created_at timestamptz not null default now(),
    unique (provider, idp_group)
);

-- A login's state, once its callback used it: a second callback with the
-- same state is refused. Rows past expires_at are pruned.
create table if not exists auth_login_states (
    state_hash bytea primary key,
    expires_at timestamptz not null
);

create index if not exists auth_login_states_expires_at_idx on auth_login_states (expires_at);
