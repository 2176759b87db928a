package function_test

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	apiserverevents "knative.dev/eventing/pkg/adapter/apiserver/events"

	"github.com/streamspace-dev/functions/events"
	function "github.com/streamspace-dev/functions/functions/autoscale"
	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/fntest"
)

// tick delivers one autoscale PingSource tick and returns the status.
func tick(t testing.TB, h *fntest.Harness) int {
	t.Helper()
	e, err := events.New("test", events.Ping, events.PingData{Job: "autoscale.evaluate"})
	require.NoError(t, err)
	e.SetSource(events.AutoscaleTickSource)
	status, _ := h.Deliver(e, false)
	return status
}

// bump changes the Deployment's labels as another writer would, so its
// resourceVersion moves on.
func (k *kube) bump(name string) {
	ctx := context.Background()
	d, err := k.cluster.Client.AppsV1().Deployments(k.ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		k.t.Errorf("bump %s: %v", name, err)
		return
	}
	d.Labels["bumped"] = fmt.Sprint(time.Now().UnixNano())
	if _, err := k.cluster.Client.AppsV1().Deployments(k.ns).Update(ctx, d, metav1.UpdateOptions{}); err != nil {
		k.t.Errorf("bump %s: %v", name, err)
	}
}

func TestResourceVersionConflicts(t *testing.T) {
	k := newKube(t)
	h, _ := startWith(t, k, nil, nil)
	admin := h.Token("root", authn.Admin)
	sessions(t, h, "app", k.ns, 30)
	tests := []struct {
		name string
		// conflicts is how many of the function's scale reads another
		// writer follows with a change.
		conflicts   int64
		wantApplied bool
		wantReplica int32
	}{
		{"one conflict: read again and scaled", 1, true, 3},
		{"conflicts every time: recorded, not scaled", 100, false, 1},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			name := fmt.Sprintf("contended-%d", i)
			k.create(target{name: name, replicas: 1, labels: optedIn()})
			p := create(t, h, admin, with(policy(tc.name, name), "metadata", map[string]any{"template": "app"}))
			var left atomic.Int64
			left.Store(tc.conflicts)
			k.proxy.onScaleRead(func() {
				if left.Add(-1) >= 0 {
					k.bump(name)
				}
			})
			defer k.proxy.onScaleRead(nil)
			res := evaluate(t, h, admin, p.ID, false)
			assert.Equal(t, tc.wantApplied, res.Applied, res.Message)
			assert.Equal(t, tc.wantReplica, k.replicas("Deployment", name))
			if tc.wantApplied {
				assert.Equal(t, 1, h.Count(`select count(*) from scaling_events where policy_id = $1 and status = 'completed'`, p.ID))
				return
			}
			assert.Contains(t, res.Refusal, "resourceVersion conflicts")
			assert.Equal(t, 1, h.Count(`select count(*) from scaling_events where policy_id = $1 and status = 'failed'
				and error_message like '%changed under 3 attempts%'`, p.ID))
			sent(t, h, events.AutoscaleFailed, 1)
		})
	}
}

