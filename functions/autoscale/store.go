package function

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/errs"
)

// Policy is one row of StreamSpace's autoscaling_policies in the JSON its UI
// reads (StreamSpace's AutoScalingPolicy), with the conflict in force, if
// any, from autoscale_policy_state.
type Policy struct {
	ID                    int64             `json:"id"`
	Name                  string            `json:"name"`
	Description           string            `json:"description"`
	TargetType            TargetType        `json:"target_type"`
	TargetID              string            `json:"target_id"`
	Enabled               bool              `json:"enabled"`
	ScalingMode           ScalingMode       `json:"scaling_mode"`
	MinReplicas           int32             `json:"min_replicas"`
	MaxReplicas           int32             `json:"max_replicas"`
	MetricType            MetricType        `json:"metric_type"`
	TargetMetricValue     float64           `json:"target_metric_value"`
	ScaleUpPolicy         ScalePolicy       `json:"scale_up_policy"`
	ScaleDownPolicy       ScalePolicy       `json:"scale_down_policy"`
	PredictiveScaling     PredictiveScaling `json:"predictive_scaling"`
	CooldownPeriodSeconds int               `json:"cooldown_period_seconds"`
	Metadata              map[string]any    `json:"metadata"`
	CreatedBy             string            `json:"created_by"`
	CreatedAt             time.Time         `json:"created_at"`
	UpdatedAt             time.Time         `json:"updated_at"`
	// Conflict says why the policy cannot act now (its target is missing,
	// not opted in, owned by another scaler, ...); absent while it can.
	Conflict      string     `json:"conflict,omitempty"`
	ConflictSince *time.Time `json:"conflict_since,omitempty"`
	// LastChangeAt is when the function last changed the target's replica
	// count; the cooldown runs from it.
	LastChangeAt *time.Time `json:"last_change_at,omitempty"`
}

// ScalingEvent is one row of StreamSpace's scaling_events in the JSON its
// UI reads, with the columns the migration adds.
type ScalingEvent struct {
	ID               int64      `json:"id"`
	PolicyID         int64      `json:"policy_id"`
	TargetType       TargetType `json:"target_type"`
	TargetID         string     `json:"target_id"`
	Action           Action     `json:"action"`
	PreviousReplicas int32      `json:"previous_replicas"`
	NewReplicas      int32      `json:"new_replicas"`
	Trigger          Trigger    `json:"trigger"`
	MetricValue      *float64   `json:"metric_value,omitempty"`
	Reason           string     `json:"reason"`
	Status           Status     `json:"status"`
	ErrorMessage     string     `json:"error_message,omitempty"`
	DecisionID       string     `json:"decision_id,omitempty"`
	CreatedAt        time.Time  `json:"created_at"`
}

// Trigger is what caused a decision: scaling_events.trigger.
type Trigger string

// The triggers.
const (
	TriggerMetric   Trigger = "metric"
	TriggerSchedule Trigger = "schedule"
	TriggerManual   Trigger = "manual"
	TriggerEvent    Trigger = "event"
)

// Status is scaling_events.status.
type Status string

// The statuses this function writes (StreamSpace's values).
const (
	StatusCompleted Status = "completed"
	StatusFailed    Status = "failed"
)

// policyColumns are a policy's columns joined with its state, in the order
// scanPolicy reads them. Nullable columns StreamSpace may have left null
// read as their defaults.
const policyColumns = `
	p.id, p.name, coalesce(p.description, ''), p.target_type, p.target_id,
	coalesce(p.enabled, true), coalesce(p.scaling_mode, 'horizontal'),
	coalesce(p.min_replicas, 1), coalesce(p.max_replicas, 10), coalesce(p.metric_type, 'cpu'),
	coalesce(p.target_metric_value, 0)::float8,
	coalesce(p.scale_up_policy, '{}'), coalesce(p.scale_down_policy, '{}'),
	coalesce(p.predictive_scaling, '{}'), coalesce(p.cooldown_period, 300),
	coalesce(p.metadata, '{}'), coalesce(p.created_by, ''),
	coalesce(p.created_at, localtimestamp), coalesce(p.updated_at, p.created_at, localtimestamp),
	coalesce(s.conflict, ''), s.conflict_since, s.last_change_at`

const policyFrom = `
	from autoscaling_policies p
	left join autoscale_policy_state s on s.policy_id = p.id`

