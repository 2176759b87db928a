package runtime

import (
	"context"
	"log/slog"

	"github.com/streamspace-dev/functions/shared/metrics"
)

// MetricsPath serves the process's metrics in Prometheus's text format,
// beside the health endpoints and, like them, outside RESTPrefix: the
// Ingress and HTTPRoute route only REST paths, so it is reachable in the
// cluster and never from outside. It needs no token.
const MetricsPath = "/metrics"

type metricsKey struct{}

// WithMetrics returns ctx carrying reg; Serve passes it to Start, so a
// function registers its collectors where the server serves them.
func WithMetrics(ctx context.Context, reg *metrics.Registry) context.Context {
	return context.WithValue(ctx, metricsKey{}, reg)
}

// Metrics returns the registry in ctx, or nil, on which every method
// records nothing.
func Metrics(ctx context.Context) *metrics.Registry {
	reg, _ := ctx.Value(metricsKey{}).(*metrics.Registry)
	return reg
}

type deliveryKey struct{}

// delivery is what is known of one delivery to one function beyond its
// error: its type, once a handler takes it, and whether the handler found
// it processed before. The all-in-one hands one request to several
// functions, so this is per Mux, not per request.
type delivery struct {
	typ       string
	duplicate bool
}

// MarkDuplicate records that the event being handled was processed before
// and had no second effect: the log line says so and the delivery counts as
// a duplicate, not as handled.
func MarkDuplicate(ctx context.Context) {
	AddLogAttrs(ctx, slog.Bool("duplicate", true))
	if d, ok := ctx.Value(deliveryKey{}).(*delivery); ok {
		d.duplicate = true
	}
}

// setRoute records the REST route serving the request, for its count in
// the request metrics once the status is known.
func setRoute(ctx context.Context, function, pattern string) {
	if rl, ok := ctx.Value(logKey{}).(*requestLog); ok {
		rl.mu.Lock()
		rl.function, rl.route = function, pattern
		rl.mu.Unlock()
	}
}