func TestCPUUtilisationAsTheHPACountsIt(t *testing.T) {
	k := newKube(t)
	h, _ := startWith(t, k, nil, nil)
	admin := h.Token("root", authn.Admin)
	type sample struct {
		pod   podState
		usage string // "" means no metrics sample
	}
	tests := []struct {
		name     string
		replicas int32
		pods     []sample
		want     int32
		reason   string
	}{
		{"double the target", 2, []sample{
			{podState{name: "a", ready: true}, "1000m"}, {podState{name: "b", ready: true}, "1000m"},
		}, 4, "ceil(2 × 2.000) = 4"},
		{"within the tolerance", 2, []sample{
			{podState{name: "a", ready: true}, "540m"}, {podState{name: "b", ready: true}, "520m"},
		}, 2, "within the 10% tolerance"},
		{"an unready pod counts as 0 on a scale-up", 3, []sample{
			{podState{name: "a", ready: true}, "1000m"}, {podState{name: "b", ready: true}, "1000m"},
			{podState{name: "c", ready: false, started: time.Minute}, "900m"},
		}, 4, "1 unready"},
		{"a pending pod is unready", 2, []sample{
			{podState{name: "a", ready: true}, "1000m"}, {podState{name: "b", pending: true}, ""},
		}, 2, "1 unready"},
		{"a pod without metrics counts as its request on a scale-down", 3, []sample{
			{podState{name: "a", ready: true}, "100m"}, {podState{name: "b", ready: true}, "100m"}, {podState{name: "c", ready: true}, ""},
		}, 3, "1 without metrics"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			name := fmt.Sprintf("cpu-%d", i)
			k.create(target{name: name, replicas: tc.replicas, labels: optedIn()})
			for _, s := range tc.pods {
				s.pod.name = name + "-" + s.pod.name
				k.pod(name, s.pod)
				if s.usage != "" {
					k.metrics.setCPU(k.ns, name, s.pod.name, s.usage)
				}
			}
			p := create(t, h, admin, with(policy(tc.name, name), "metric_type", "cpu", "target_metric_value", 50, "max_replicas", 10))
			res := evaluate(t, h, admin, p.ID, false)
			require.Empty(t, res.Refusal)
			assert.Equal(t, tc.want, res.Decision.Desired, res.Message)
			assert.Contains(t, res.Decision.Reason, tc.reason)
			assert.Equal(t, tc.want, k.replicas("Deployment", name))
		})
	}
	t.Run("custom metric from custom.metrics.k8s.io", func(t *testing.T) {
		k.create(target{name: "custom", replicas: 2, labels: optedIn()})
		for _, n := range []string{"custom-a", "custom-b"} {
			k.pod("custom", podState{name: n, ready: true})
			k.metrics.setCustom("connections", k.ns, n, 30000)
		}
		p := create(t, h, admin, with(policy("custom", "custom"), "metric_type", "custom", "target_metric_value", 10,
			"max_replicas", 10, "metadata", map[string]any{"metric_name": "connections"}))
		res := evaluate(t, h, admin, p.ID, false)
		assert.Equal(t, int32(6), res.Decision.Desired, res.Message)
		assert.Equal(t, int32(6), k.replicas("Deployment", "custom"))
	})
	t.Run("a metrics API that is down is a 503", func(t *testing.T) {
		k.metrics.fail.Store(true)
		defer k.metrics.fail.Store(false)
		p := create(t, h, admin, with(policy("metrics down", "cpu-0"), "metric_type", "cpu", "target_metric_value", 50))
		status, raw := h.Do(http.MethodPost, policyPath(p.ID, "/evaluate"), admin, nil)
		assert.Equal(t, http.StatusServiceUnavailable, status, "%s", raw)
	})
}

