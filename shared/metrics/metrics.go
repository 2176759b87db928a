// Package metrics is what an operator watches of a function: events handled
// by outcome, REST requests, the outbox backlog and its dead letters, the
// database pool, and long jobs, in Prometheus's text format at /metrics
// (README "Metrics and alerts"). Each process has its own
// Registry, which the runtime serves; nothing is registered globally, so
// tests and the all-in-one's members never share state by accident.
package metrics

import (
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Prefix starts every metric name this package defines.
const Prefix = "streamspace_functions_"

// The metric names, in one place: the README and docs/alerts.yaml name
// them, and a test holds both to this list.
const (
	EventsTotal       = Prefix + "events_total"
	HTTPRequestsTotal = Prefix + "http_requests_total"

	OutboxQueuedEvents   = Prefix + "outbox_queued_events"
	OutboxOldestAge      = Prefix + "outbox_oldest_event_age_seconds"
	OutboxDeadLetters    = Prefix + "outbox_dead_letters"
	OutboxStatsUp        = Prefix + "outbox_stats_up"
	PoolAcquiredConns    = Prefix + "db_pool_acquired_connections"
	PoolIdleConns        = Prefix + "db_pool_idle_connections"
	PoolConstructing     = Prefix + "db_pool_constructing_connections"
	PoolTotalConns       = Prefix + "db_pool_total_connections"
	PoolMaxConns         = Prefix + "db_pool_max_connections"
	PoolAcquiresTotal    = Prefix + "db_pool_acquires_total"
	PoolEmptyAcquires    = Prefix + "db_pool_empty_acquires_total"
	PoolCanceledAcquires = Prefix + "db_pool_canceled_acquires_total"
	PoolEmptyAcquireWait = Prefix + "db_pool_empty_acquire_wait_seconds_total"
	PoolAcquireWait      = Prefix + "db_pool_acquire_wait_seconds_total"
	JobsActive           = Prefix + "jobs_active"
	JobsFinishedTotal    = Prefix + "jobs_finished_total"
)

// Names lists every metric this package defines.
func Names() []string {
	return []string{
		EventsTotal, HTTPRequestsTotal,
		OutboxQueuedEvents, OutboxOldestAge, OutboxDeadLetters, OutboxStatsUp,
		PoolAcquiredConns, PoolIdleConns, PoolConstructing, PoolTotalConns, PoolMaxConns,
		PoolAcquiresTotal, PoolEmptyAcquires, PoolCanceledAcquires, PoolEmptyAcquireWait, PoolAcquireWait,
		JobsActive, JobsFinishedTotal,
	}
}

// EventOutcome is what became of one CloudEvent delivery.
type EventOutcome string

// The outcomes of a delivery, as the broker sees them.
const (
	// Handled: the effect is done (2xx).
	Handled EventOutcome = "handled"
	// Duplicate: the event was processed before and had no second effect
	// (2xx).
	Duplicate EventOutcome = "duplicate"
	// Rejected: refused for good (4xx); the broker does not retry it and it
	// ends in the broker's dead-letter sink.
	Rejected EventOutcome = "rejected"
	// Retry: a transient failure (5xx); the broker delivers it again.
	Retry EventOutcome = "retry"
)

// UnknownEventType labels deliveries whose type this function has no
// handler for, or which could not be decoded: the label takes only the
// types a function registered, so a sender cannot grow the series.
const UnknownEventType = "unknown"

// JobOutcome is how a long job ended.
type JobOutcome string

// The outcomes of a long job.
const (
	JobSucceeded JobOutcome = "succeeded"
	JobFailed    JobOutcome = "failed"
)

// Registry is one process's metrics. Its methods may be called on a nil
// *Registry and then record nothing, so code that runs without a server
// (a unit test calling a handler) needs no registry.
type Registry struct {
	reg          *prometheus.Registry
	events       *prometheus.CounterVec
	requests     *prometheus.CounterVec
	jobsActive   *prometheus.GaugeVec
	jobsFinished *prometheus.CounterVec
}

// New returns a Registry with the Go runtime's and the process's own
// metrics, and this package's event, request and job series.
func New() *Registry {
	r := &Registry{
		reg: prometheus.NewRegistry(),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: EventsTotal,
			Help: "CloudEvent deliveries by function, event type and outcome (handled, duplicate, rejected, retry).",
		}, []string{"function", "type", "outcome"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: HTTPRequestsTotal,
			Help: "REST requests by function, route pattern and status class (2xx, 4xx, 5xx).",
		}, []string{"function", "route", "status_class"}),
		jobsActive: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: JobsActive,
			Help: "Long jobs running now in this instance, by function and job.",
		}, []string{"function", "job"}),
		jobsFinished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: JobsFinishedTotal,
			Help: "Long jobs that ended in this instance, by function, job and outcome (succeeded, failed).",
		}, []string{"function", "job", "outcome"}),
	}
	r.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		r.events, r.requests, r.jobsActive, r.jobsFinished,
	)
	return r
}

