package function

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// querier is what the store needs of a transaction; pgx.Tx has it. Every
// store function runs inside a unit of work its caller commits
// (service.Commit or Once); none begins or ends a transaction.
type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

var _ querier = pgx.Tx(nil)

// applySQL updates, in one statement, every session of the batch that the
// caller may change, and reports each id's outcome in request order.
// $1 ids, $2 owner (null for admins), $3 tags, $4 operation. Rows are locked
// in id order so concurrent batches over the same sessions cannot deadlock,
// and "for no key update", the lock the update itself takes (it changes no
// key), so StreamSpace's inserts that reference a session meanwhile (their
// foreign-key checks take a key-share lock) are not held up.
// Add keeps the existing order and appends only the tags not yet present;
// the common case, a session with none of them, skips the per-tag check.
//
// A session the caller does not own is reported exactly as one that does
// not exist: the answer must not tell a user which of another user's
// session ids are real.
const applySQL = `
	with input as (
		select id, ord from unnest($1::text[]) with ordinality as i(id, ord)
	), locked as (
		select s.id from sessions s join input i on i.id = s.id
		where $2::text is null or s.user_id = $2
		order by s.id
		for no key update of s
	), updated as (
		update sessions s
		set tags = case $4::text
			when 'add' then case
				when not s.tags ?| $3::text[] then s.tags || to_jsonb($3::text[])
				else s.tags || coalesce(
					(select jsonb_agg(t) from unnest($3::text[]) as t where not s.tags ? t), '[]'::jsonb)
				end
			when 'remove' then s.tags - $3::text[]
			else to_jsonb($3::text[])
			end,
			updated_at = current_timestamp
		from locked l
		where s.id = l.id
		returning s.id
	)
	select i.id, case when u.id is null then 'not_found' else 'updated' end
	from input i
	left join updated u on u.id = i.id
	order by i.ord`

