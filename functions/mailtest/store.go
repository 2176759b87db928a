package function

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/errs"
)

// querier is what the store reads through: a transaction.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Integration is one email integration: a row of StreamSpace's
// integrations with type 'email', and the health columns migration 005
// adds; or the env integration, whose times and health are its record in
// mailtest_env_integration.
type Integration struct {
	ID          string
	Name        string
	Description string
	Enabled     bool
	Settings    Settings
	LastTestAt  *time.Time
	LastSuccess *time.Time
	Health      Health
	CreatedBy   string
	CreatedAt   *time.Time
	UpdatedAt   *time.Time
}

// HealthStatus is the outcome of the last periodic check.
type HealthStatus string

// Health statuses; unknown until the first check.
const (
	HealthUnknown HealthStatus = "unknown"
	Healthy       HealthStatus = "healthy"
	Unhealthy     HealthStatus = "unhealthy"
	selectColumns              = `id, name, coalesce(description, ''), coalesce(enabled, true), config,
       last_test_at, last_success_at, coalesce(health_status, 'unknown'), health_checked_at,
       coalesce(health_error_class, ''), coalesce(health_error, ''), coalesce(created_by, ''), created_at, updated_at`
)

// Health is an integration's health record.
type Health struct {
	Status     HealthStatus `json:"status"`
	CheckedAt  *time.Time   `json:"checkedAt,omitempty"`
	ErrorClass string       `json:"errorClass,omitempty"`
	Error      string       `json:"error,omitempty"`
}

// listSQL reads every email integration, oldest first.
const listSQL = `select ` + selectColumns + ` from integrations where type = 'email' order by id`

// getSQL reads one; with forUpdate, locked for a change.
const getSQL = `select ` + selectColumns + ` from integrations where id = $1 and type = 'email'`

// insertSQL adds an integration as StreamSpace's API would, with type
// 'email' and the sealed settings in config.
const insertSQL = `
insert into integrations (type, name, description, config, enabled, created_by)
values ('email', $1, $2, $3, $4, nullif($5, ''))
returning ` + selectColumns

// updateSQL replaces the name, description, enabled flag and settings.
const updateSQL = `
update integrations set name = $2, description = $3, config = $4, enabled = $5, updated_at = now()
where id = $1 and type = 'email'
returning ` + selectColumns

// deleteSQL removes an email integration.
const deleteSQL = `delete from integrations where id = $1 and type = 'email'`

// testedSQL records a test: last_test_at always, last_success_at on
// success.
const testedSQL = `
update integrations
set last_test_at = now(), last_success_at = case when $2 then now() else last_success_at end
where id = $1 and type = 'email'`

// scanIntegration reads one row of selectColumns.
func scanIntegration(row pgx.Row) (Integration, error) {
	var (
		it     Integration
		id     int64
		config []byte
		status string
	)
	err := row.Scan(&id, &it.Name, &it.Description, &it.Enabled, &config, &it.LastTestAt, &it.LastSuccess,
		&status, &it.Health.CheckedAt, &it.Health.ErrorClass, &it.Health.Error, &it.CreatedBy, &it.CreatedAt, &it.UpdatedAt)
	if err != nil {
		return it, err
	}
	it.ID = strconv.FormatInt(id, 10)
	it.Health.Status = HealthStatus(status)
	if err := json.Unmarshal(config, &it.Settings); err != nil {
		return it, fmt.Errorf("integration %d: config is not the email settings: %w", id, err)
	}
	return it, nil
}

// listIntegrations reads every email integration.
func listIntegrations(ctx context.Context, q querier) ([]Integration, error) {
	rows, err := q.Query(ctx, listSQL)
	if err != nil {
		return nil, db.Classify(fmt.Errorf("list email integrations: %w", err))
	}
	defer rows.Close()
	var out []Integration
	for rows.Next() {
		it, err := scanIntegration(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, it)
	}
	if err := rows.Err(); err != nil {
		return nil, db.Classify(fmt.Errorf("list email integrations: %w", err))
	}
	return out, nil
}

