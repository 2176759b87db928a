-- Retention of template versions (functions/versioning/retention.go).
--
-- After each new version one statement deletes what retention lets go: the
-- versions outside a template's newest N that carry no user tag and are not
-- recent auto-backups. Tagged versions are kept forever, so on a template
-- with a long tagged history that delete would visit every tagged row
-- outside the window on every create. This index holds only the versions
-- that can ever be pruned (no tag, or only the auto-backup marker), so the
-- delete visits those alone. Its predicate is repeated word for word in the
-- delete, which is what lets the planner use it.
create index template_versions_prunable_idx
    on template_versions (template_id, version_number)
    where tags <@ '{auto-backup}'::text[];

---- create above / drop below ----

drop index template_versions_prunable_idx;
