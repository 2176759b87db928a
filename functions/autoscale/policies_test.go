package function_test

import (
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	function "github.com/streamspace-dev/functions/functions/autoscale"
	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/fntest"
)

func TestPolicyCRUD(t *testing.T) {
	h, _ := start(t, nil)
	h.AddUser("ops", authn.Operator)
	admin := h.Token("root", authn.Admin)
	operator := h.StreamSpaceToken("ops", authn.Operator)

	body := with(policy("pool-firefox", "firefox-pool"),
		"target_type", "template", "target_id", "firefox",
		"scale_up_policy", map[string]any{"threshold": 12, "increment": 2, "max_increment": 4},
		"predictive_scaling", map[string]any{"enabled": true, "schedule_pattern": map[string]int{"9": 3}, "look_ahead_minutes": 15},
		"metadata", map[string]any{"timezone": "Europe/Berlin", "ui": "kept"},
	)
	res := create(t, h, operator, body)
	assert.Equal(t, "Auto-scaling policy created", res.Message)
	assert.Equal(t, res.ID, res.Policy.ID)
	p := res.Policy
	assert.Equal(t, "pool-firefox", p.Name)
	assert.Equal(t, function.TargetTemplate, p.TargetType)
	assert.Equal(t, "firefox", p.TargetID)
	assert.True(t, p.Enabled, "enabled by default")
	assert.Equal(t, function.Horizontal, p.ScalingMode)
	assert.Equal(t, int32(1), p.MinReplicas)
	assert.Equal(t, int32(5), p.MaxReplicas)
	assert.Equal(t, function.MetricSessions, p.MetricType)
	assert.InDelta(t, 10, p.TargetMetricValue, 0.001)
	assert.Equal(t, int32(2), p.ScaleUpPolicy.Increment)
	assert.Equal(t, int32(4), p.ScaleUpPolicy.MaxIncrement)
	assert.InDelta(t, 12, p.ScaleUpPolicy.Threshold, 0.001)
	require.NotNil(t, p.ScaleUpPolicy.StabilizationSeconds)
	assert.Equal(t, 0, *p.ScaleUpPolicy.StabilizationSeconds, "the up window defaults to 0 s")
	require.NotNil(t, p.ScaleDownPolicy.StabilizationSeconds)
	assert.Equal(t, 300, *p.ScaleDownPolicy.StabilizationSeconds, "the down window defaults to 300 s")
	assert.Equal(t, int32(1), p.ScaleDownPolicy.Increment)
	assert.Equal(t, map[string]int32{"9": 3}, p.PredictiveScaling.SchedulePattern)
	assert.Equal(t, 15, p.PredictiveScaling.LookAheadMinutes)
	assert.Equal(t, 0, p.CooldownPeriodSeconds)
	assert.Equal(t, "kept", p.Metadata["ui"])
	assert.Equal(t, "ops", p.CreatedBy)
	assert.False(t, p.CreatedAt.IsZero())
	assert.Empty(t, p.Conflict)

	t.Run("the UI's snake_case JSON", func(t *testing.T) {
		status, raw := h.Do(http.MethodGet, policyPath(res.ID, ""), admin, nil)
		require.Equal(t, http.StatusOK, status, "%s", raw)
		for _, key := range []string{`"target_type"`, `"target_id"`, `"scaling_mode"`, `"min_replicas"`, `"max_replicas"`,
			`"metric_type"`, `"target_metric_value"`, `"scale_up_policy"`, `"scale_down_policy"`, `"max_increment"`,
			`"stabilization_seconds"`, `"predictive_scaling"`, `"schedule_pattern"`, `"look_ahead_minutes"`,
			`"cooldown_period_seconds"`, `"metadata"`, `"created_by"`, `"created_at"`, `"updated_at"`} {
			assert.Contains(t, string(raw), key)
		}
		assert.Equal(t, p, decodeAs[function.Policy](t, raw))
	})

	t.Run("stored in StreamSpace's columns", func(t *testing.T) {
		assert.Equal(t, 1, h.Count(`select count(*) from autoscaling_policies where id = $1 and cooldown_period = 0
			and scale_up_policy->>'increment' = '2' and predictive_scaling->'schedule_pattern'->>'9' = '3'
			and target_metric_value = 10.00 and created_by = 'ops'`, res.ID))
	})

	t.Run("list", func(t *testing.T) {
		second := create(t, h, admin, policy("second", "api-pool"))
		status, raw := h.Do(http.MethodGet, base+"/policies", admin, nil)
		require.Equal(t, http.StatusOK, status, "%s", raw)
		l := decodeAs[function.ListResult](t, raw)
		require.Len(t, l.Policies, 2)
		assert.Equal(t, second.ID, l.Policies[0].ID, "newest first")
		assert.Equal(t, "", l.Policies[0].CreatedBy, "a caller who is not a StreamSpace user is stored as no one")
	})

	t.Run("update", func(t *testing.T) {
		upd := with(body, "max_replicas", 8, "enabled", false, "id", res.ID, "created_at", p.CreatedAt, "created_by", "x")
		status, raw := h.Do(http.MethodPut, policyPath(res.ID, ""), admin, upd)
		require.Equal(t, http.StatusOK, status, "%s", raw)
		got := decodeAs[function.MessageResult](t, raw)
		require.NotNil(t, got.Policy)
		assert.Equal(t, int32(8), got.Policy.MaxReplicas)
		assert.False(t, got.Policy.Enabled)
		assert.Equal(t, "ops", got.Policy.CreatedBy, "read-only fields sent back are ignored")
		assert.False(t, got.Policy.UpdatedAt.Before(p.UpdatedAt))
	})

	t.Run("delete", func(t *testing.T) {
		exec(t, h, `insert into scaling_events (policy_id, target_type, target_id, action, previous_replicas, new_replicas, trigger, status)
			values ($1, 'template', 'firefox', 'scale_up', 1, 2, 'manual', 'completed')`, res.ID)
		exec(t, h, `insert into autoscale_recommendations (policy_id, replicas, at) values ($1, 2, now())`, res.ID)
		exec(t, h, `insert into autoscale_policy_state (policy_id, conflict) values ($1, 'x')`, res.ID)
		status, raw := h.Do(http.MethodDelete, policyPath(res.ID, ""), admin, nil)
		require.Equal(t, http.StatusOK, status, "%s", raw)
		assert.Zero(t, h.Count(`select count(*) from autoscaling_policies where id = $1`, res.ID))
		assert.Zero(t, h.Count(`select count(*) from scaling_events where policy_id = $1`, res.ID))
		assert.Zero(t, h.Count(`select count(*) from autoscale_recommendations where policy_id = $1`, res.ID))
		assert.Zero(t, h.Count(`select count(*) from autoscale_policy_state where policy_id = $1`, res.ID))
		status, _ = h.Do(http.MethodDelete, policyPath(res.ID, ""), admin, nil)
		assert.Equal(t, http.StatusNotFound, status)
	})
}

