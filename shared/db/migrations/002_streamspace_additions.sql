-- What the functions add to StreamSpace's tables: columns with
-- `add column if not exists` and a materialized view, nothing else. No
-- StreamSpace row, column type or trigger is changed, so StreamSpace's own
-- writes never fail or wait because of us (docs/data.md). There is no down
-- section: nothing here is ever taken back from StreamSpace's tables.

-- Session tags for batch tag operations: a JSON array of strings, as
-- StreamSpace's batch handler wrote them. A column added with a constant
-- default rewrites no row.
alter table sessions add column if not exists tags jsonb not null default '[]';

-- The version a restore's auto-backup was made for.
alter table user_session_template_versions add column if not exists restored_from integer;

-- Popular catalog tags: how many catalog templates carry each tag, per
-- category ('' for none). catalog_templates.tags is StreamSpace's text[]; a
-- template counts once per distinct tag, trimmed of spaces, tabs and line
-- breaks; a blank one is no tag. The tags function
-- refreshes it concurrently (readers never wait) on template.updated, on the
-- tags-refresh PingSource and when it is older than TAGS_MAX_STALENESS.
create materialized view if not exists catalog_tag_counts as
    select coalesce(t.category, '') as category, g.tag, count(*) as templates
    from catalog_templates t
    cross join lateral (select distinct btrim(x, E' \t\r\n') as tag from unnest(t.tags) as x) as g
    where g.tag <> ''
    group by 1, 2
with data;

-- refresh ... concurrently needs a unique index over every row.
create unique index if not exists catalog_tag_counts_key on catalog_tag_counts (category, tag);
create index if not exists catalog_tag_counts_rank_idx on catalog_tag_counts (category, templates desc, tag);
