package function

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/streamspace-dev/functions/shared/access"
	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/errs"
)

// Version is one row of StreamSpace's user_session_template_versions, in the
// JSON shape of StreamSpace's own TemplateSnapshot (its handlers'
// sessiontemplates.go), plus restoredFrom. A NULL description, tags or
// created_by reads as empty.
type Version struct {
	ID          int       `json:"id"`
	TemplateID  string    `json:"templateId"`
	Number      int       `json:"versionNumber"`
	Description string    `json:"description"`
	Tags        []string  `json:"tags"`
	CreatedBy   string    `json:"createdBy"`
	CreatedAt   time.Time `json:"createdAt"`
	// RestoredFrom is set on the auto-backup a restore made: the version that
	// restore brought back.
	RestoredFrom *int `json:"restoredFrom,omitempty"`
	// Data is the template's content as the version saved it (snapshotSQL).
	Data json.RawMessage `json:"templateData"`
}

// Rules is the retention rule and the cap applied whenever a version is
// added (see Config).
type Rules struct {
	Retention       int
	BackupRetention time.Duration
	Limit           int
}

// snapshotSQL is a template row t's content as a version's template_data
// (docs/data.md).
//
// The content of a template is what a version saves and a restore writes
// back: name, description, icon, category, tags, base_template,
// configuration, resources, environment and version — the columns of
// StreamSpace's user_session_templates that say what the template is, under
// the keys StreamSpace's own snapshots use. The other columns say whose it
// is, who may see it or how it is used, and a version never changes them:
//
//   - id, user_id: the template's identity and owner;
//   - team_id, visibility: who may see it. A restore needs only write
//     access, and write access must not move a template into another group
//     or publish it; a group named by an old version may also be gone;
//   - is_default: the owner's pick among their templates, of which
//     StreamSpace keeps one; restoring it would have to change another
//     template;
//   - usage_count, created_at: counters and history; updated_at is set to
//     the time of the restore.
//
// Versions that StreamSpace's API saved carry visibility and is_default
// keys too; a restore ignores them.
const snapshotSQL = `jsonb_build_object(
	'name', t.name, 'description', t.description, 'icon', t.icon,
	'category', t.category, 'tags', t.tags, 'base_template', t.base_template,
	'configuration', t.configuration, 'resources', t.resources,
	'environment', t.environment, 'version', t.version)`

// restoreSQL writes a version's data ($2) back into the content columns of
// template $1 and nothing else. Only the content keys are taken from the
// data, so a key for another column (StreamSpace's own snapshots carry
// visibility and is_default) is never even type-checked. jsonb_populate_record
// starts from the current row, so a content key the version lacks (one saved
// before a column was versioned) keeps the current value.
const restoreSQL = `
	update user_session_templates t
	set (name, description, icon, category, tags, base_template,
	     configuration, resources, environment, version, updated_at) = (
		select r.name, r.description, r.icon, r.category, r.tags, r.base_template,
		       r.configuration, r.resources, r.environment, r.version, localtimestamp
		from jsonb_populate_record(t, (
			select coalesce(jsonb_object_agg(e.key, e.value), '{}')
			from jsonb_each($2::jsonb) e
			where e.key = any ('{name,description,icon,category,tags,base_template,configuration,resources,environment,version}'::text[])
		)) r)
	where t.id = $1
	returning ` + snapshotSQL

// lockSQL serialises every writer of one template's versions on the template
// row, and keeps the template from being deleted until the transaction ends.
// "no key update" is enough to exclude other version writers and template
// updates while leaving foreign-key checks unblocked.
const lockSQL = `select 1 from user_session_templates where id = $1 for no key update`

