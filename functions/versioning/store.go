package function

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/streamspace-dev/functions/shared/access"
	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/errs"
)

// Version is one stored version of a template.
type Version struct {
	TemplateID  string    `json:"templateId"`
	Number      int       `json:"versionNumber"`
	Description string    `json:"description"`
	Tags        []string  `json:"tags"`
	CreatedBy   string    `json:"createdBy"`
	CreatedAt   time.Time `json:"createdAt"`
	// RestoredFrom is set on the auto-backup a restore made: the version that
	// restore brought back.
	RestoredFrom *int `json:"restoredFrom,omitempty"`
	// Data is the template as the version saved it; lists leave it out.
	Data json.RawMessage `json:"templateData,omitempty"`
}

// Store holds the version queries.
type Store struct {
	Pool *pgxpool.Pool
	// Retention and BackupRetention are the pruning rule (see Config).
	Retention       int
	BackupRetention time.Duration
}

// snapshotSQL is a template row as a version stores it: every column but
// the timestamps, so a column added to the table is versioned without a
// change here.
const snapshotSQL = `to_jsonb(t) - 'created_at' - 'updated_at'`

// lockSQL serialises every writer of one template's versions on the
// template row. "no key update" is enough to exclude other version writers
// and template updates while leaving foreign-key checks (new shares of the
// template) unblocked.
const lockSQL = `select 1 from user_session_templates where id = $1 for no key update`

// insertSQL saves the template's current state as the next version. It
// runs as its own statement after lockSQL, never inside it: a statement's
// snapshot is taken when it starts, so max() computed in the statement that
// waited for the lock would miss the version the previous holder just
// committed. $1 template, $2 description, $3 author, $4 tags, $5 restored
// from.
const insertSQL = `
	insert into template_versions
		(template_id, version_number, template_data, description, created_by, tags, restored_from)
	select t.id,
		coalesce((select max(version_number) from template_versions where template_id = $1), 0) + 1,
		` + snapshotSQL + `,
		$2, $3, $4, $5
	from user_session_templates t
	where t.id = $1
	returning version_number, created_at, template_data`

// Create saves the template's current state as its next version, prunes
// what retention allows, and runs then in the same transaction (to queue
// events). who needs write access.
func (s *Store) Create(ctx context.Context, who authn.Identity, template, description string, tags []string, then func(context.Context, pgx.Tx, Version) error) (Version, error) {
	var v Version
	err := db.InTx(ctx, s.Pool, func(tx pgx.Tx) error {
		if _, err := access.Require(ctx, tx, who, template, access.Write); err != nil {
			return err
		}
		var err error
		if v, err = s.insert(ctx, tx, who, template, description, tags, nil); err != nil {
			return err
		}
		return then(ctx, tx, v)
	})
	if err != nil {
		return Version{}, fmt.Errorf("create version of %q: %w", template, err)
	}
	return v, nil
}

// insert locks the template and saves its current state as the next
// version, then applies retention. The statements go to the
// server in one round trip (a pipeline) and still run one after another,
// each with its own snapshot, which is what insertSQL relies on. A template
// that is gone is errs.NotFound.
func (s *Store) insert(ctx context.Context, tx pgx.Tx, who authn.Identity, template, description string, tags []string, restoredFrom *int) (Version, error) {
	v := Version{TemplateID: template, Description: description, Tags: tags, CreatedBy: who.Subject, RestoredFrom: restoredFrom}
	var data []byte
	b := &pgx.Batch{}
	b.Queue(lockSQL, template)
	b.Queue(insertSQL, template, description, who.Subject, tags, restoredFrom).QueryRow(func(row pgx.Row) error {
		return row.Scan(&v.Number, &v.CreatedAt, &data)
	})
	b.Queue(pruneSQL, template, s.Retention, s.BackupRetention)
	err := tx.SendBatch(ctx, b).Close()
	if errors.Is(err, pgx.ErrNoRows) {
		// Deleted between the access check and the lock.
		return Version{}, errs.E(errs.NotFound, "template %q not found", template)
	}
	if err != nil {
		return Version{}, err
	}
	v.Data = data
	return v, nil
}

// listSQL is one page of a template's versions, newest first, from below
// $2 when set. It reads one row past the page to learn whether there is a
// next one. The unique (template_id, version_number) index serves it.
const listSQL = `
	select version_number, description, tags, created_by, created_at, restored_from
	from template_versions
	where template_id = $1 and ($2::int is null or version_number < $2)
	order by version_number desc
	limit $3`

// List returns a page of template's versions, newest first, and whether
// more follow. who needs read access.
func (s *Store) List(ctx context.Context, who authn.Identity, template string, q ListQuery) (page []Version, more bool, err error) {
	if _, err := access.Require(ctx, s.Pool, who, template, access.Read); err != nil {
		return nil, false, err
	}
	rows, err := s.Pool.Query(ctx, listSQL, template, q.Before, q.Limit+1)
	if err != nil {
		return nil, false, fmt.Errorf("list versions of %q: %w", template, db.Classify(err))
	}
	defer rows.Close()
	page = make([]Version, 0, q.Limit+1)
	for rows.Next() {
		v := Version{TemplateID: template}
		if err := rows.Scan(&v.Number, &v.Description, &v.Tags, &v.CreatedBy, &v.CreatedAt, &v.RestoredFrom); err != nil {
			return nil, false, fmt.Errorf("list versions of %q: %w", template, err)
		}
		page = append(page, v)
	}
	if err := rows.Err(); err != nil {
		return nil, false, fmt.Errorf("list versions of %q: %w", template, db.Classify(err))
	}
	if len(page) > q.Limit {
		return page[:q.Limit], true, nil
	}
	return page, false, nil
}

// documentsSQL loads the two sides of a diff: version $2, and version $3
// or, when $3 is null, the template as it is now. A missing side is null.
const documentsSQL = `
	select
		(select template_data from template_versions where template_id = $1 and version_number = $2),
		case when $3::int is null
			then (select ` + snapshotSQL + ` from user_session_templates t where t.id = $1)
			else (select template_data from template_versions where template_id = $1 and version_number = $3)
		end`

// Documents returns the saved template of version n and of version against
// (the template as it is now when against is nil). who needs read access.
func (s *Store) Documents(ctx context.Context, who authn.Identity, template string, n int, against *int) (from, to []byte, err error) {
	if _, err := access.Require(ctx, s.Pool, who, template, access.Read); err != nil {
		return nil, nil, err
	}
	if err := s.Pool.QueryRow(ctx, documentsSQL, template, n, against).Scan(&from, &to); err != nil {
		return nil, nil, fmt.Errorf("load versions of %q: %w", template, db.Classify(err))
	}
	switch {
	case from == nil:
		return nil, nil, versionNotFound(template, n)
	case to == nil && against != nil:
		return nil, nil, versionNotFound(template, *against)
	case to == nil:
		return nil, nil, errs.E(errs.NotFound, "template %q not found", template)
	}
	return from, to, nil
}

func versionNotFound(template string, n int) error {
	return errs.E(errs.NotFound, "version %d of template %q not found", n, template)
}