// getIntegration reads one; a missing one, or one of another type, is
// errs.NotFound. forUpdate locks the row for the transaction.
func getIntegration(ctx context.Context, q querier, id string, forUpdate bool) (Integration, error) {
	sql := getSQL
	if forUpdate {
		sql += " for update"
	}
	it, err := scanIntegration(q.QueryRow(ctx, sql, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return it, errs.E(errs.NotFound, "email integration %s not found", id)
	}
	if err != nil {
		return it, db.Classify(fmt.Errorf("load integration %s: %w", id, err))
	}
	return it, nil
}

func insertIntegration(ctx context.Context, tx pgx.Tx, in Input, by string) (Integration, error) {
	config, err := json.Marshal(in.Settings)
	if err != nil {
		return Integration{}, err
	}
	// created_by references users(id); a caller from the identity provider
	// who is not a StreamSpace user is not recorded there.
	var creator string
	err = tx.QueryRow(ctx, `select id from users where id = $1`, by).Scan(&creator)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return Integration{}, db.Classify(fmt.Errorf("look up user %s: %w", by, err))
	}
	it, err := scanIntegration(tx.QueryRow(ctx, insertSQL, in.Name, in.Description, config, in.Enabled, creator))
	if err != nil {
		return it, db.Classify(fmt.Errorf("insert email integration: %w", err))
	}
	return it, nil
}

func updateIntegration(ctx context.Context, tx pgx.Tx, id string, in Input) (Integration, error) {
	config, err := json.Marshal(in.Settings)
	if err != nil {
		return Integration{}, err
	}
	it, err := scanIntegration(tx.QueryRow(ctx, updateSQL, id, in.Name, in.Description, config, in.Enabled))
	if errors.Is(err, pgx.ErrNoRows) {
		return it, errs.E(errs.NotFound, "email integration %s not found", id)
	}
	if err != nil {
		return it, db.Classify(fmt.Errorf("update integration %s: %w", id, err))
	}
	return it, nil
}

func deleteIntegration(ctx context.Context, tx pgx.Tx, id string) error {
	tag, err := tx.Exec(ctx, deleteSQL, id)
	if err != nil {
		return db.Classify(fmt.Errorf("delete integration %s: %w", id, err))
	}
	if tag.RowsAffected() == 0 {
		return errs.E(errs.NotFound, "email integration %s not found", id)
	}
	return nil
}

func recordTest(ctx context.Context, tx pgx.Tx, id string, success bool) error {
	if _, err := tx.Exec(ctx, testedSQL, id, success); err != nil {
		return db.Classify(fmt.Errorf("record test of %s: %w", id, err))
	}
	return nil
}

// enabledSQL reads what the health tick checks.
const enabledSQL = `select ` + selectColumns + ` from integrations where type = 'email' and coalesce(enabled, true) order by id`

func enabledIntegrations(ctx context.Context, q querier) ([]Integration, error) {
	rows, err := q.Query(ctx, enabledSQL)
	if err != nil {
		return nil, db.Classify(fmt.Errorf("list enabled email integrations: %w", err))
	}
	defer rows.Close()
	var out []Integration
	for rows.Next() {
		it, err := scanIntegration(rows)
		if err != nil {
			// One row StreamSpace or a person broke must not stop the
			// others' checks: it is reported unhealthy below.
			it.Health.Error = err.Error()
		}
		out = append(out, it)
	}
	if err := rows.Err(); err != nil {
		return nil, db.Classify(fmt.Errorf("list enabled email integrations: %w", err))
	}
	return out, nil
}

// lockHealthSQL reads the stored health of the checked rows, locked, so
// two ticks that overlap see each other's result and report a transition
// once.
const lockHealthSQL = `
select id, coalesce(health_status, 'unknown') from integrations
where id = any($1) and type = 'email'
order by id
for update`

// saveHealthSQL stores a tick's results in one statement.
const saveHealthSQL = `
update integrations i
set health_status = h.status, health_checked_at = now(),
    health_error_class = nullif(h.class, ''), health_error = nullif(h.error, '')
from unnest($1::int[], $2::text[], $3::text[], $4::text[]) as h(id, status, class, error)
where i.id = h.id and i.type = 'email'`

// adminsSQL lists the active admins a failing integration notifies.
const adminsSQL = `select id from users where role = 'admin' and coalesce(active, true) order by id`

// notifySQL stores one StreamSpace notification per admin.
const notifySQL = `
insert into notifications (id, user_id, type, title, message, data, priority, action_url, action_text)
select gen_random_uuid()::text, u, 'integration_unhealthy', $2, $3, $4, 'high', '/admin/integrations', 'Open integrations'
from unnest($1::text[]) as u`