// insertSQL saves the template's current content as its next version. It
// runs as its own statement after lockSQL, never inside it: a statement's
// snapshot is taken when it starts, so max() computed in the statement that
// waited for the lock would miss the version the previous holder committed.
// created_by references users: a caller who is not a StreamSpace user (a
// token from another issuer) is stored as NULL. $1 template, $2
// description, $3 caller, $4 tags, $5 restored from.
const insertSQL = `
	insert into user_session_template_versions
		(template_id, version_number, template_data, description, created_by, tags, restored_from)
	select t.id,
		coalesce((select max(version_number) from user_session_template_versions where template_id = $1), 0) + 1,
		` + snapshotSQL + `,
		$2, (select u.id from users u where u.id = $3), $4, $5
	from user_session_templates t
	where t.id = $1
	returning id, version_number, created_at, coalesce(created_by, ''), template_data`

// pruneSQL deletes, in one statement, the versions of template $1 that
// retention lets go: those older than the $2 newest that carry no user tag
// (tags null, empty, or only the auto-backup marker) and are not
// auto-backups younger than $3. The subquery finds the newest version
// outside the kept window; with $2 or fewer versions it is null and nothing
// is deleted.
//
// The tag condition is written exactly as the partial index
// user_session_template_versions_prunable_idx (migration 003) declares it,
// so the delete reads only prunable rows however many tagged ones a template
// has; the literal is AutoBackupTag. created_at is a timestamp without time
// zone written with the session's clock, so it is compared with
// localtimestamp.
const pruneSQL = `
	delete from user_session_template_versions v
	where v.template_id = $1
	  and v.version_number <= (
		select version_number from user_session_template_versions
		where template_id = $1
		order by version_number desc
		offset $2 limit 1)
	  and (v.tags is null or v.tags <@ '{auto-backup}'::text[])
	  and not (v.tags is not null and 'auto-backup' = any (v.tags)
	           and v.created_at > localtimestamp - $3::interval)`

// countSQL counts a template's versions, to hold them at the cap.
const countSQL = `select count(*) from user_session_template_versions where template_id = $1`

// insertVersion locks the template, saves its current content as the next
// version, applies retention and checks the cap. The statements go to the
// server in one round trip (a pipeline) and still run one after another,
// each with its own snapshot, which insertSQL relies on. A template that is
// gone is errs.NotFound; a template at the cap with nothing retention may
// prune is errs.Conflict, and the caller's transaction must roll back.
func insertVersion(ctx context.Context, tx pgx.Tx, rules Rules, who authn.Identity, template, description string, tags []string, restoredFrom *int) (Version, error) {
	v := Version{TemplateID: template, Description: description, Tags: tags, RestoredFrom: restoredFrom}
	var count int
	b := &pgx.Batch{}
	b.Queue(lockSQL, template)
	b.Queue(insertSQL, template, description, who.Subject, tags, restoredFrom).QueryRow(func(row pgx.Row) error {
		return row.Scan(&v.ID, &v.Number, &v.CreatedAt, &v.CreatedBy, &v.Data)
	})
	b.Queue(pruneSQL, template, rules.Retention, rules.BackupRetention)
	b.Queue(countSQL, template).QueryRow(func(row pgx.Row) error { return row.Scan(&count) })
	err := tx.SendBatch(ctx, b).Close()
	if errors.Is(err, pgx.ErrNoRows) {
		// Deleted between the access check and the lock.
		return Version{}, templateNotFound(template)
	}
	if err != nil {
		return Version{}, err
	}
	if count > rules.Limit {
		return Version{}, errs.E(errs.Conflict,
			"template %q already has %d versions, the most it may keep (VERSION_LIMIT), and none can be pruned: the older ones are tagged or recent auto-backups",
			template, rules.Limit)
	}
	return v, nil
}

// createVersion saves template's current content as its next version and
// applies retention. who needs write access.
func createVersion(ctx context.Context, tx pgx.Tx, rules Rules, who authn.Identity, template string, in CreateInput) (Version, error) {
	if _, err := access.Require(ctx, tx, who, template, access.Write); err != nil {
		return Version{}, err
	}
	return insertVersion(ctx, tx, rules, who, template, in.Description, in.Tags, nil)
}