// TestTicksWithAClock drives ticks with an injected clock through the
// function: stabilization against flapping, the cooldown, the tolerance.
func TestTicksWithAClock(t *testing.T) {
	k := newKube(t)
	c := newClock(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC))
	h, _ := startWith(t, k, c, nil)
	admin := h.Token("root", authn.Admin)

	t.Run("flapping: at most one scale-down per window", func(t *testing.T) {
		k.create(target{name: "flap", replicas: 4, labels: optedIn()})
		p := create(t, h, admin, with(policy("flap", "flap"), "max_replicas", 10, "metadata", map[string]any{"template": "flap"},
			"scale_down_policy", map[string]any{"stabilization_seconds": 300}))
		var downs []time.Time
		for minute := 0; minute < 20; minute++ {
			exec(t, h, `delete from sessions where template_name = 'flap'`)
			n := 60 // 6 replicas' worth
			if minute%2 == 1 {
				n = 20
			}
			sessions(t, h, "flap", k.ns, n)
			before := k.replicas("Deployment", "flap")
			require.Equal(t, http.StatusAccepted, tick(t, h))
			if after := k.replicas("Deployment", "flap"); after < before {
				downs = append(downs, c.now())
			}
			c.advance(time.Minute)
		}
		for i := 1; i < len(downs); i++ {
			assert.GreaterOrEqual(t, downs[i].Sub(downs[i-1]), 5*time.Minute, "two scale-downs within one window")
		}
		assert.Empty(t, downs, "an oscillation faster than the window never scales down")
		assert.Equal(t, int32(6), k.replicas("Deployment", "flap"), "held at the peak")
		assert.Equal(t, 1, h.Count(`select count(*) from scaling_events where policy_id = $1`, p.ID), "one scale-up, recorded once")
		exec(t, h, `update autoscaling_policies set enabled = false where id = $1`, p.ID)
	})

	t.Run("cooldown: no change within it", func(t *testing.T) {
		k.create(target{name: "cool", replicas: 1, labels: optedIn()})
		p := create(t, h, admin, with(policy("cool", "cool"), "max_replicas", 10, "cooldown_period_seconds", 600,
			"metadata", map[string]any{"template": "cool"}))
		sessions(t, h, "cool", k.ns, 20)
		require.Equal(t, http.StatusAccepted, tick(t, h))
		require.Equal(t, int32(2), k.replicas("Deployment", "cool"))
		sessions(t, h, "cool", k.ns, 40) // 60: six replicas' worth
		for i := 0; i < 9; i++ {
			c.advance(time.Minute)
			require.Equal(t, http.StatusAccepted, tick(t, h))
			assert.Equal(t, int32(2), k.replicas("Deployment", "cool"), "changed within the cooldown, minute %d", i+1)
		}
		c.advance(time.Minute)
		require.Equal(t, http.StatusAccepted, tick(t, h))
		assert.Equal(t, int32(6), k.replicas("Deployment", "cool"), "after the cooldown")
		dry := evaluate(t, h, admin, p.ID, true)
		assert.Equal(t, function.NoChange, dry.Decision.Action)
		exec(t, h, `update autoscaling_policies set enabled = false where id = $1`, p.ID)
	})

	t.Run("tolerance: a change inside 10% is ignored", func(t *testing.T) {
		k.create(target{name: "tol", replicas: 10, labels: optedIn()})
		p := create(t, h, admin, with(policy("tol", "tol"), "max_replicas", 20, "metadata", map[string]any{"template": "tol"}))
		sessions(t, h, "tol", k.ns, 109) // 10.9 per replica against 10
		require.Equal(t, http.StatusAccepted, tick(t, h))
		assert.Equal(t, int32(10), k.replicas("Deployment", "tol"))
		dry := evaluate(t, h, admin, p.ID, true)
		assert.Contains(t, dry.Decision.Reason, "within 10% of target")
		sessions(t, h, "tol", k.ns, 3) // 11.2 per replica
		c.advance(time.Minute)
		require.Equal(t, http.StatusAccepted, tick(t, h))
		assert.Equal(t, int32(12), k.replicas("Deployment", "tol"))
		exec(t, h, `update autoscaling_policies set enabled = false where id = $1`, p.ID)
	})

	t.Run("cron windows across a DST change", func(t *testing.T) {
		k.create(target{name: "office", replicas: 1, labels: optedIn()})
		create(t, h, admin, with(policy("office", "office"), "metric_type", "schedule", "target_metric_value", nil, "max_replicas", 10,
			"scale_down_policy", map[string]any{"stabilization_seconds": 0},
			"metadata", map[string]any{"schedule": []any{map[string]any{"cron": "0 9 * * 1-5", "timezone": "Europe/Berlin", "duration": "8h", "replicas": 5}}}))
		steps := []struct {
			at   time.Time
			want int32
		}{
			{time.Date(2026, 10, 23, 7, 30, 0, 0, time.UTC), 5},  // 09:30 summer time
			{time.Date(2026, 10, 23, 16, 30, 0, 0, time.UTC), 1}, // 18:30: closed
			{time.Date(2026, 10, 26, 7, 30, 0, 0, time.UTC), 1},  // 08:30 winter time: not yet
			{time.Date(2026, 10, 26, 8, 0, 0, 0, time.UTC), 5},   // 09:00 winter time
		}
		for _, s := range steps {
			c.t = s.at
			require.Equal(t, http.StatusAccepted, tick(t, h))
			assert.Equal(t, s.want, k.replicas("Deployment", "office"), "at %s", s.at)
		}
		assert.Equal(t, 3, h.Count(`select count(*) from scaling_events where target_id = 'office' and trigger = 'schedule'`))
	})
}