// Handler serves the registry in Prometheus's text format. A collector
// that fails leaves its series out rather than failing the scrape.
func (r *Registry) Handler() http.Handler {
	return promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// Gatherer is the registry for in-process readers, such as tests.
func (r *Registry) Gatherer() prometheus.Gatherer { return r.reg }

// Event counts one delivery of an event of eventType to function.
func (r *Registry) Event(function, eventType string, outcome EventOutcome) {
	if r == nil {
		return
	}
	if eventType == "" {
		eventType = UnknownEventType
	}
	r.events.WithLabelValues(function, eventType, string(outcome)).Inc()
}

// Request counts one REST request to function's route (its pattern, such
// as "GET /api/v1/search/filters/tags") answered with status.
func (r *Registry) Request(function, route string, status int) {
	if r == nil {
		return
	}
	r.requests.WithLabelValues(function, route, StatusClass(status)).Inc()
}

// StatusClass is an HTTP status's class: "2xx", "4xx", "5xx".
func StatusClass(status int) string {
	if status == 0 {
		// Nothing written: net/http answers 200.
		status = http.StatusOK
	}
	return strconv.Itoa(status/100) + "xx"
}

// Register adds collectors whose series belong to function, with a
// function label on each; the returned func removes them again, for a
// function that stops while the process goes on.
func (r *Registry) Register(function string, cs ...prometheus.Collector) (unregister func(), err error) {
	if r == nil {
		return func() {}, nil
	}
	wrapped := prometheus.WrapRegistererWith(prometheus.Labels{"function": function}, r.reg)
	var done []prometheus.Collector
	unregister = func() {
		for _, c := range done {
			wrapped.Unregister(c)
		}
	}
	for _, c := range cs {
		if err := wrapped.Register(c); err != nil {
			unregister()
			return nil, err
		}
		done = append(done, c)
	}
	return unregister, nil
}

// Job returns the metrics of function's long job named job (snapshot,
// restore, ...). A nil Registry returns a nil *JobMetrics, which records
// nothing.
func (r *Registry) Job(function, job string) *JobMetrics {
	if r == nil {
		return nil
	}
	return &JobMetrics{
		active:    r.jobsActive.WithLabelValues(function, job),
		succeeded: r.jobsFinished.WithLabelValues(function, job, string(JobSucceeded)),
		failed:    r.jobsFinished.WithLabelValues(function, job, string(JobFailed)),
	}
}

// JobMetrics counts one kind of long job: how many run now, and how many
// ended, by outcome. Its series exist, at zero, as soon as it is created, so
// an alert on failures has a baseline before the first one.
type JobMetrics struct {
	active    prometheus.Gauge
	succeeded prometheus.Counter
	failed    prometheus.Counter
}

// Start records that a job began. Every Start is followed by one Done.
func (j *JobMetrics) Start() {
	if j == nil {
		return
	}
	j.active.Inc()
}

// Done records that a job ended, failed when err is not nil.
func (j *JobMetrics) Done(err error) {
	if j == nil {
		return
	}
	j.active.Dec()
	if err != nil {
		j.failed.Inc()
		return
	}
	j.succeeded.Inc()
}