// listSQL is one page of a template's versions, newest first, below
// version $2, after skipping $4 (StreamSpace's offset paging). It reads one
// row past the page to learn whether there is a next one. The unique
// (template_id, version_number) index serves it. The first page passes the
// largest int for $2 rather than a null: "$2 is null or version_number < $2"
// cannot bound the index scan in a generic plan, and a page deep in the list
// would then read every newer row first. The exists test ties the read to
// the template in the same snapshot, so versions whose template is gone are
// never listed.
const listSQL = `
	select v.id, v.version_number, coalesce(v.description, ''), coalesce(v.tags, '{}'),
	       coalesce(v.created_by, ''), v.created_at, v.restored_from, v.template_data
	from user_session_template_versions v
	where v.template_id = $1 and v.version_number < $2
	  and exists (select 1 from user_session_templates t where t.id = $1)
	order by v.version_number desc
	limit $3 offset $4`

// Querier runs the statements of a read: a pool, where each statement sees
// the database as it is when it starts, or a transaction. Reads need no
// transaction of their own: the statement that reads versions checks in the
// same snapshot that their template exists.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// listVersions returns a page of template's versions, newest first, whether
// more follow, and how many versions the template has. who needs read
// access.
func listVersions(ctx context.Context, conn Querier, who authn.Identity, template string, q ListQuery) (page []Version, more bool, total int, err error) {
	if _, err := access.Require(ctx, conn, who, template, access.Read); err != nil {
		return nil, false, 0, err
	}
	page = make([]Version, 0, q.Limit+1)
	b := &pgx.Batch{}
	below := math.MaxInt32
	if q.Before != nil {
		below = *q.Before
	}
	b.Queue(listSQL, template, below, q.Limit+1, q.Offset()).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			v := Version{TemplateID: template}
			if err := rows.Scan(&v.ID, &v.Number, &v.Description, &v.Tags, &v.CreatedBy, &v.CreatedAt, &v.RestoredFrom, &v.Data); err != nil {
				return err
			}
			page = append(page, v)
		}
		return rows.Err()
	})
	b.Queue(countSQL, template).QueryRow(func(row pgx.Row) error { return row.Scan(&total) })
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		return nil, false, 0, fmt.Errorf("list versions of %q: %w", template, err)
	}
	if len(page) > q.Limit {
		return page[:q.Limit], true, total, nil
	}
	return page, false, total, nil
}

// documentsSQL loads the two sides of a diff: version $2, and version $3 or,
// when $3 is null, the template's content as it is now; and whether the
// template exists. Every side is read only when the template exists, in the
// same snapshot, so a version whose template is gone is never read. A
// missing side is null.
const documentsSQL = `
	with t as (select ` + snapshotSQL + ` as doc from user_session_templates t where t.id = $1)
	select
		(select v.template_data from user_session_template_versions v, t
		 where v.template_id = $1 and v.version_number = $2),
		case when $3::int is null
			then (select doc from t)
			else (select v.template_data from user_session_template_versions v, t
			      where v.template_id = $1 and v.version_number = $3)
		end,
		exists (select 1 from t)`

// documents returns the saved content of version n and of version against
// (the template's content as it is now when against is nil). who needs read
// access.
func documents(ctx context.Context, conn Querier, who authn.Identity, template string, n int, against *int) (from, to []byte, err error) {
	if _, err := access.Require(ctx, conn, who, template, access.Read); err != nil {
		return nil, nil, err
	}
	var exists bool
	if err := conn.QueryRow(ctx, documentsSQL, template, n, against).Scan(&from, &to, &exists); err != nil {
		return nil, nil, fmt.Errorf("load versions of %q: %w", template, err)
	}
	switch {
	case !exists:
		return nil, nil, templateNotFound(template)
	case from == nil:
		return nil, nil, versionNotFound(template, n)
	case to == nil:
		return nil, nil, versionNotFound(template, *against)
	}
	return from, to, nil
}

// versionDataSQL reads the version a restore brings back. It runs after
// lockSQL, so the template exists and stays until the transaction ends.
const versionDataSQL = `
	select template_data from user_session_template_versions
	where template_id = $1 and version_number = $2`