func TestPolicyValidationNamesTheFieldAndChangesNothing(t *testing.T) {
	h, _ := start(t, map[string]string{"AUTOSCALE_MAX_REPLICAS": "20"})
	admin := h.Token("root", authn.Admin)
	good := policy("good", "pool")
	existing := create(t, h, admin, good)
	tests := []struct {
		name       string
		body       any
		wantStatus int
		want       string
	}{
		{"min_replicas below 0", with(good, "min_replicas", -1), 400, "min_replicas -1"},
		{"min_replicas 0 for cpu", with(good, "min_replicas", 0, "metric_type", "cpu"), 400, "min_replicas 0"},
		{"min_replicas 0 for memory", with(good, "min_replicas", 0, "metric_type", "memory"), 400, "min_replicas 0"},
		{"max_replicas below min", with(good, "min_replicas", 4, "max_replicas", 3), 400, "max_replicas 3: below min_replicas 4"},
		{"max_replicas above the cap", with(good, "max_replicas", 21), 400, "max_replicas 21: above the configured cap of 20"},
		{"target_metric_value zero", with(good, "target_metric_value", 0), 400, "target_metric_value"},
		{"target_metric_value negative", with(good, "target_metric_value", -5), 400, "target_metric_value"},
		{"target_metric_value missing", with(good, "target_metric_value", nil), 400, "target_metric_value"},
		{"unknown metric_type", with(good, "metric_type", "gpu"), 400, "metric_type \"gpu\""},
		{"unknown target_type", with(good, "target_type", "pod"), 400, "target_type \"pod\""},
		{"target_id not an object name", with(good, "target_id", "Not_A_Name"), 400, "target_id"},
		{"template target_id not a label value", with(good, "target_type", "template", "target_id", "a b"), 400, "target_id"},
		{"empty name", with(good, "name", "  "), 400, "name"},
		{"bad cron", with(good, "metric_type", "schedule", "metadata", map[string]any{"schedule": []any{
			map[string]any{"cron": "0 25 * * *", "duration": "1h", "replicas": 2}}}), 400, "metadata.schedule[0].cron"},
		{"bad timezone", with(good, "metric_type", "schedule", "metadata", map[string]any{"schedule": []any{
			map[string]any{"cron": "0 9 * * *", "timezone": "Mars/Olympus", "duration": "1h", "replicas": 2}}}), 400, "metadata.schedule[0].timezone"},
		{"bad duration", with(good, "metric_type", "schedule", "metadata", map[string]any{"schedule": []any{
			map[string]any{"cron": "0 9 * * *", "duration": "soon", "replicas": 2}}}), 400, "metadata.schedule[0].duration"},
		{"schedule without windows", with(good, "metric_type", "schedule"), 400, "metadata.schedule"},
		{"bad pattern timezone", with(good, "metadata", map[string]any{"timezone": "Nowhere/Else"}), 400, "metadata.timezone"},
		{"bad pattern hour", with(good, "predictive_scaling", map[string]any{"enabled": true, "schedule_pattern": map[string]int{"25": 1}}), 400, "schedule_pattern key \"25\""},
		{"custom without a metric name", with(good, "metric_type", "custom"), 400, "metadata.metric_name"},
		{"negative threshold", with(good, "scale_up_policy", map[string]any{"threshold": -1}), 400, "scale_up_policy.threshold"},
		{"max_increment below increment", with(good, "scale_down_policy", map[string]any{"increment": 3, "max_increment": 2}), 400, "scale_down_policy.max_increment"},
		{"stabilization too long", with(good, "scale_down_policy", map[string]any{"stabilization_seconds": 7200}), 400, "scale_down_policy.stabilization_seconds"},
		{"negative cooldown", with(good, "cooldown_period_seconds", -1), 400, "cooldown_period_seconds"},
		{"look-ahead too long", with(good, "predictive_scaling", map[string]any{"look_ahead_minutes": 5000}), 400, "look_ahead_minutes"},
		{"unknown field", with(good, "replicas", 3), 400, "replicas"},
		{"wrong type", with(good, "min_replicas", "two"), 400, "min_replicas"},
		{"vertical is refused with 422", with(good, "scaling_mode", "vertical"), 422, "only horizontal"},
		{"both is refused with 422", with(good, "scaling_mode", "both"), 422, "only horizontal"},
		{"unknown scaling_mode", with(good, "scaling_mode", "diagonal"), 400, "scaling_mode"},
		{"duplicate name", with(good, "target_id", "other"), 409, "name \"good\""},
	}
	before := tableDump(t, h)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, raw := h.Do(http.MethodPost, base+"/policies", admin, tc.body)
			require.Equal(t, tc.wantStatus, status, "%s", raw)
			_, msg := fntest.ErrorBody(t, raw)
			assert.Contains(t, msg, tc.want)
		})
	}
	t.Run("PUT validates the same way", func(t *testing.T) {
		status, raw := h.Do(http.MethodPut, policyPath(existing.ID, ""), admin, with(good, "max_replicas", 0))
		require.Equal(t, http.StatusBadRequest, status, "%s", raw)
		second := create(t, h, admin, policy("second", "pool-2"))
		before = tableDump(t, h)
		status, raw = h.Do(http.MethodPut, policyPath(second.ID, ""), admin, with(good, "target_id", "pool-2"))
		require.Equal(t, http.StatusConflict, status, "a rename onto another policy's name: %s", raw)
	})
	assert.Equal(t, before, tableDump(t, h), "a refused request changed something")
}

