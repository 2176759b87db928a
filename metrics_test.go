package function

import (
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	"sigs.k8s.io/yaml"

	"github.com/streamspace-dev/functions/events"
	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/fntest"
	"github.com/streamspace-dev/functions/shared/metrics"
	"github.com/streamspace-dev/functions/shared/runtime"
)

func TestAllInOneServesEveryMembersMetrics(t *testing.T) {
	f := New()
	h := fntest.Start(t, f, snapshotEnv(t, nil))
	e, err := events.New("versioning", events.TemplateUpdated, events.TemplateUpdatedData{TemplateID: "tpl", Change: "updated"})
	require.NoError(t, err)
	status, _ := fntest.Deliver(t, h.URL+"/events/tags", e, false)
	require.Equal(t, http.StatusAccepted, status)
	status, _ = fntest.Deliver(t, h.URL+"/events/tags", e, false)
	require.Equal(t, http.StatusAccepted, status)
	status, body := h.Do(http.MethodGet, "/api/v1/search/filters/tags", h.Token("alice", authn.User), nil)
	require.Equal(t, http.StatusOK, status, "%s", body)

	got := h.Scrape()
	tests := []struct {
		name   string
		metric string
		labels map[string]string
		want   float64
	}{
		{"the event, by its function", metrics.EventsTotal,
			map[string]string{"function": "tags", "type": events.TemplateUpdated, "outcome": string(metrics.Handled)}, 1},
		{"its redelivery, a duplicate", metrics.EventsTotal,
			map[string]string{"function": "tags", "type": events.TemplateUpdated, "outcome": string(metrics.Duplicate)}, 1},
		{"no other function counted it", metrics.EventsTotal, map[string]string{"function": "sharing"}, 0},
		{"the REST request, by its function's route", metrics.HTTPRequestsTotal,
			map[string]string{"function": "tags", "route": "GET /api/v1/search/filters/tags", "status_class": "2xx"}, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, got.Value(tc.metric, tc.labels))
		})
	}
	for _, name := range f.Functions() {
		t.Run("the outbox of "+name, func(t *testing.T) {
			fn := map[string]string{"function": name}
			assert.False(t, got.Has(metrics.PoolMaxConns, fn), "a member reports the pool it was given")
			assert.Equal(t, 1.0, got.Value(metrics.OutboxStatsUp, fn))
			assert.True(t, got.Has(metrics.OutboxQueuedEvents, fn))
			assert.True(t, got.Has(metrics.OutboxDeadLetters, fn))
		})
	}
	t.Run("the one pool the members share", func(t *testing.T) {
		assert.Equal(t, 4.0, got.Value(metrics.PoolMaxConns, map[string]string{"function": Name}))
	})
	t.Run("never a REST route", func(t *testing.T) {
		for _, path := range []string{"/api/metrics", "/api/v1/metrics"} {
			status, body := h.Do(http.MethodGet, path, h.Token("alice", authn.User), nil)
			assert.Equal(t, http.StatusNotFound, status, path)
			assert.NotContains(t, string(body), metrics.Prefix, path)
		}
	})
}

// alertRules is the part of docs/alerts.yaml the test reads.
type alertRules struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string            `json:"name"`
		Namespace string            `json:"namespace"`
		Labels    map[string]string `json:"labels"`
	} `json:"metadata"`
	Spec struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Alert       string            `json:"alert"`
				Expr        string            `json:"expr"`
				For         string            `json:"for"`
				Labels      map[string]string `json:"labels"`
				Annotations map[string]string `json:"annotations"`
			} `json:"rules"`
		} `json:"groups"`
	} `json:"spec"`
}

var metricName = regexp.MustCompile(regexp.QuoteMeta(metrics.Prefix) + `[a-z_]+`)

