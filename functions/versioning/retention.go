package function

// pruneSQL deletes, in one statement, the versions of template $1 that
// retention lets go: those older than the $2 newest that carry no user tag
// (tags is empty or only the auto-backup marker) and are not auto-backups
// younger than $3. The subquery finds the newest version outside the kept
// window; with $2 or fewer versions it is null and nothing is deleted.
//
// The tag condition is written as literally as the partial index
// template_versions_prunable_idx (migration 003) declares it, so the delete
// reads only prunable rows however many tagged ones a template has; the
// literal is AutoBackupTag.
const pruneSQL = `
	delete from template_versions v
	where v.template_id = $1
	  and v.version_number <= (
		select version_number from template_versions
		where template_id = $1
		order by version_number desc
		offset $2 limit 1)
	  and v.tags <@ '{auto-backup}'::text[]
	  and not ('auto-backup' = any (v.tags) and v.created_at > now() - $3::interval)`