func TestKubernetesFailures(t *testing.T) {
	k := newKube(t)
	h, _ := startWith(t, k, nil, nil)
	admin := h.Token("root", authn.Admin)
	k.create(target{name: "pool", replicas: 1, labels: optedIn()})
	p := create(t, h, admin, with(policy("p", "pool"), "metadata", map[string]any{"template": "app"}))
	sessions(t, h, "app", k.ns, 30)
	k.proxy.fail500.Store(true)
	before := tableDump(t, h)
	t.Run("the event path answers 5xx so the broker retries", func(t *testing.T) {
		assert.GreaterOrEqual(t, tick(t, h), 500)
		assert.Equal(t, 1.0, h.Scrape().Value("streamspace_functions_jobs_finished_total",
			map[string]string{"function": "autoscale", "job": "tick", "outcome": "failed"}), "a failed tick shows in /metrics")
	})
	t.Run("REST answers 503 with a message", func(t *testing.T) {
		for _, path := range []string{"/evaluate", "/evaluate?dryRun=true"} {
			status, raw := h.Do(http.MethodPost, policyPath(p.ID, path), admin, nil)
			require.Equal(t, http.StatusServiceUnavailable, status, "%s", raw)
			_, msg := fntest.ErrorBody(t, raw)
			assert.Contains(t, msg, "the Kubernetes API is unavailable")
		}
		status, raw := h.Do(http.MethodPost, policyPath(p.ID, "/trigger"), admin, map[string]any{"action": "scale_up"})
		require.Equal(t, http.StatusServiceUnavailable, status, "%s", raw)
	})
	assert.Equal(t, before, tableDump(t, h), "an unavailable API server leaves no row")
	k.proxy.fail500.Store(false)
	t.Run("recovered", func(t *testing.T) {
		require.Equal(t, http.StatusAccepted, tick(t, h))
		assert.Equal(t, int32(3), k.replicas("Deployment", "pool"))
	})
	t.Run("a missing target is 2xx and a failed event", func(t *testing.T) {
		create(t, h, admin, policy("gone", "gone"))
		assert.Equal(t, http.StatusAccepted, tick(t, h))
		sent(t, h, events.AutoscaleFailed, 1)
	})
}

func TestManualTrigger(t *testing.T) {
	k := newKube(t)
	c := newClock(time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC))
	h, _ := startWith(t, k, c, nil)
	admin := h.Token("root", authn.Admin)
	k.create(target{name: "pool", replicas: 2, labels: optedIn()})
	p := create(t, h, admin, with(policy("p", "pool"), "max_replicas", 6, "scale_up_policy", map[string]any{"increment": 2},
		"scale_down_policy", map[string]any{"stabilization_seconds": 600}))
	// A recommendation of 6 in the down window: a scale-down by the metric
	// would be held; a manual one is not.
	exec(t, h, `insert into autoscale_recommendations (policy_id, replicas, at) values ($1, 6, $2)`, p.ID, c.now().Add(-time.Minute))
	tests := []struct {
		name        string
		body        map[string]any
		wantStatus  int
		wantPrev    int32
		wantNew     int32
		wantMessage string
	}{
		{"scale_up by the increment", map[string]any{"action": "scale_up", "reason": "demo at 10"}, 200, 2, 4, "Scaling scale_up from 2 to 4 replicas"},
		{"scale_up bounded by max", map[string]any{"action": "scale_up", "replicas": 50}, 200, 4, 6, "from 4 to 6"},
		{"scale_down bypasses the window", map[string]any{"action": "scale_down", "replicas": 1}, 200, 6, 1, "from 6 to 1"},
		{"scale_down never below min", map[string]any{"action": "scale_down"}, 200, 1, 1, "from 1 to 1"},
		{"replicas 0 means the increment", map[string]any{"action": "scale_up", "replicas": 0}, 200, 1, 3, "from 1 to 3"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, raw := h.Do(http.MethodPost, policyPath(p.ID, "/trigger"), admin, tc.body)
			require.Equal(t, tc.wantStatus, status, "%s", raw)
			res := decodeAs[function.TriggerResult](t, raw)
			assert.Equal(t, tc.wantPrev, res.PreviousReplicas)
			assert.Equal(t, tc.wantNew, res.NewReplicas)
			assert.Contains(t, res.Message, tc.wantMessage)
			assert.Positive(t, res.EventID)
			assert.Equal(t, tc.wantNew, k.replicas("Deployment", "pool"))
			assert.Equal(t, 1, h.Count(`select count(*) from scaling_events where id = $1 and trigger = 'manual' and previous_replicas = $2 and new_replicas = $3`,
				res.EventID, tc.wantPrev, tc.wantNew))
		})
	}
	t.Run("a count against the action is 400 and changes nothing", func(t *testing.T) {
		before := tableDump(t, h)
		status, raw := h.Do(http.MethodPost, policyPath(p.ID, "/trigger"), admin, map[string]any{"action": "scale_down", "replicas": 5})
		require.Equal(t, http.StatusBadRequest, status, "%s", raw)
		_, msg := fntest.ErrorBody(t, raw)
		assert.Contains(t, msg, "replicas: 5 is more than the current 3")
		assert.Equal(t, before, tableDump(t, h))
	})
	t.Run("a refused target is 409", func(t *testing.T) {
		q := create(t, h, admin, policy("q", "nothing"))
		status, raw := h.Do(http.MethodPost, policyPath(q.ID, "/trigger"), admin, map[string]any{"action": "scale_up"})
		require.Equal(t, http.StatusConflict, status, "%s", raw)
		_, msg := fntest.ErrorBody(t, raw)
		assert.Contains(t, msg, "Deployment nothing not found")
	})
	t.Run("a policy another instance holds is 503", func(t *testing.T) {
		exec(t, h, `insert into job_leases (name, owner, lease_until, heartbeat_at) values ($1, 'elsewhere', now() + interval '1 minute', now())`,
			fmt.Sprintf("autoscale/policy/%d", p.ID))
		defer exec(t, h, `delete from job_leases where owner = 'elsewhere'`)
		status, raw := h.Do(http.MethodPost, policyPath(p.ID, "/trigger"), admin, map[string]any{"action": "scale_up"})
		require.Equal(t, http.StatusServiceUnavailable, status, "%s", raw)
		status, _ = h.Do(http.MethodPost, policyPath(p.ID, "/evaluate"), admin, nil)
		assert.Equal(t, http.StatusServiceUnavailable, status)
		assert.Equal(t, int32(3), k.replicas("Deployment", "pool"))
	})
	t.Run("events", func(t *testing.T) {
		sent(t, h, events.AutoscaleScaled, 4)
	})
}