func scanPolicy(row pgx.Row) (Policy, error) {
	var p Policy
	var up, down, pred, md []byte
	err := row.Scan(&p.ID, &p.Name, &p.Description, &p.TargetType, &p.TargetID,
		&p.Enabled, &p.ScalingMode, &p.MinReplicas, &p.MaxReplicas, &p.MetricType,
		&p.TargetMetricValue, &up, &down, &pred, &p.CooldownPeriodSeconds,
		&md, &p.CreatedBy, &p.CreatedAt, &p.UpdatedAt,
		&p.Conflict, &p.ConflictSince, &p.LastChangeAt)
	if err != nil {
		return p, err
	}
	// A document StreamSpace stored in another shape reads as the defaults
	// rather than failing the whole list.
	_ = json.Unmarshal(up, &p.ScaleUpPolicy)
	_ = json.Unmarshal(down, &p.ScaleDownPolicy)
	_ = json.Unmarshal(pred, &p.PredictiveScaling)
	if json.Unmarshal(md, &p.Metadata) != nil || p.Metadata == nil {
		p.Metadata = map[string]any{}
	}
	return p, nil
}

// listPoliciesSQL lists every policy, newest first, as StreamSpace's list
// does.
const listPoliciesSQL = `select ` + policyColumns + policyFrom + ` order by p.created_at desc, p.id desc`

// getPolicySQL reads one policy.
const getPolicySQL = `select ` + policyColumns + policyFrom + ` where p.id = $1`

// enabledPoliciesSQL reads the enabled horizontal policies with ids in $1,
// or all of them when $1 is null: what a tick or a session event evaluates.
const enabledPoliciesSQL = `select ` + policyColumns + policyFrom + `
	where coalesce(p.enabled, true) and coalesce(p.scaling_mode, 'horizontal') = 'horizontal'
	  and ($1::int[] is null or p.id = any($1))
	order by p.id`

// sessionPoliciesSQL finds the enabled sessions policies a session of
// template $1 in namespace $2 concerns: a template target of that
// template, or a deployment or statefulset target whose metadata.template
// is that template or unset (every session of the namespace counts), when
// the namespace is the function's ($3).
const sessionPoliciesSQL = `
	select p.id from autoscaling_policies p
	where coalesce(p.enabled, true) and p.metric_type = 'sessions'
	  and ((p.target_type = 'template' and p.target_id = $1)
	    or (p.target_type in ('deployment', 'statefulset') and $2 = $3
	        and coalesce(p.metadata->>'template', $1) = $1))
	order by p.id`

func listPolicies(ctx context.Context, tx pgx.Tx) ([]Policy, error) {
	return queryPolicies(ctx, tx, listPoliciesSQL)
}

func queryPolicies(ctx context.Context, tx pgx.Tx, sql string, args ...any) ([]Policy, error) {
	rows, err := tx.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("list policies: %w", err)
	}
	defer rows.Close()
	out := []Policy{}
	for rows.Next() {
		p, err := scanPolicy(rows)
		if err != nil {
			return nil, fmt.Errorf("read policy: %w", err)
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list policies: %w", err)
	}
	return out, nil
}