// rotateRefreshSQL stores the refresh token an endpoint rotated to, sealed.
const rotateRefreshSQL = `
update integrations set config = jsonb_set(config, '{secrets,refreshToken}', to_jsonb($2::text))
where id = $1 and type = 'email'`

func storeRotated(ctx context.Context, tx pgx.Tx, id, sealed string) error {
	if sealed == "" {
		return nil
	}
	if _, err := tx.Exec(ctx, rotateRefreshSQL, id, sealed); err != nil {
		return db.Classify(fmt.Errorf("store the rotated refresh token of %s: %w", id, err))
	}
	return nil
}

// The env integration has no row in integrations: its test times and
// health are in the project's table mailtest_env_integration (migration
// 007), one row with id 'env', so every instance shares them and they
// outlive a scale to zero.

// envRecordSQL reads the env integration's record.
const envRecordSQL = `
select last_test_at, last_success_at, coalesce(health_status, 'unknown'), health_checked_at,
       coalesce(health_error_class, ''), coalesce(health_error, '')
from mailtest_env_integration where id = $1`

// envTestedSQL records a test of the env integration: last_test_at always,
// last_success_at on success.
const envTestedSQL = `
insert into mailtest_env_integration as e (id, last_test_at, last_success_at)
values ($1, now(), case when $2 then now() end)
on conflict (id) do update
set last_test_at = excluded.last_test_at,
    last_success_at = coalesce(excluded.last_success_at, e.last_success_at)`

// envEnsureSQL creates the env record if it is missing, so that
// lockEnvHealthSQL always finds a row to lock: two first ticks that
// overlap then wait for each other like two later ones.
const envEnsureSQL = `insert into mailtest_env_integration (id) values ($1) on conflict (id) do nothing`

// lockEnvHealthSQL reads the env integration's stored health, locked, as
// lockHealthSQL does for rows.
const lockEnvHealthSQL = `
select coalesce(health_status, 'unknown') from mailtest_env_integration where id = $1 for update`

// saveEnvHealthSQL stores a check of the env integration.
const saveEnvHealthSQL = `
update mailtest_env_integration
set health_status = $2, health_checked_at = now(), health_error_class = nullif($3, ''), health_error = nullif($4, '')
where id = $1`

// envRecord fills in the env integration's stored test times and health;
// before its first test or check they stay empty and the health unknown.
func envRecord(ctx context.Context, q querier, it *Integration) error {
	var status string
	var h Health
	var lastTest, lastSuccess *time.Time
	err := q.QueryRow(ctx, envRecordSQL, envIntegrationID).Scan(&lastTest, &lastSuccess, &status, &h.CheckedAt, &h.ErrorClass, &h.Error)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		return db.Classify(fmt.Errorf("load the env integration's record: %w", err))
	}
	h.Status, h.CheckedAt = HealthStatus(status), utc(h.CheckedAt)
	it.LastTestAt, it.LastSuccess, it.Health = utc(lastTest), utc(lastSuccess), h
	return nil
}

// utc is t in UTC, as the rows' timestamps read.
func utc(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

func recordEnvTest(ctx context.Context, tx pgx.Tx, success bool) error {
	if _, err := tx.Exec(ctx, envTestedSQL, envIntegrationID, success); err != nil {
		return db.Classify(fmt.Errorf("record test of env: %w", err))
	}
	return nil
}

// lockEnvHealth returns the env integration's stored health, its record
// locked for the transaction.
func lockEnvHealth(ctx context.Context, tx pgx.Tx) (HealthStatus, error) {
	if _, err := tx.Exec(ctx, envEnsureSQL, envIntegrationID); err != nil {
		return "", db.Classify(fmt.Errorf("lock the env integration's record: %w", err))
	}
	var status string
	if err := tx.QueryRow(ctx, lockEnvHealthSQL, envIntegrationID).Scan(&status); err != nil {
		return "", db.Classify(fmt.Errorf("lock the env integration's record: %w", err))
	}
	return HealthStatus(status), nil
}

func saveEnvHealth(ctx context.Context, tx pgx.Tx, r checked) error {
	if _, err := tx.Exec(ctx, saveEnvHealthSQL, envIntegrationID, string(r.status), string(r.class), r.err); err != nil {
		return db.Classify(fmt.Errorf("save the env integration's health: %w", err))
	}
	return nil
}
