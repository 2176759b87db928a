-- Popular catalog tags, kept exact by triggers.
--
-- Counting tags by scanning catalog_templates took over a second for 100,000
-- templates; this table holds, per category, how many templates carry each
-- tag, and statement-level triggers with transition tables keep it in the
-- same transaction as every insert, update, delete and truncate. The popular
-- tags query then reads a few thousand rows instead of every template.
--
-- A template counts once per distinct tag. Non-array tags, non-string
-- elements and blank strings are not tags: older installs hold such rows,
-- and they are skipped rather than failing a write.

create function catalog_template_tags(tags jsonb) returns setof text
language sql immutable parallel safe as $$
    select distinct e #>> '{}'
    from jsonb_array_elements(case when jsonb_typeof(tags) = 'array' then tags else '[]'::jsonb end) as e
    where jsonb_typeof(e) = 'string' and btrim(e #>> '{}') <> ''
$$;

create table catalog_tag_counts (
    category  text not null, -- '' for templates without a category
    tag       text not null,
    templates bigint not null check (templates >= 0),
    primary key (category, tag)
);

create index catalog_tag_counts_rank_idx on catalog_tag_counts (category, templates desc, tag);
-- Rows that fell to zero, found without a scan and deleted right away.
create index catalog_tag_counts_zero_idx on catalog_tag_counts (category, tag) where templates = 0;

-- Each trigger applies the net change of its statement. Writers of the
-- counts take one transaction-scoped advisory lock first: catalog writes are
-- rare admin and sync operations, and serialising their count updates is
-- what keeps two writers that touch the same tags in different orders from
-- deadlocking. 7370 is this table's lock key.
create function catalog_tag_counts_on_insert() returns trigger
language plpgsql as $$
begin
    perform pg_advisory_xact_lock(7370);
    insert into catalog_tag_counts as c (category, tag, templates)
    select coalesce(n.category, ''), t.tag, count(*)
    from new_rows n cross join lateral catalog_template_tags(n.tags) as t(tag)
    group by 1, 2
    order by 1, 2
    on conflict (category, tag) do update set templates = c.templates + excluded.templates;
    return null;
end $$;

create function catalog_tag_counts_on_update() returns trigger
language plpgsql as $$
begin
    perform pg_advisory_xact_lock(7370);
    -- Only the net change per (category, tag) is written: rows whose tags
    -- and category did not change cancel out. Decreases and increases touch
    -- disjoint keys, so one statement applies both; a decrease always meets
    -- an existing row, since old rows carried the tag.
    with delta as (
        select category, tag, sum(d)::bigint as d from (
            select coalesce(n.category, '') as category, t.tag, 1 as d
            from new_rows n cross join lateral catalog_template_tags(n.tags) as t(tag)
            union all
            select coalesce(o.category, ''), t.tag, -1
            from old_rows o cross join lateral catalog_template_tags(o.tags) as t(tag)
        ) as x
        group by 1, 2
        having sum(d) <> 0
    ), decreased as (
        update catalog_tag_counts as c
        set templates = c.templates + delta.d
        from delta
        where delta.d < 0 and c.category = delta.category and c.tag = delta.tag
    )
    insert into catalog_tag_counts as c (category, tag, templates)
    select category, tag, d from delta where d > 0
    order by 1, 2
    on conflict (category, tag) do update set templates = c.templates + excluded.templates;
    delete from catalog_tag_counts where templates = 0;
    return null;
end $$;

create function catalog_tag_counts_on_delete() returns trigger
language plpgsql as $$
begin
    perform pg_advisory_xact_lock(7370);
    update catalog_tag_counts as c
    set templates = c.templates - g.n
    from (
        select coalesce(o.category, '') as category, t.tag, count(*) as n
        from old_rows o cross join lateral catalog_template_tags(o.tags) as t(tag)
        group by 1, 2
    ) as g
    where c.category = g.category and c.tag = g.tag;
    delete from catalog_tag_counts where templates = 0;
    return null;
end $$;

create function catalog_tag_counts_on_truncate() returns trigger
language plpgsql as $$
begin
    perform pg_advisory_xact_lock(7370);
    delete from catalog_tag_counts;
    return null;
end $$;

create trigger catalog_tag_counts_insert after insert on catalog_templates
    referencing new table as new_rows
    for each statement execute function catalog_tag_counts_on_insert();
create trigger catalog_tag_counts_update after update on catalog_templates
    referencing old table as old_rows new table as new_rows
    for each statement execute function catalog_tag_counts_on_update();
create trigger catalog_tag_counts_delete after delete on catalog_templates
    referencing old table as old_rows
    for each statement execute function catalog_tag_counts_on_delete();
create trigger catalog_tag_counts_truncate after truncate on catalog_templates
    for each statement execute function catalog_tag_counts_on_truncate();

insert into catalog_tag_counts (category, tag, templates)
select coalesce(c.category, ''), t.tag, count(*)
from catalog_templates c cross join lateral catalog_template_tags(c.tags) as t(tag)
group by 1, 2;

---- create above / drop below ----

drop trigger catalog_tag_counts_truncate on catalog_templates;
drop trigger catalog_tag_counts_delete on catalog_templates;
drop trigger catalog_tag_counts_update on catalog_templates;
drop trigger catalog_tag_counts_insert on catalog_templates;
drop function catalog_tag_counts_on_truncate();
drop function catalog_tag_counts_on_delete();
drop function catalog_tag_counts_on_update();
drop function catalog_tag_counts_on_insert();
drop table catalog_tag_counts;
drop function catalog_template_tags(jsonb);