// applyBatch applies batch to the sessions owner holds (every session when
// owner is nil) with applySQL and returns each id's outcome in request
// order.
func applyBatch(ctx context.Context, q querier, owner *string, batch Batch) ([]SessionResult, error) {
	// Planned afresh for each batch: a cached generic plan assumes a 10-row
	// unnest and picks nested loops that go quadratic (17 s for 10,000
	// sessions, seen in BenchmarkBatchAdd).
	rows, err := q.Query(ctx, applySQL, pgx.QueryExecModeExec, batch.SessionIDs, owner, batch.Tags, string(batch.Operation))
	if err != nil {
		return nil, fmt.Errorf("apply %s to %d sessions: %w", batch.Operation, len(batch.SessionIDs), err)
	}
	out := make([]SessionResult, 0, len(batch.SessionIDs))
	for rows.Next() {
		var r SessionResult
		if err := rows.Scan(&r.SessionID, &r.Outcome); err != nil {
			rows.Close()
			return nil, fmt.Errorf("apply %s: %w", batch.Operation, err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("apply %s to %d sessions: %w", batch.Operation, len(batch.SessionIDs), err)
	}
	return out, nil
}

// recordBatchSQL writes the batch_operations row StreamSpace's own batch
// handler writes for a tag update (operation_type update_tags, resource_type
// sessions, errors a JSON array of strings), already completed, so
// StreamSpace's GET /api/v1/batch/jobs/{id} reports it. user_id references
// users: a caller without a users row (a token from an external issuer for
// an admin StreamSpace never saw) leaves it null rather than failing the
// batch. $1 id, $2 caller, $3 total, $4 succeeded, $5 failed, $6 errors.
const recordBatchSQL = `
	insert into batch_operations
		(id, user_id, operation_type, resource_type, status,
		 total_items, processed_items, success_count, failure_count, errors, completed_at)
	values ($1, (select id from users where id = $2), 'update_tags', 'sessions', 'completed',
		$3, $3, $4, $5, $6, current_timestamp)`

// notFoundError is the batch_operations error text for a session the batch
// did not change, worded as StreamSpace words it.
const notFoundError = "session %s: not found or not owned by user"

// recordBatch writes res to batch_operations for caller.
func recordBatch(ctx context.Context, q querier, caller string, res BatchResult) error {
	failed := make([]string, 0, res.NotFound)
	for _, r := range res.Results {
		if r.Outcome != Updated {
			failed = append(failed, fmt.Sprintf(notFoundError, r.SessionID))
		}
	}
	errs, err := json.Marshal(failed)
	if err != nil {
		return err
	}
	if _, err := q.Exec(ctx, recordBatchSQL, res.BatchID, caller, res.Total, res.Updated, res.Total-res.Updated, errs); err != nil {
		return fmt.Errorf("record batch %s: %w", res.BatchID, err)
	}
	return nil
}

// The popular-tag queries read the materialized view catalog_tag_counts
// (migration 002): per category (the empty string for none), each distinct
// non-blank tag, trimmed of spaces, and how many catalog templates carry it.
// A template has one category, so summing over categories counts each
// template once. The sum is over integers: a sum of bigints is a numeric.
const (
	popularSQL = `
		select tag, sum(templates::integer) as n
		from catalog_tag_counts
		group by tag
		order by n desc, tag
		limit $1`
	popularInCategorySQL = `
		select tag, templates
		from catalog_tag_counts
		where category = $1
		order by templates desc, tag
		limit $2`
)

// Statement budgets. The database is StreamSpace's, so no query of ours may
// hold a connection or a lock for long; SET LOCAL ends with the transaction,
// which keeps the setting off pooled (and PgBouncer-shared) connections.
const (
	// loadTimeoutSQL bounds a popular-tag read: well under the request
	// timeout, far over the milliseconds the view takes.
	loadTimeoutSQL = `set local statement_timeout = '5s'`
	// refreshTimeoutSQL bounds a refresh of the view: 100,000 catalog
	// templates take about a second (BenchmarkPopularTags/refresh).
	refreshTimeoutSQL = `set local statement_timeout = '30s'`
)

// readPopular returns the most used catalog tags, in category when it is
// not nil, and whether the view is stale (see staleSQL), under the read's
// statement timeout. The three statements go to the server together.
func readPopular(ctx context.Context, q querier, category *string, limit int, maxStaleness time.Duration) (tags []TagCount, isStale bool, err error) {
	b := &pgx.Batch{}
	b.Queue(loadTimeoutSQL)
	b.Queue(staleSQL, refreshJob, maxStaleness.Seconds(), refreshRequestJob).QueryRow(func(row pgx.Row) error {
		return row.Scan(&isStale)
	})
	sql, args := popularSQL, []any{limit}
	if category != nil {
		sql, args = popularInCategorySQL, []any{*category, limit}
	}
	tags = make([]TagCount, 0, limit)
	b.Queue(sql, args...).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var tc TagCount
			if err := rows.Scan(&tc.Tag, &tc.Count); err != nil {
				return err
			}
			tags = append(tags, tc)
		}
		return rows.Err()
	})
	if err := q.SendBatch(ctx, b).Close(); err != nil {
		return nil, false, fmt.Errorf("popular tags: %w", err)
	}
	return tags, isStale, nil
}

// The refresh of catalog_tag_counts is shared by every instance through two
// job_leases rows:
//
//   - refreshJob: heartbeat_at is when the transaction of the last refresh
//     began, so the view holds every change committed before it; owner is
//     the instance that ran it. A refresh holds this row's lock for its
//     transaction and others take it with skip locked: only one instance
//     refreshes at a time, and none waits for another's refresh.
//   - refreshRequestJob: heartbeat_at is when a template.updated event last
//     found a refresh running elsewhere, which may have begun before the
//     change the event reports; the view is stale until a refresh begins
//     after it.
//
// lease_until is set to the time of each write: to db.AcquireLease either
// row is an expired lease, and nothing acquires these names.
const (
	refreshJob        = "tags.catalog_tag_counts"
	refreshRequestJob = "tags.catalog_tag_counts.requested"
)

// staleExpr is true when the view is older than $2 (seconds) or a refresh
// was requested after it began. r is the refreshJob row, q the
// refreshRequestJob row.
const staleExpr = `(r.heartbeat_at <= now() - make_interval(secs => $2)
		or r.heartbeat_at < coalesce(q.heartbeat_at, '-infinity'))`

