-- Generates $1 catalog_templates rows whose tags follow a Zipf-like
-- distribution, for the popular-tags benchmarks.
--
-- Tag ranks are drawn log-uniformly from 1..2000 (exp(U * ln 2001)), the
-- continuous form of Zipf's law with s = 1: tag-1 is the most common, and
-- frequency falls off as 1/rank. Categories are drawn the same way from 20.
-- Each template carries 1 to 6 tags; a few rows hold the odd shapes older
-- installs have (null, empty array, an object, numbers in the array).
insert into catalog_templates (id, name, category, tags)
select
	'bench-' || g,
	'Template ' || g,
	'category-' || floor(exp(random() * ln(21)))::int,
	case
		when g % 997 = 0 then null
		when g % 991 = 0 then '[]'::jsonb
		when g % 983 = 0 then '{"tag-1": true}'::jsonb
		when g % 977 = 0 then jsonb_build_array(7, 'tag-1', null)
		else (
			select jsonb_agg('tag-' || floor(exp(random() * ln(2001)))::int)
			from generate_series(1, 1 + (g % 6)) as n
		)
	end
from generate_series(1, $1::int) as g;
