package runtime_test

import (
	"context"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/fntest"
	"github.com/streamspace-dev/functions/shared/metrics"
	"github.com/streamspace-dev/functions/shared/runtime"
)

func TestMetricsCountEveryDeliveryByOutcome(t *testing.T) {
	_, s := started(t, runtime.Options{})
	// The steps run in order against one server; want is the counter of
	// the step's series after it.
	tests := []struct {
		name    string
		typ     string
		status  int
		label   string
		outcome metrics.EventOutcome
		want    float64
	}{
		{"handled", "io.test.ping.v1", http.StatusAccepted, "io.test.ping.v1", metrics.Handled, 1},
		{"handled again", "io.test.ping.v1", http.StatusAccepted, "io.test.ping.v1", metrics.Handled, 2},
		{"transient failure: retry", "io.test.down.v1", http.StatusServiceUnavailable, "io.test.down.v1", metrics.Retry, 1},
		{"final failure: rejected", "io.test.gone.v1", http.StatusBadRequest, "io.test.gone.v1", metrics.Rejected, 1},
		{"a panic: a 500, retried", "io.test.panic.v1", http.StatusInternalServerError, "io.test.panic.v1", metrics.Retry, 1},
		{"a type without a handler is counted as unknown, not by its name", "io.test.whatever.v1", http.StatusBadRequest, metrics.UnknownEventType, metrics.Rejected, 1},
		{"another one adds to unknown", "io.test.other.v1", http.StatusBadRequest, metrics.UnknownEventType, metrics.Rejected, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, _ := fntest.Deliver(t, s.url, event(tc.typ), false)
			require.Equal(t, tc.status, code)
			got := fntest.ScrapeURL(t, s.url+runtime.MetricsPath)
			assert.Equal(t, tc.want, got.Value(metrics.EventsTotal, map[string]string{
				"function": "test", "type": tc.label, "outcome": string(tc.outcome),
			}))
		})
	}
	t.Run("only registered types and unknown are labels", func(t *testing.T) {
		got := fntest.ScrapeURL(t, s.url+runtime.MetricsPath)
		assert.Equal(t, []string{"io.test.down.v1", "io.test.gone.v1", "io.test.panic.v1", "io.test.ping.v1", metrics.UnknownEventType},
			got.Labels(metrics.EventsTotal, "type"))
	})
}

func TestMetricsCountRESTRequestsByRouteAndClass(t *testing.T) {
	_, s := started(t, runtime.Options{})
	tests := []struct {
		name   string
		method string
		path   string
		body   string
		authed bool
		route  string
		class  string
	}{
		{"answered", http.MethodPost, "/api/v1/echo", `{"a":1}`, true, "POST /api/v1/echo", "2xx"},
		{"refused without a token", http.MethodPost, "/api/v1/echo", `{"a":1}`, false, "POST /api/v1/echo", "4xx"},
		{"bad input", http.MethodPost, "/api/v1/typed", `{"count":"x"}`, true, "POST /api/v1/typed", "4xx"},
		{"an internal error", http.MethodGet, "/api/v1/internal", "", true, "GET /api/v1/internal", "5xx"},
		{"a panic", http.MethodGet, "/api/v1/panic", "", true, "GET /api/v1/panic", "5xx"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			labels := map[string]string{"function": "test", "route": tc.route, "status_class": tc.class}
			before := fntest.ScrapeURL(t, s.url+runtime.MetricsPath).Value(metrics.HTTPRequestsTotal, labels)
			do(t, tc.method, s.url+tc.path, "application/json", tc.body, tc.authed)
			after := fntest.ScrapeURL(t, s.url+runtime.MetricsPath).Value(metrics.HTTPRequestsTotal, labels)
			assert.Equal(t, before+1, after)
		})
	}
	t.Run("a path no route serves is not a series", func(t *testing.T) {
		code, _ := do(t, http.MethodGet, s.url+"/api/v1/nothing-here", "", "", true)
		require.Equal(t, http.StatusNotFound, code)
		got := fntest.ScrapeURL(t, s.url+runtime.MetricsPath)
		assert.NotContains(t, got.Labels(metrics.HTTPRequestsTotal, "route"), "")
		assert.NotContains(t, got.Labels(metrics.HTTPRequestsTotal, "route"), "GET /api/v1/nothing-here")
	})
}

func TestMetricsEndpointIsOutsideTheRESTPaths(t *testing.T) {
	_, s := started(t, runtime.Options{})
	tests := []struct {
		name   string
		method string
		path   string
		authed bool
		want   int
	}{
		{"served without a token", http.MethodGet, runtime.MetricsPath, false, http.StatusOK},
		{"served with one too", http.MethodGet, runtime.MetricsPath, true, http.StatusOK},
		{"not under the REST prefix", http.MethodGet, "/api/metrics", true, http.StatusNotFound},
		{"not under the REST routes", http.MethodGet, "/api/v1/metrics", true, http.StatusNotFound},
		{"not without a token either", http.MethodGet, "/api/v1/metrics", false, http.StatusNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, body := do(t, tc.method, s.url+tc.path, "", "", tc.authed)
			assert.Equal(t, tc.want, code)
			if tc.want == http.StatusNotFound {
				kind, _ := fntest.ErrorBody(t, []byte(body))
				assert.Equal(t, "not_found", kind)
				assert.NotContains(t, body, metrics.Prefix)
			}
		})
	}
	t.Run("the process's own metrics are there", func(t *testing.T) {
		got := fntest.ScrapeURL(t, s.url+runtime.MetricsPath)
		assert.True(t, got.Has("go_goroutines", nil))
		assert.True(t, got.Has("process_start_time_seconds", nil))
	})
}

func TestMetricsRegistryIsPerServe(t *testing.T) {
	_, a := started(t, runtime.Options{})
	reg := metrics.New()
	_, b := started(t, runtime.Options{Metrics: reg})
	code, _ := fntest.Deliver(t, a.url, event("io.test.ping.v1"), false)
	require.Equal(t, http.StatusAccepted, code)
	handled := map[string]string{"function": "test", "type": "io.test.ping.v1", "outcome": string(metrics.Handled)}
	tests := []struct {
		name string
		url  string
		want float64
	}{
		{"the server that got the event counts it", a.url, 1},
		{"the other server does not", b.url, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, fntest.ScrapeURL(t, tc.url+runtime.MetricsPath).Value(metrics.EventsTotal, handled))
		})
	}
	t.Run("Start gets the registry it serves", func(t *testing.T) {
		ctx := runtime.WithMetrics(context.Background(), reg)
		assert.Same(t, reg, runtime.Metrics(ctx))
		assert.Nil(t, runtime.Metrics(context.Background()))
	})
}