func TestAlertRulesNameOnlyMetricsThatExist(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("docs", "alerts.yaml"))
	require.NoError(t, err)
	var rules alertRules
	require.NoError(t, yaml.UnmarshalStrict(raw, &rules))
	require.Equal(t, "PrometheusRule", rules.Kind)
	require.Equal(t, "monitoring.coreos.com/v1", rules.APIVersion)
	require.NotEmpty(t, rules.Spec.Groups)
	readme, err := os.ReadFile("README.md")
	require.NoError(t, err)
	section := readmeSection(t, string(readme), "## Metrics and alerts")
	require.Contains(t, section, runtime.MetricsPath)

	var alerts []string
	used := map[string]bool{}
	for _, g := range rules.Spec.Groups {
		for _, r := range g.Rules {
			t.Run(r.Alert, func(t *testing.T) {
				require.NotEmpty(t, r.Alert)
				assert.NotContains(t, alerts, r.Alert, "alert named twice")
				alerts = append(alerts, r.Alert)
				names := metricName.FindAllString(r.Expr, -1)
				assert.NotEmpty(t, names, "the expression names none of our metrics")
				for _, name := range names {
					assert.Contains(t, metrics.Names(), name, "no such metric")
					used[name] = true
				}
				assert.Contains(t, []string{"warning", "critical"}, r.Labels["severity"])
				assert.NotEmpty(t, r.Annotations["summary"])
				assert.Contains(t, section, r.Alert, "the README does not list the alert")
			})
		}
	}
	t.Run("the README lists every metric", func(t *testing.T) {
		for _, name := range metrics.Names() {
			assert.Contains(t, section, name)
		}
	})
	t.Run("what an operator must act on has an alert", func(t *testing.T) {
		for _, name := range []string{
			metrics.OutboxOldestAge, metrics.OutboxQueuedEvents, metrics.OutboxDeadLetters, metrics.OutboxStatsUp,
			metrics.PoolEmptyAcquireWait, metrics.EventsTotal, metrics.JobsFinishedTotal,
		} {
			assert.True(t, used[name], "no alert reads %s", name)
		}
	})
	t.Run("kustomize does not apply it", func(t *testing.T) {
		err := filepath.WalkDir("deploy", func(path string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || !slices.Contains([]string{".yaml", ".yml"}, filepath.Ext(path)) {
				return err
			}
			raw, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			assert.NotContains(t, string(raw), "alerts.yaml", path)
			assert.NotContains(t, string(raw), "PrometheusRule", path)
			return nil
		})
		require.NoError(t, err)
	})
}

// podMonitor is the part of docs/podmonitor.yaml the test reads.
type podMonitor struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string            `json:"name"`
		Namespace string            `json:"namespace"`
		Labels    map[string]string `json:"labels"`
	} `json:"metadata"`
	Spec struct {
		NamespaceSelector struct {
			MatchNames []string `json:"matchNames"`
		} `json:"namespaceSelector"`
		Selector struct {
			MatchLabels map[string]string `json:"matchLabels"`
		} `json:"selector"`
		PodMetricsEndpoints []struct {
			Port     string `json:"port"`
			Path     string `json:"path"`
			Interval string `json:"interval"`
		} `json:"podMetricsEndpoints"`
	} `json:"spec"`
}

// TestPodMonitorScrapesTheFunctionPods: the example PodMonitor selects the
// function pods by the label their Services give them, in their namespace,
// on the port Knative names the user container's, at the metrics path.
func TestPodMonitorScrapesTheFunctionPods(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("docs", "podmonitor.yaml"))
	require.NoError(t, err)
	var pm podMonitor
	require.NoError(t, yaml.UnmarshalStrict(raw, &pm))
	rendered, err := os.ReadFile(filepath.Join("deploy", "overlays", "all-in-one", "service.yaml"))
	require.NoError(t, err)
	var svc servingv1.Service
	require.NoError(t, yaml.Unmarshal(rendered, &svc))
	tests := []struct {
		name      string
		got, want any
	}{
		{"a PodMonitor", pm.APIVersion + " " + pm.Kind, "monitoring.coreos.com/v1 PodMonitor"},
		{"the functions' namespace", pm.Spec.NamespaceSelector.MatchNames, []string{svc.Namespace}},
		{"the function pods", pm.Spec.Selector.MatchLabels, map[string]string{"app.kubernetes.io/component": svc.Spec.Template.Labels["app.kubernetes.io/component"]}},
		{"one endpoint", len(pm.Spec.PodMetricsEndpoints), 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, tc.got)
		})
	}
	require.Len(t, pm.Spec.PodMetricsEndpoints, 1)
	ep := pm.Spec.PodMetricsEndpoints[0]
	assert.Equal(t, servingv1.UserPortName, ep.Port, "Knative's name for the user container's port")
	assert.Equal(t, runtime.MetricsPath, ep.Path)
	assert.Equal(t, "function", svc.Spec.Template.Labels["app.kubernetes.io/component"])
}

// readmeSection is the README's section under heading, up to the next
// heading of the same level.
func readmeSection(t *testing.T, readme, heading string) string {
	t.Helper()
	_, rest, ok := strings.Cut(readme, "\n"+heading+"\n")
	require.True(t, ok, "README has no %q section", heading)
	if end := strings.Index(rest, "\n## "); end >= 0 {
		rest = rest[:end]
	}
	return rest
}