func TestSessionEvents(t *testing.T) {
	k := newKube(t)
	h, _ := startWith(t, k, nil, nil)
	admin := h.Token("root", authn.Admin)
	k.create(target{name: "ff-warm", replicas: 0, labels: optedIn("streamspace.io/template-pool", "firefox")})
	create(t, h, admin, with(policy("ff", "x"), "target_type", "template", "target_id", "firefox", "min_replicas", 0, "target_metric_value", 5))

	created := func(id string) cloudevents.Event {
		e, err := events.New("controller", events.SessionCreated, events.SessionCreatedData{
			SessionID: id, UserID: "alice", TemplateID: "firefox", Namespace: k.ns, CreatedAt: time.Now().UTC(),
		})
		require.NoError(t, err)
		e.SetSource("/streamspace/controller")
		return e
	}
	t.Run("a session at zero replicas scales to one at once", func(t *testing.T) {
		sessions(t, h, "firefox", k.ns, 1)
		e := created("s-1")
		status, _ := h.Deliver(e, false)
		require.Equal(t, http.StatusAccepted, status)
		assert.Equal(t, int32(1), k.replicas("Deployment", "ff-warm"))
		assert.Equal(t, 1, h.Count(`select count(*) from scaling_events where trigger = 'event' and previous_replicas = 0 and new_replicas = 1`))

		t.Run("a redelivery has no second effect", func(t *testing.T) {
			k.setReplicas("ff-warm", 4) // what a second evaluation would undo
			status, _ := h.Deliver(e, true)
			require.Equal(t, http.StatusAccepted, status)
			assert.Equal(t, int32(4), k.replicas("Deployment", "ff-warm"))
			assert.Equal(t, 1, h.Count(`select count(*) from scaling_events`))
			k.setReplicas("ff-warm", 1)
		})
	})
	t.Run("the ApiServerSource's events, as Knative's adapter makes them", func(t *testing.T) {
		sessions(t, h, "firefox", k.ns, 9) // ten: two replicas' worth
		obj := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "stream.space/v1alpha1", "kind": "Session",
			"metadata": map[string]any{"name": "alice-firefox-2", "namespace": k.ns, "uid": "u-2", "resourceVersion": "7"},
			"spec":     map[string]any{"user": "alice", "template": "firefox", "state": "running"},
		}}
		_, e, err := apiserverevents.MakeAddEvent("https://10.96.0.1:443", "autoscale-sessions", obj, false)
		require.NoError(t, err)
		e.SetID("add-1")
		status, _ := h.Deliver(e, false)
		require.Equal(t, http.StatusAccepted, status)
		assert.Equal(t, int32(2), k.replicas("Deployment", "ff-warm"))

		exec(t, h, `delete from sessions where template_name = 'firefox'`)
		_, del, err := apiserverevents.MakeDeleteEvent("https://10.96.0.1:443", "autoscale-sessions", obj, false)
		require.NoError(t, err)
		del.SetID("delete-1")
		status, _ = h.Deliver(del, true)
		require.Equal(t, http.StatusAccepted, status)
		assert.Equal(t, int32(2), k.replicas("Deployment", "ff-warm"), "the 300 s down window holds the last sessions' count")
		dry := evaluate(t, h, admin, 1, true)
		assert.Contains(t, dry.Decision.Reason, "stabilized to 2")

		other := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "v1", "kind": "ConfigMap", "metadata": map[string]any{"name": "x", "namespace": k.ns},
		}}
		_, ignored, err := apiserverevents.MakeAddEvent("https://10.96.0.1:443", "autoscale-sessions", other, false)
		require.NoError(t, err)
		ignored.SetID("cm-1")
		status, _ = h.Deliver(ignored, false)
		assert.Equal(t, http.StatusAccepted, status, "another kind is acknowledged and ignored")
	})
	t.Run("an invalid session event is 400", func(t *testing.T) {
		e := created("s-bad")
		require.NoError(t, e.SetData(cloudevents.ApplicationJSON, map[string]any{"sessionId": "s", "userId": "u", "createdAt": "now"}))
		status, _ := h.Deliver(e, false)
		assert.Equal(t, http.StatusBadRequest, status)
	})
}