func TestOnlyAdminsAndOperators(t *testing.T) {
	h, _ := start(t, nil)
	h.AddUser("alice", authn.User)
	admin := h.Token("root", authn.Admin)
	p := create(t, h, admin, policy("p", "pool"))
	users := []struct {
		name, token string
	}{
		{"identity-provider user", h.Token("bob", authn.User)},
		{"StreamSpace user", h.StreamSpaceToken("alice", authn.User)},
	}
	routes := []struct {
		method, path string
		body         any
	}{
		{http.MethodGet, base + "/policies", nil},
		{http.MethodPost, base + "/policies", policy("q", "pool")},
		{http.MethodGet, policyPath(p.ID, ""), nil},
		{http.MethodPut, policyPath(p.ID, ""), policy("p", "other")},
		{http.MethodDelete, policyPath(p.ID, ""), nil},
		{http.MethodPost, policyPath(p.ID, "/trigger"), map[string]any{"action": "scale_up"}},
		{http.MethodPost, policyPath(p.ID, "/evaluate?dryRun=true"), nil},
		{http.MethodGet, base + "/history", nil},
	}
	before := tableDump(t, h)
	for _, u := range users {
		for _, r := range routes {
			t.Run(u.name+" "+r.method+" "+r.path, func(t *testing.T) {
				status, raw := h.Do(r.method, r.path, u.token, r.body)
				require.Equal(t, http.StatusForbidden, status, "%s", raw)
				code, msg := fntest.ErrorBody(t, raw)
				assert.Equal(t, "forbidden", code)
				assert.Contains(t, msg, "admins and operators")
			})
		}
	}
	t.Run("no token", func(t *testing.T) {
		status, _ := h.Do(http.MethodGet, base+"/policies", "", nil)
		assert.Equal(t, http.StatusUnauthorized, status)
	})
	assert.Equal(t, before, tableDump(t, h))
}

