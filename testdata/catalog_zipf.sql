-- Generates $1 catalog_templates rows as StreamSpace stores them (serial
-- integer id, tags text[], no repository), for the popular-tags benchmarks.
--
-- Tag ranks are drawn log-uniformly from 1..2000 (exp(U * ln 2001)), the
-- continuous form of Zipf's law with s = 1: tag-1 is the most common, and
-- frequency falls off as 1/rank. Categories are drawn the same way from 20;
-- about 1% of rows have none. Each template carries 1 to 6 tags (a draw may
-- repeat one); a few rows hold the odd shapes a catalog sync can leave:
-- a null array, an empty one, repeats with padding, blanks and nulls.
insert into catalog_templates (name, display_name, category, tags)
select
	'bench-' || g,
	'Template ' || g,
	case when g % 101 = 0 then null else 'category-' || floor(exp(random() * ln(21)))::int end,
	case
		when g % 997 = 0 then null
		when g % 991 = 0 then '{}'::text[]
		when g % 983 = 0 then array['tag-1', 'tag-1', ' tag-1 ']
		when g % 977 = 0 then array['', '   ', null, 'tag-2']
		else array(
			select 'tag-' || floor(exp(random() * ln(2001)))::int
			from generate_series(1, 1 + (g % 6)) as n)
	end
from generate_series(1, $1::int) as g;