// auditSQL writes a restore's row in StreamSpace's audit_log. $1 the caller,
// $2 action, $3 resource type (access.ResourceType), $4 template, $5
// changes, $6 client address or null.
const auditSQL = `
	insert into audit_log (user_id, action, resource_type, resource_id, changes, ip_address)
	values ($1, $2, $3, $4, $5, $6)`

// AuditAction is audit_log.action of a row this function writes.
type AuditAction string

// ActionVersionRestored is the audit action of a restore.
const ActionVersionRestored AuditAction = "template.version.restored"

// Restored is what a restore did.
type Restored struct {
	TemplateID string
	// Version is the version the template now matches.
	Version int
	// Backup is the version saved of the content the restore replaced.
	Backup Version
	// Template is the template's content after the restore.
	Template json.RawMessage
}

// restoreVersion overwrites template's content with version n: it saves the
// current content as an auto-backup version (applying retention and the
// cap), writes the version's content back and adds the audit row. The
// caller's transaction makes it all or nothing. who needs write access; ip
// is the client's address for the audit row ("" for none).
func restoreVersion(ctx context.Context, tx pgx.Tx, rules Rules, who authn.Identity, template string, n int, ip string) (Restored, error) {
	res := Restored{TemplateID: template, Version: n}
	if _, err := access.Require(ctx, tx, who, template, access.Write); err != nil {
		return res, err
	}
	// The template is locked before its version is read: a version whose
	// template was deleted after the access check is never brought back.
	var locked int
	if err := tx.QueryRow(ctx, lockSQL, template).Scan(&locked); errors.Is(err, pgx.ErrNoRows) {
		return res, templateNotFound(template)
	} else if err != nil {
		return res, err
	}
	var data []byte
	err := tx.QueryRow(ctx, versionDataSQL, template, n).Scan(&data)
	if errors.Is(err, pgx.ErrNoRows) {
		return res, versionNotFound(template, n)
	}
	if err != nil {
		return res, err
	}
	res.Backup, err = insertVersion(ctx, tx, rules, who, template, fmt.Sprintf("Auto-backup before restoring version %d", n), []string{AutoBackupTag}, &n)
	if err != nil {
		return res, err
	}
	if err := tx.QueryRow(ctx, restoreSQL, template, data).Scan(&res.Template); err != nil {
		if k := errs.KindOf(db.Classify(err)); k == errs.Invalid {
			// A constraint or type the template has now that the old data
			// does not meet: the request was fine, the version is not.
			return res, errs.Wrap(errs.Conflict, err, "version %d of template %q cannot be restored: its data does not fit the template's columns", n, template)
		}
		return res, err
	}
	changes := map[string]any{"version": n, "backupVersion": res.Backup.Number}
	if _, err := tx.Exec(ctx, auditSQL, who.Subject, ActionVersionRestored, access.ResourceType, template, changes, nullIfEmpty(ip)); err != nil {
		return res, err
	}
	return res, nil
}

// orphanBatch bounds one sweep of versions whose template is gone.
const orphanBatch = 10000

// orphansSQL deletes up to $1 versions whose template no longer exists.
// StreamSpace deletes a template without its versions, and a foreign key
// (which would install triggers on StreamSpace's table) is ruled out, so
// they are swept here. A version is only ever added while its template row
// is locked, so a row this finds missing its template is garbage, never one
// being written.
const orphansSQL = `
	delete from user_session_template_versions
	where id = any (array(
		select v.id from user_session_template_versions v
		where not exists (select 1 from user_session_templates t where t.id = v.template_id)
		limit $1))`

// pruneOrphans deletes versions whose template is gone, up to orphanBatch,
// and returns how many.
func pruneOrphans(ctx context.Context, tx pgx.Tx) (int64, error) {
	tag, err := tx.Exec(ctx, orphansSQL, orphanBatch)
	if err != nil {
		return 0, fmt.Errorf("prune versions of deleted templates: %w", err)
	}
	return tag.RowsAffected(), nil
}

func nullIfEmpty(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func templateNotFound(template string) error {
	return errs.E(errs.NotFound, "template %q not found", template)
}

func versionNotFound(template string, n int) error {
	return errs.E(errs.NotFound, "version %d of template %q not found", n, template)
}
