package function_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/stretchr/testify/require"

	function "github.com/streamspace-dev/functions/functions/autoscale"
	"github.com/streamspace-dev/functions/shared/fntest"
)

// wait bounds every wait on a condition: generous, so a busy machine is
// slow rather than failing; a passing test never waits for it.
const wait = 2 * time.Minute

const base = "/api/v1/scaling/autoscaling"

func policyPath(id int64, suffix string) string {
	return fmt.Sprintf("%s/policies/%d%s", base, id, suffix)
}

// clock is a settable time for the function under test.
type clock struct{ t time.Time }

func (c *clock) now() time.Time           { return c.t }
func (c *clock) advance(d time.Duration)  { c.t = c.t.Add(d) }
func newClock(at time.Time) *clock        { return &clock{t: at} }
func (c *clock) set(f *function.Function) { f.SetClock(c.now) }

// start serves a fresh autoscale function; with no KUBECONFIG in env its
// autoscaling is off and only the policy routes work.
func start(t testing.TB, env map[string]string) (*fntest.Harness, *function.Function) {
	t.Helper()
	f := function.New()
	h := fntest.Start(t, f, env)
	t.Cleanup(func() { waitOutboxEmpty(t, h) })
	return h, f
}

func exec(t testing.TB, h *fntest.Harness, sql string, args ...any) {
	t.Helper()
	_, err := h.Pool.Exec(context.Background(), sql, args...)
	require.NoError(t, err, sql)
}

// policy is a valid policy body: a sessions policy of deployment target.
func policy(name, target string) map[string]any {
	return map[string]any{
		"name": name, "description": "test policy", "target_type": "deployment", "target_id": target,
		"min_replicas": 1, "max_replicas": 5, "metric_type": "sessions", "target_metric_value": 10,
		"cooldown_period_seconds": 0,
	}
}

func with(body map[string]any, kv ...any) map[string]any {
	out := map[string]any{}
	for k, v := range body {
		out[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		k := kv[i].(string)
		if kv[i+1] == nil {
			delete(out, k)
			continue
		}
		out[k] = kv[i+1]
	}
	return out
}

// create posts body as token and returns the created policy.
func create(t testing.TB, h *fntest.Harness, token string, body any) function.CreateResult {
	t.Helper()
	status, raw := h.Do(http.MethodPost, base+"/policies", token, body)
	require.Equal(t, http.StatusCreated, status, "%s", raw)
	var res function.CreateResult
	require.NoError(t, json.Unmarshal(raw, &res), "%s", raw)
	return res
}

func decodeAs[T any](t testing.TB, raw []byte) T {
	t.Helper()
	var v T
	require.NoError(t, json.Unmarshal(raw, &v), "%s", raw)
	return v
}

// tableDump is a stable text of the autoscale tables, to prove a refused
// request changed nothing.
func tableDump(t testing.TB, h *fntest.Harness) string {
	t.Helper()
	// Whatever was queued has left, so the events sent so far are counted
	// at the sink.
	waitOutboxEmpty(t, h)
	var s string
	require.NoError(t, h.Pool.QueryRow(context.Background(), `select
		coalesce((select jsonb_agg(to_jsonb(p) order by id) from autoscaling_policies p), '[]')::text ||
		coalesce((select jsonb_agg(to_jsonb(e) order by id) from scaling_events e), '[]')::text ||
		coalesce((select jsonb_agg(to_jsonb(s) order by policy_id) from autoscale_policy_state s), '[]')::text ||
		coalesce((select jsonb_agg(to_jsonb(r) order by policy_id, at) from autoscale_recommendations r), '[]')::text ||
		(select count(*) from job_leases)::text`).Scan(&s))
	return fmt.Sprintf("%s events sent: %d", s, h.Sink.Arrived())
}

// waitOutboxEmpty waits until the outbox has sent every queued event.
func waitOutboxEmpty(t testing.TB, h *fntest.Harness) {
	t.Helper()
	require.Eventually(t, func() bool {
		var n int
		if err := h.Pool.QueryRow(context.Background(), `select count(*) from event_outbox`).Scan(&n); err != nil {
			return false
		}
		return n == 0
	}, wait, 20*time.Millisecond, "events still in the outbox")
}

// sent waits until n events of eventType reached the sink and returns them.
func sent(t testing.TB, h *fntest.Harness, eventType string, n int) []cloudevents.Event {
	t.Helper()
	got := h.Sink.WaitForN(context.Background(), eventType, n, wait)
	require.Len(t, got, n, "%s events", eventType)
	return got
}

// countType counts the events of eventType the sink has received.
func countType(h *fntest.Harness, eventType string) int {
	n := 0
	for _, e := range h.Sink.Events() {
		if e.Type() == eventType {
			n++
		}
	}
	return n
}