func TestLeasesAndChangingRefusals(t *testing.T) {
	k := newKube(t)
	h, _ := startWith(t, k, nil, nil)
	admin := h.Token("root", authn.Admin)
	sessions(t, h, "app", k.ns, 30)
	k.create(target{name: "held", replicas: 1, labels: optedIn()})
	k.create(target{name: "free", replicas: 1, labels: optedIn()})
	held := create(t, h, admin, with(policy("held", "held"), "metadata", map[string]any{"template": "app"}))
	create(t, h, admin, with(policy("free", "free"), "metadata", map[string]any{"template": "app"}))

	t.Run("a tick skips a policy another instance holds", func(t *testing.T) {
		exec(t, h, `insert into job_leases (name, owner, lease_until, heartbeat_at) values ($1, 'elsewhere', now() + interval '1 minute', now())`,
			fmt.Sprintf("autoscale/policy/%d", held.ID))
		require.Equal(t, http.StatusAccepted, tick(t, h))
		assert.Equal(t, int32(1), k.replicas("Deployment", "held"), "evaluated under another instance's lease")
		assert.Equal(t, int32(3), k.replicas("Deployment", "free"))
		assert.Equal(t, 1, h.Count(`select count(*) from job_leases where owner = 'elsewhere'`), "another's lease is left alone")
		assert.Zero(t, h.Count(`select count(*) from job_leases where owner <> 'elsewhere'`), "the tick released its leases")
		exec(t, h, `delete from job_leases where owner = 'elsewhere'`)
		require.Equal(t, http.StatusAccepted, tick(t, h))
		assert.Equal(t, int32(3), k.replicas("Deployment", "held"), "evaluated once the lease is gone")
	})

	t.Run("a refusal is recorded again when it changes", func(t *testing.T) {
		p := create(t, h, admin, with(policy("changing", "changing"), "metadata", map[string]any{"template": "app"}))
		require.Equal(t, http.StatusAccepted, tick(t, h))
		require.Equal(t, http.StatusAccepted, tick(t, h))
		assert.Equal(t, 1, h.Count(`select count(*) from scaling_events where policy_id = $1 and status = 'failed'`, p.ID), "missing: once")
		k.create(target{name: "changing", replicas: 1, labels: map[string]string{"team": "x"}})
		require.Equal(t, http.StatusAccepted, tick(t, h))
		require.Equal(t, http.StatusAccepted, tick(t, h))
		assert.Equal(t, 2, h.Count(`select count(*) from scaling_events where policy_id = $1 and status = 'failed'`, p.ID), "not opted in: once more")
		assert.Equal(t, 1, h.Count(`select count(*) from scaling_events where policy_id = $1 and error_message like '%not found%'`, p.ID))
		assert.Equal(t, 1, h.Count(`select count(*) from scaling_events where policy_id = $1 and error_message like '%opted in%'`, p.ID))
		sent(t, h, events.AutoscaleFailed, 2)
	})
}
