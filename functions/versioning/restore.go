package function

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/streamspace-dev/functions/shared/access"
	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/errs"
)

// RestoreResult is the response of a restore.
type RestoreResult struct {
	TemplateID string `json:"templateId"`
	// Restored is the version the template now matches.
	Restored int `json:"restoredVersion"`
	// Backup is the version saved of the state the restore replaced.
	Backup Version `json:"backup"`
	// Template is the template after the restore, in a version's form.
	Template json.RawMessage `json:"template"`
}

const versionDataSQL = `
	select template_data from template_versions
	where template_id = $1 and version_number = $2`

// restoreSQL overwrites the template's content columns from a version's
// data. jsonb_populate_record starts from the current row, so a key the
// version lacks (one saved before a column existed) keeps the current value
// and keys that are not columns are ignored. The id and the owner are never
// taken from a version. $1 template, $2 the version's data.
const restoreSQL = `
	update user_session_templates t
	set (name, description, category, config, tags, updated_at) = (
		select r.name, r.description, r.category, r.config, r.tags, now()
		from jsonb_populate_record(t, $2::jsonb) r)
	where t.id = $1
	returning ` + snapshotSQL

// auditSQL writes a restore's audit row. $1 actor, $2 resource type
// (access.ResourceType), $3 template, $4 details.
const auditSQL = `
	insert into audit_log (actor, action, resource_type, resource_id, details)
	values ($1, 'template.version.restored', $2, $3, $4)`

// Restore overwrites template with version n, in one transaction: it saves
// the current state as an auto-backup version, overwrites the template,
// writes the audit row, and runs then (to queue events); saving the backup
// also applies retention. If any step fails nothing is kept. who needs
// write access.
func (s *Store) Restore(ctx context.Context, who authn.Identity, template string, n int, then func(context.Context, pgx.Tx, RestoreResult) error) (RestoreResult, error) {
	res := RestoreResult{TemplateID: template, Restored: n}
	err := db.InTx(ctx, s.Pool, func(tx pgx.Tx) error {
		if _, err := access.Require(ctx, tx, who, template, access.Write); err != nil {
			return err
		}
		var data []byte
		err := tx.QueryRow(ctx, versionDataSQL, template, n).Scan(&data)
		if errors.Is(err, pgx.ErrNoRows) {
			return versionNotFound(template, n)
		}
		if err != nil {
			return err
		}
		restored := n
		res.Backup, err = s.insert(ctx, tx, who, template, fmt.Sprintf("before restoring version %d", n), []string{AutoBackupTag}, &restored)
		if err != nil {
			return err
		}
		var now []byte
		if err := tx.QueryRow(ctx, restoreSQL, template, data).Scan(&now); err != nil {
			if k := errs.KindOf(db.Classify(err)); k == errs.Invalid {
				// A constraint or type the template has now that the old data
				// does not meet: the request was fine, the version is not.
				return errs.Wrap(errs.Conflict, err, "version %d of template %q cannot be restored: its data does not fit the template's columns", n, template)
			}
			return err
		}
		res.Template = now
		details := map[string]any{"version": n, "backupVersion": res.Backup.Number}
		if _, err := tx.Exec(ctx, auditSQL, who.Subject, access.ResourceType, template, details); err != nil {
			return err
		}
		return then(ctx, tx, res)
	})
	if err != nil {
		return RestoreResult{}, fmt.Errorf("restore version %d of %q: %w", n, template, err)
	}
	return res, nil
}