func TestPolicyIDsAndMissingPolicies(t *testing.T) {
	h, _ := start(t, nil)
	admin := h.Token("root", authn.Admin)
	tests := []struct {
		name, method, path string
		body               any
		wantStatus         int
		want               string
	}{
		{"not a number", http.MethodGet, base + "/policies/abc", nil, 400, "id \"abc\""},
		{"zero", http.MethodGet, base + "/policies/0", nil, 400, "id \"0\""},
		{"leading zero", http.MethodGet, base + "/policies/07", nil, 400, "id \"07\""},
		{"too large", http.MethodGet, base + "/policies/99999999999", nil, 400, "id"},
		{"missing", http.MethodGet, base + "/policies/4242", nil, 404, "policy 4242 not found"},
		{"missing on update", http.MethodPut, base + "/policies/4242", policy("x", "y"), 404, "policy 4242 not found"},
		{"missing on evaluate", http.MethodPost, base + "/policies/4242/evaluate?dryRun=true", nil, 503, "autoscale is off"},
		{"bad dryRun", http.MethodPost, base + "/policies/1/evaluate?dryRun=maybe", nil, 400, "dryRun"},
		{"bad trigger action", http.MethodPost, base + "/policies/1/trigger", map[string]any{"action": "sideways"}, 400, "action \"sideways\""},
		{"trigger without action", http.MethodPost, base + "/policies/1/trigger", map[string]any{}, 400, "action: required"},
		{"negative trigger replicas", http.MethodPost, base + "/policies/1/trigger", map[string]any{"action": "scale_up", "replicas": -2}, 400, "replicas -2"},
		{"history policy_id", http.MethodGet, base + "/history?policy_id=x", nil, 400, "policy_id"},
		{"history limit", http.MethodGet, base + "/history?limit=0", nil, 400, "limit"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, raw := h.Do(tc.method, tc.path, admin, tc.body)
			require.Equal(t, tc.wantStatus, status, "%s", raw)
			_, msg := fntest.ErrorBody(t, raw)
			assert.Contains(t, msg, tc.want)
		})
	}
}

func TestHistory(t *testing.T) {
	h, _ := start(t, nil)
	admin := h.Token("root", authn.Admin)
	a := create(t, h, admin, policy("a", "pool-a"))
	b := create(t, h, admin, policy("b", "pool-b"))
	for i := 0; i < 3; i++ {
		exec(t, h, `insert into scaling_events (policy_id, target_type, target_id, action, previous_replicas, new_replicas, trigger, metric_value, reason, status, created_at)
			values ($1, 'deployment', 'pool-a', 'scale_up', $2, $2 + 1, 'metric', 12.5, 'because', 'completed', localtimestamp - make_interval(mins => $3))`, a.ID, i+1, 10-i)
	}
	exec(t, h, `insert into scaling_events (policy_id, target_type, target_id, action, previous_replicas, new_replicas, trigger, status, error_message)
		values ($1, 'deployment', 'pool-b', 'refused', 2, 2, 'metric', 'failed', 'not found')`, b.ID)
	tests := []struct {
		name      string
		query     string
		wantCount int
		check     func(t *testing.T, ev []function.ScalingEvent)
	}{
		{"all", "", 4, func(t *testing.T, ev []function.ScalingEvent) {
			assert.Equal(t, b.ID, ev[0].PolicyID, "newest first")
			assert.Equal(t, "not found", ev[0].ErrorMessage)
			assert.Equal(t, function.StatusFailed, ev[0].Status)
		}},
		{"one policy", "?policy_id=" + itoa(a.ID), 3, func(t *testing.T, ev []function.ScalingEvent) {
			assert.Equal(t, int32(3), ev[0].PreviousReplicas)
			assert.Equal(t, int32(4), ev[0].NewReplicas)
			require.NotNil(t, ev[0].MetricValue)
			assert.InDelta(t, 12.5, *ev[0].MetricValue, 0.001)
			assert.Equal(t, function.TriggerMetric, ev[0].Trigger)
			assert.Equal(t, "because", ev[0].Reason)
		}},
		{"limit", "?limit=2", 2, nil},
		{"an unknown policy has none", "?policy_id=999", 0, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, raw := h.Do(http.MethodGet, base+"/history"+tc.query, admin, nil)
			require.Equal(t, http.StatusOK, status, "%s", raw)
			res := decodeAs[function.HistoryResult](t, raw)
			assert.Equal(t, tc.wantCount, res.Count)
			require.Len(t, res.Events, tc.wantCount)
			assert.True(t, strings.Contains(string(raw), `"events":[`), "events is a list, never null")
			if tc.check != nil {
				tc.check(t, res.Events)
			}
		})
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