const (
	// staleSQL reports whether the view needs a refresh; with no refreshJob
	// row yet, when it was last refreshed is unknown, so it does.
	// $1 refreshJob, $2 max staleness (s), $3 refreshRequestJob.
	staleSQL = `
		select coalesce((
			select ` + staleExpr + `
			from job_leases r left join job_leases q on q.name = $3
			where r.name = $1), true)`

	// ensureRefreshJobSQL creates the refreshJob row on first use. An
	// existing row is left alone without waiting for a refresh that holds
	// it. $1 name, $2 instance.
	ensureRefreshJobSQL = `
		insert into job_leases (name, owner, lease_until, heartbeat_at)
		values ($1, $2, now(), '-infinity')
		on conflict (name) do nothing`

	// claimRefreshSQL locks the refreshJob row for this transaction and
	// says whether the view is stale; no row means another instance holds
	// it. $1 refreshJob, $2 max staleness (s), $3 refreshRequestJob.
	claimRefreshSQL = `
		select ` + staleExpr + `
		from job_leases r left join job_leases q on q.name = $3
		where r.name = $1
		for update of r skip locked`

	// refreshSQL rebuilds the view. Concurrently: readers keep reading the
	// old rows meanwhile, at the cost of a diff against them.
	refreshSQL = `refresh materialized view concurrently catalog_tag_counts`

	// refreshedSQL records a refresh in the locked row: now() is the
	// transaction's start, before the refresh took its snapshot.
	// $1 refreshJob, $2 instance.
	refreshedSQL = `
		update job_leases set owner = $2, heartbeat_at = now(), lease_until = now()
		where name = $1`

	// requestRefreshSQL records that a refresh is wanted from now on.
	// $1 refreshRequestJob, $2 instance.
	requestRefreshSQL = `
		insert into job_leases (name, owner, lease_until, heartbeat_at)
		values ($1, $2, now(), now())
		on conflict (name) do update
			set owner = excluded.owner, lease_until = excluded.lease_until,
			    heartbeat_at = greatest(job_leases.heartbeat_at, excluded.heartbeat_at)`
)

// Refresh is what a call to refresh did.
type Refresh string

// The outcomes of refresh.
const (
	// Refreshed: this instance rebuilt the view.
	Refreshed Refresh = "refreshed"
	// Fresh: the view was fresh enough for a conditional refresh.
	Fresh Refresh = "fresh"
	// Busy: another instance is refreshing it; nobody waited.
	Busy Refresh = "busy"
)

// ensureRefreshJob creates the refreshJob row if it is missing. Call it
// outside the refresh's transaction: a row created inside one would make
// every other instance's first refresh wait for that transaction.
func ensureRefreshJob(ctx context.Context, q querier, instance string) error {
	if _, err := q.Exec(ctx, ensureRefreshJobSQL, refreshJob, instance); err != nil {
		return fmt.Errorf("refresh popular tags: %w", err)
	}
	return nil
}

// refresh rebuilds catalog_tag_counts in q's transaction, unless another
// instance is doing it (Busy) or, with onlyIfStale, the view is fresh
// (Fresh). It sets the transaction's statement timeout; the caller commits.
// The refreshJob row must exist (ensureRefreshJob).
func refresh(ctx context.Context, q querier, instance string, onlyIfStale bool, maxStaleness time.Duration) (Refresh, error) {
	if _, err := q.Exec(ctx, refreshTimeoutSQL); err != nil {
		return "", fmt.Errorf("refresh popular tags: %w", err)
	}
	var isStale bool
	err := q.QueryRow(ctx, claimRefreshSQL, refreshJob, maxStaleness.Seconds(), refreshRequestJob).Scan(&isStale)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return Busy, nil
	case err != nil:
		return "", fmt.Errorf("refresh popular tags: claim: %w", err)
	case onlyIfStale && !isStale:
		return Fresh, nil
	}
	if _, err := q.Exec(ctx, refreshSQL); err != nil {
		return "", fmt.Errorf("refresh popular tags: %w", err)
	}
	if _, err := q.Exec(ctx, refreshedSQL, refreshJob, instance); err != nil {
		return "", fmt.Errorf("refresh popular tags: record: %w", err)
	}
	return Refreshed, nil
}

// requestRefresh records that the view must be refreshed by a refresh that
// begins after now.
func requestRefresh(ctx context.Context, q querier, instance string) error {
	if _, err := q.Exec(ctx, requestRefreshSQL, refreshRequestJob, instance); err != nil {
		return fmt.Errorf("request a popular-tag refresh: %w", err)
	}
	return nil
}