func getPolicy(ctx context.Context, tx pgx.Tx, id int64) (Policy, error) {
	p, err := scanPolicy(tx.QueryRow(ctx, getPolicySQL, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return p, policyNotFound(id)
	}
	if err != nil {
		return p, fmt.Errorf("load policy %d: %w", id, err)
	}
	return p, nil
}

// insertPolicySQL stores a new policy; cooldown_period is StreamSpace's
// column for cooldown_period_seconds.
const insertPolicySQL = `
	insert into autoscaling_policies
		(name, description, target_type, target_id, enabled, scaling_mode, min_replicas, max_replicas,
		 metric_type, target_metric_value, scale_up_policy, scale_down_policy, predictive_scaling,
		 cooldown_period, metadata, created_by, created_at, updated_at)
	values ($1, nullif($2, ''), $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
		(select u.id from users u where u.id = $16), localtimestamp, localtimestamp)
	returning id`

// updatePolicySQL replaces every writable field of policy $1.
const updatePolicySQL = `
	update autoscaling_policies set
		name = $2, description = nullif($3, ''), target_type = $4, target_id = $5, enabled = $6,
		scaling_mode = $7, min_replicas = $8, max_replicas = $9, metric_type = $10,
		target_metric_value = $11, scale_up_policy = $12, scale_down_policy = $13,
		predictive_scaling = $14, cooldown_period = $15, metadata = $16, updated_at = localtimestamp
	where id = $1`

func policyArgs(in PolicyInput) []any {
	return []any{in.Name, in.Description, string(in.TargetType), in.TargetID, in.Enabled, string(in.ScalingMode),
		in.MinReplicas, in.MaxReplicas, string(in.MetricType), in.TargetMetricValue,
		in.ScaleUpPolicy, in.ScaleDownPolicy, in.PredictiveScaling, in.CooldownPeriodSeconds, in.Metadata}
}

func createPolicy(ctx context.Context, tx pgx.Tx, in PolicyInput, by string) (Policy, error) {
	var id int64
	args := append(policyArgs(in), by)
	if err := tx.QueryRow(ctx, insertPolicySQL, args...).Scan(&id); err != nil {
		return Policy{}, nameTaken(err, in.Name)
	}
	return getPolicy(ctx, tx, id)
}

func updatePolicy(ctx context.Context, tx pgx.Tx, id int64, in PolicyInput) (Policy, error) {
	old, err := getPolicy(ctx, tx, id)
	if err != nil {
		return Policy{}, err
	}
	args := append([]any{id}, policyArgs(in)...)
	if _, err := tx.Exec(ctx, updatePolicySQL, args...); err != nil {
		return Policy{}, nameTaken(err, in.Name)
	}
	if old.TargetType != in.TargetType || old.TargetID != in.TargetID {
		if _, err := tx.Exec(ctx, `delete from autoscale_policy_state where policy_id = $1`, id); err != nil {
			return Policy{}, err
		}
		if _, err := tx.Exec(ctx, `delete from autoscale_recommendations where policy_id = $1`, id); err != nil {
			return Policy{}, err
		}
	}
	return getPolicy(ctx, tx, id)
}

// deletePolicySQL deletes a policy; StreamSpace's foreign key deletes its
// scaling_events. The function's own rows for it go in the same
// transaction (deletePolicy).
const deletePolicySQL = `delete from autoscaling_policies where id = $1`

func deletePolicy(ctx context.Context, tx pgx.Tx, id int64) error {
	tag, err := tx.Exec(ctx, deletePolicySQL, id)
	if err != nil {
		return fmt.Errorf("delete policy %d: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return policyNotFound(id)
	}
	for _, sql := range []string{
		`delete from autoscale_policy_state where policy_id = $1`,
		`delete from autoscale_recommendations where policy_id = $1`,
	} {
		if _, err := tx.Exec(ctx, sql, id); err != nil {
			return fmt.Errorf("delete policy %d: %w", id, err)
		}
	}
	return nil
}

// nameTaken turns the unique violation on autoscaling_policies.name into a
// conflict that names the field.
func nameTaken(err error, name string) error {
	var pg *pgconn.PgError
	if errors.As(err, &pg) && pg.Code == "23505" {
		return errs.E(errs.Conflict, "name %q: a policy with this name already exists", name)
	}
	return err
}

// historySQL is scaling_events, newest first, of policy $1 or of every
// policy when $1 is 0.
const historySQL = `
	select id, coalesce(policy_id, 0), target_type, target_id, action, previous_replicas, new_replicas,
	       trigger, metric_value::float8, coalesce(reason, ''), coalesce(status, ''),
	       coalesce(error_message, ''), coalesce(decision_id::text, ''), created_at
	from scaling_events
	where $1 = 0 or policy_id = $1
	order by created_at desc, id desc
	limit $2`

func history(ctx context.Context, tx pgx.Tx, q HistoryQuery) ([]ScalingEvent, error) {
	rows, err := tx.Query(ctx, historySQL, q.PolicyID, q.Limit)
	if err != nil {
		return nil, fmt.Errorf("scaling history: %w", err)
	}
	defer rows.Close()
	out := []ScalingEvent{}
	for rows.Next() {
		var e ScalingEvent
		if err := rows.Scan(&e.ID, &e.PolicyID, &e.TargetType, &e.TargetID, &e.Action, &e.PreviousReplicas,
			&e.NewReplicas, &e.Trigger, &e.MetricValue, &e.Reason, &e.Status, &e.ErrorMessage, &e.DecisionID, &e.CreatedAt); err != nil {
			return nil, fmt.Errorf("scaling history: %w", err)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("scaling history: %w", err)
	}
	return out, nil
}

// insertEventSQL records one decision in scaling_events. created_at is the
// decision's time, so the history and the cooldown read one clock.
const insertEventSQL = `
	insert into scaling_events
		(policy_id, target_type, target_id, action, previous_replicas, new_replicas, trigger,
		 metric_value, reason, status, error_message, decision_id, created_at)
	values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, nullif($11, ''), $12, $13 at time zone 'UTC')
	returning id`

func insertEvent(ctx context.Context, tx pgx.Tx, e ScalingEvent, at time.Time) (int64, error) {
	var id int64
	// metric_value is DECIMAL(10,2).
	var mv *float64
	if e.MetricValue != nil && *e.MetricValue < 1e8 {
		mv = e.MetricValue
	}
	err := tx.QueryRow(ctx, insertEventSQL, e.PolicyID, string(e.TargetType), e.TargetID, string(e.Action),
		e.PreviousReplicas, e.NewReplicas, string(e.Trigger), mv, truncate(e.Reason, 4000), string(e.Status),
		truncate(e.ErrorMessage, 4000), e.DecisionID, at).Scan(&id)
	if err != nil {
		return 0, fmt.Errorf("record scaling event of policy %d: %w", e.PolicyID, err)
	}
	return id, nil
}

// changedSQL records that the replica count of policy $1 changed at $2 and
// that the policy is out of conflict.
const changedSQL = `
	insert into autoscale_policy_state (policy_id, last_change_at, updated_at)
	values ($1, $2, now())
	on conflict (policy_id) do update
	set last_change_at = excluded.last_change_at, conflict = null, conflict_since = null, updated_at = now()`

// conflictSQL sets the refusal of policy $1 to $2 since $3, unless it is
// already that refusal; it returns a row only when something changed, which
// is when a failed event is due.
const conflictSQL = `
	insert into autoscale_policy_state (policy_id, conflict, conflict_since, updated_at)
	values ($1, $2, $3, now())
	on conflict (policy_id) do update
	set conflict = excluded.conflict, conflict_since = excluded.conflict_since, updated_at = now()
	where autoscale_policy_state.conflict is distinct from excluded.conflict
	returning policy_id`

// clearConflictSQL ends the refusal of policy $1, when one is in force.
const clearConflictSQL = `
	update autoscale_policy_state set conflict = null, conflict_since = null, updated_at = now()
	where policy_id = $1 and conflict is not null`

// setConflict records reason as the policy's refusal; started is false when
// the same refusal was already in force.
func setConflict(ctx context.Context, tx pgx.Tx, policy int64, reason string, at time.Time) (started bool, err error) {
	var id int64
	err = tx.QueryRow(ctx, conflictSQL, policy, truncate(reason, 4000), at).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("record conflict of policy %d: %w", policy, err)
	}
	return true, nil
}

// recommendationsSQL reads the recommendations of the policies in $1 made
// after $2; recommendations returns them by policy.
const recommendationsSQL = `
	select policy_id, replicas, at from autoscale_recommendations
	where policy_id = any($1) and at > $2`

func recommendations(ctx context.Context, tx pgx.Tx, ids []int64, since time.Time) (map[int64][]Recommendation, error) {
	rows, err := tx.Query(ctx, recommendationsSQL, ids, since)
	if err != nil {
		return nil, fmt.Errorf("read recommendations: %w", err)
	}
	defer rows.Close()
	out := make(map[int64][]Recommendation, len(ids))
	for rows.Next() {
		var id int64
		var r Recommendation
		if err := rows.Scan(&id, &r.Replicas, &r.At); err != nil {
			return nil, fmt.Errorf("read recommendations: %w", err)
		}
		out[id] = append(out[id], r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read recommendations: %w", err)
	}
	return out, nil
}

// addRecommendationsSQL appends recommendations, one row per element of
// the three arrays, in one statement.
const addRecommendationsSQL = `
	insert into autoscale_recommendations (policy_id, replicas, at)
	select * from unnest($1::int[], $2::int[], $3::timestamptz[])`

func addRecommendations(ctx context.Context, tx pgx.Tx, ids []int64, replicas []int32, at []time.Time) error {
	if len(ids) == 0 {
		return nil
	}
	if _, err := tx.Exec(ctx, addRecommendationsSQL, ids, replicas, at); err != nil {
		return fmt.Errorf("record recommendations: %w", err)
	}
	return nil
}

// MaxWindow is the longest stabilization window; older recommendations are
// never read again.
const MaxWindow = MaxStabilization * time.Second

// pruneSQL deletes recommendations older than $1, and the state and
// recommendations of policies that no longer exist (StreamSpace's API can
// delete a policy without this function).
const pruneSQL = `
	with old as (delete from autoscale_recommendations where at < $1),
	gone_rec as (
		delete from autoscale_recommendations r
		where not exists (select 1 from autoscaling_policies p where p.id = r.policy_id)),
	gone_state as (
		delete from autoscale_policy_state s
		where not exists (select 1 from autoscaling_policies p where p.id = s.policy_id))
	select 1`

func prune(ctx context.Context, tx pgx.Tx, now time.Time) error {
	if _, err := tx.Exec(ctx, pruneSQL, now.Add(-MaxWindow)); err != nil {
		return fmt.Errorf("prune autoscale state: %w", err)
	}
	return nil
}

// activeSessionsSQL counts StreamSpace's active sessions (the states its
// API counts as running) in namespace $1, by template: one statement for
// every sessions policy of a round. idx_sessions_state serves it.
const activeSessionsSQL = `
	select coalesce(template_name, ''), count(*) from sessions
	where state in ('running', 'starting', 'pending')
	  and coalesce(namespace, 'streamspace') = $1
	group by 1`

// SessionCounts are the active sessions of a namespace by template.
type SessionCounts map[string]int

// count is template's active sessions, or every session of the namespace
// when template is "".
func (c SessionCounts) count(template string) int {
	if template != "" {
		return c[template]
	}
	n := 0
	for _, v := range c {
		n += v
	}
	return n
}

func activeSessions(ctx context.Context, tx pgx.Tx, namespace string) (SessionCounts, error) {
	rows, err := tx.Query(ctx, activeSessionsSQL, namespace)
	if err != nil {
		return nil, fmt.Errorf("count active sessions: %w", err)
	}
	defer rows.Close()
	out := SessionCounts{}
	for rows.Next() {
		var template string
		var n int
		if err := rows.Scan(&template, &n); err != nil {
			return nil, fmt.Errorf("count active sessions: %w", err)
		}
		out[template] = n
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("count active sessions: %w", err)
	}
	return out, nil
}

// processedSQL reports whether the function has processed event ($1, $2)
// (shared/db, MarkProcessed).
const processedSQL = `select exists (select 1 from processed_events where source = $1 and id = $2 and function = $3)`

// leasePrefix names a policy's row in job_leases.
const leasePrefix = "autoscale/policy/"

// claimSQL takes the leases of the policies in $3 for owner $1 for $2
// seconds, in one statement, and returns the ids it got: a lease is free,
// expired, or already this owner's. Two instances therefore never evaluate
// one policy at once, and a crashed one's claims expire by themselves.
const claimSQL = `
	insert into job_leases (name, owner, lease_until, heartbeat_at)
	select '` + leasePrefix + `' || id, $1, now() + make_interval(secs => $2), now()
	from unnest($3::int[]) id
	on conflict (name) do update
	set owner = excluded.owner, lease_until = excluded.lease_until, heartbeat_at = excluded.heartbeat_at
	where job_leases.lease_until < now() or job_leases.owner = excluded.owner
	returning substr(name, length('` + leasePrefix + `') + 1)::int`

// releaseSQL gives back owner $1's leases of the policies in $2.
const releaseSQL = `
	delete from job_leases where owner = $1
	and name = any (select '` + leasePrefix + `' || id from unnest($2::int[]) id)`

func claim(ctx context.Context, pool db.Beginner, owner string, ttl time.Duration, ids []int64) ([]int64, error) {
	var got []int64
	err := db.InTx(ctx, pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, claimSQL, owner, ttl.Seconds(), ids)
		if err != nil {
			return err
		}
		got, err = pgx.CollectRows(rows, pgx.RowTo[int64])
		return err
	})
	if err != nil {
		return nil, db.Classify(fmt.Errorf("claim policies: %w", err))
	}
	return got, nil
}

func release(ctx context.Context, pool db.Beginner, owner string, ids []int64) error {
	if len(ids) == 0 {
		return nil
	}
	err := db.InTx(ctx, pool, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, releaseSQL, owner, ids)
		return err
	})
	if err != nil {
		return db.Classify(fmt.Errorf("release policies: %w", err))
	}
	return nil
}

func policyNotFound(id int64) error {
	return errs.E(errs.NotFound, "policy %d not found", id)
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && (s[n]&0xC0) == 0x80 {
		n--
	}
	return s[:n]
}
