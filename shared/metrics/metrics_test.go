package metrics_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/errs"
	"github.com/streamspace-dev/functions/shared/fntest"
	"github.com/streamspace-dev/functions/shared/metrics"
	"github.com/streamspace-dev/functions/shared/service"
)

// patience bounds every wait on a condition: generous, so a busy machine
// never fails a test, and only spent when something is wrong.
const patience = time.Minute

const (
	effectType  = "io.test.effect.v1"  // handled once, emits emittedType
	invalidType = "io.test.invalid.v1" // refused for good
	downType    = "io.test.down.v1"    // a transient failure
	emittedType = "io.test.emitted.v1"
)

// probe is a function with one handler per delivery outcome and a route
// that runs a long job.
type probe struct {
	svc     *service.Service
	poolMax int // when set, the pool's size
}

func (p *probe) Start(ctx context.Context, env map[string]string) error {
	if p.poolMax > 0 {
		env = maps.Clone(env)
		env["DATABASE_URL"] = withPoolMax(env["DATABASE_URL"], p.poolMax)
	}
	var cfg service.Base
	svc, err := service.Start(ctx, "probe", env, &cfg, func(cloudevents.Event) error { return nil })
	if err != nil {
		return err
	}
	p.svc = svc
	svc.Mux.On(effectType, func(ctx context.Context, e cloudevents.Event) error {
		_, err := svc.Once(ctx, e, func(pgx.Tx) ([]cloudevents.Event, error) {
			out := cloudevents.NewEvent()
			out.SetID(uuid.NewString())
			out.SetSource("/streamspace/functions/probe")
			out.SetType(emittedType)
			if err := out.SetData(cloudevents.ApplicationJSON, map[string]string{"cause": e.ID()}); err != nil {
				return nil, err
			}
			return []cloudevents.Event{out}, nil
		})
		return err
	})
	svc.Mux.On(invalidType, func(context.Context, cloudevents.Event) error {
		return errs.E(errs.Invalid, "refused for good")
	})
	svc.Mux.On(downType, func(context.Context, cloudevents.Event) error {
		return errs.E(errs.Unavailable, "database down")
	})
	svc.Mux.Route("POST /api/v1/jobs/{outcome}", func(w http.ResponseWriter, r *http.Request, _ authn.Identity) error {
		job := svc.Job("export")
		job.Start()
		var err error
		if r.PathValue("outcome") == "fail" {
			err = errs.E(errs.Unavailable, "export failed")
		}
		job.Done(err)
		if err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	})
	return nil
}
func (p *probe) Stop(ctx context.Context) error                { return p.svc.Stop(ctx) }
func (p *probe) Handle(w http.ResponseWriter, r *http.Request) { p.svc.Handle(w, r) }

// withPoolMax is the connection string conn with pgx's pool_max_conns set.
func withPoolMax(conn string, n int) string {
	if u, err := url.Parse(conn); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		q := u.Query()
		q.Set("pool_max_conns", strconv.Itoa(n))
		u.RawQuery = q.Encode()
		return u.String()
	}
	return fmt.Sprintf("%s pool_max_conns=%d", conn, n)
}

func event(id, typ string) cloudevents.Event {
	e := cloudevents.NewEvent()
	e.SetID(id)
	e.SetSource("/test")
	e.SetType(typ)
	e.SetData(cloudevents.ApplicationJSON, map[string]string{})
	return e
}

// of is the probe's series with labels added.
func of(labels ...string) map[string]string {
	m := map[string]string{"function": "probe"}
	for i := 0; i+1 < len(labels); i += 2 {
		m[labels[i]] = labels[i+1]
	}
	return m
}

// downSink is the URL of a port nothing listens on: a sink that is down.
func downSink(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	url := "http://" + ln.Addr().String()
	require.NoError(t, ln.Close())
	return url
}

func TestEventsAreCountedByTypeAndOutcome(t *testing.T) {
	h := fntest.Start(t, &probe{}, nil)
	// The steps run in order against one function; want is the step's
	// series after it.
	tests := []struct {
		name    string
		event   cloudevents.Event
		status  int
		outcome metrics.EventOutcome
		want    float64
	}{
		{"delivered", event("e-1", effectType), http.StatusAccepted, metrics.Handled, 1},
		{"the same event again is a duplicate", event("e-1", effectType), http.StatusAccepted, metrics.Duplicate, 1},
		{"and again", event("e-1", effectType), http.StatusAccepted, metrics.Duplicate, 2},
		{"a new one is handled", event("e-2", effectType), http.StatusAccepted, metrics.Handled, 2},
		{"refused for good", event("e-3", invalidType), http.StatusBadRequest, metrics.Rejected, 1},
		{"a transient failure asks for a retry", event("e-4", downType), http.StatusServiceUnavailable, metrics.Retry, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, _ := h.Deliver(tc.event, false)
			require.Equal(t, tc.status, status)
			got := h.Scrape()
			assert.Equal(t, tc.want, got.Value(metrics.EventsTotal, of("type", tc.event.Type(), "outcome", string(tc.outcome))))
		})
	}
	t.Run("duplicates are not counted as handled", func(t *testing.T) {
		got := h.Scrape()
		assert.Equal(t, 4.0, got.Value(metrics.EventsTotal, of("type", effectType)))
		assert.Equal(t, 2.0, got.Value(metrics.EventsTotal, of("type", effectType, "outcome", string(metrics.Handled))))
	})
}

func TestOutboxBacklogGrowsWhileTheSinkIsDown(t *testing.T) {
	h := fntest.Start(t, &probe{}, map[string]string{"K_SINK": downSink(t)})
	tests := []struct {
		name   string
		events int
	}{
		{"one queued", 1},
		{"three queued", 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for h.Count(`select count(*) from event_outbox where function = 'probe'`) < tc.events {
				status, _ := h.Deliver(event(uuid.NewString(), effectType), false)
				require.Equal(t, http.StatusAccepted, status)
			}
			var got fntest.Scrape
			require.Eventually(t, func() bool {
				got = h.Scrape()
				return got.Value(metrics.OutboxOldestAge, of()) > 0
			}, patience, 20*time.Millisecond, "the oldest queued event never aged")
			assert.Equal(t, float64(tc.events), got.Value(metrics.OutboxQueuedEvents, of()))
			assert.Equal(t, 1.0, got.Value(metrics.OutboxStatsUp, of()))
			assert.Equal(t, 0.0, got.Value(metrics.OutboxDeadLetters, of()))
		})
	}
	t.Run("the oldest age is the oldest event's", func(t *testing.T) {
		var want float64
		require.NoError(t, h.Pool.QueryRow(context.Background(),
			`select extract(epoch from now() - min(created_at))::float8 from event_outbox where function = 'probe'`).Scan(&want))
		got := h.Scrape().Value(metrics.OutboxOldestAge, of())
		// The scrape ran just after the query above.
		assert.GreaterOrEqual(t, got, want)
		assert.Less(t, got, want+patience.Seconds())
	})
}

func TestDeadLettersAfterAPermanentRefusal(t *testing.T) {
	h := fntest.Start(t, &probe{}, nil)
	h.Sink.AnswerNext(1, http.StatusBadRequest)
	tests := []struct {
		name  string
		id    string
		sent  int
		dead  float64
		delta int
	}{
		{"refused with 400: dead-lettered at once", "d-1", 0, 1, 0},
		{"the sink accepts the next one: sent, no new dead letter", "d-2", 1, 1, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, _ := h.Deliver(event(tc.id, effectType), false)
			require.Equal(t, http.StatusAccepted, status)
			var got fntest.Scrape
			require.Eventually(t, func() bool {
				got = h.Scrape()
				return got.Value(metrics.OutboxDeadLetters, of()) == tc.dead &&
					got.Value(metrics.OutboxQueuedEvents, of()) == 0 &&
					len(h.Sink.Events()) == tc.sent
			}, patience, 20*time.Millisecond, "dead letters %v, queued %v, sent %d",
				got.Value(metrics.OutboxDeadLetters, of()), got.Value(metrics.OutboxQueuedEvents, of()), len(h.Sink.Events()))
			assert.Equal(t, 0.0, got.Value(metrics.OutboxOldestAge, of()), "nothing queued, no age")
			assert.Equal(t, int(tc.dead), h.Count(`select count(*) from event_dead_letters where function = 'probe'`))
		})
	}
}

func TestAFailingOutboxQueryDoesNotFailTheScrape(t *testing.T) {
	h := fntest.Start(t, &probe{}, nil)
	ctx := context.Background()
	// The steps run in order: the dead-letter table goes away and comes
	// back, as a table an operator locked or a database that fails would.
	tests := []struct {
		name   string
		sql    string
		up     float64
		series bool
	}{
		{"the table is gone: up is 0, no stale numbers", `alter table event_dead_letters rename to event_dead_letters_away`, 0, false},
		{"it is back: up is 1", `alter table event_dead_letters_away rename to event_dead_letters`, 1, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := h.Pool.Exec(ctx, tc.sql)
			require.NoError(t, err)
			got := h.Scrape() // fails the test unless it is a 200
			assert.Equal(t, tc.up, got.Value(metrics.OutboxStatsUp, of()))
			assert.Equal(t, tc.series, got.Has(metrics.OutboxQueuedEvents, of()))
			assert.Equal(t, tc.series, got.Has(metrics.OutboxDeadLetters, of()))
			assert.True(t, got.Has(metrics.PoolMaxConns, of()), "the pool's series do not depend on the query")
		})
	}
}

func TestPoolAndJobSeries(t *testing.T) {
	h := fntest.Start(t, &probe{}, nil)
	token := h.Token("u1", authn.User)
	status, _ := h.Deliver(event("p-1", effectType), false)
	require.Equal(t, http.StatusAccepted, status)
	for _, outcome := range []string{"ok", "ok", "fail"} {
		h.Do(http.MethodPost, "/api/v1/jobs/"+outcome, token, nil)
	}
	got := h.Scrape()
	tests := []struct {
		name   string
		metric string
		labels map[string]string
		check  func(t *testing.T, v float64)
	}{
		{"pool size is configured", metrics.PoolMaxConns, of(), func(t *testing.T, v float64) { assert.Positive(t, v) }},
		{"connections were acquired", metrics.PoolAcquiresTotal, of(), func(t *testing.T, v float64) { assert.Positive(t, v) }},
		{"the pool holds connections", metrics.PoolTotalConns, of(), func(t *testing.T, v float64) { assert.Positive(t, v) }},
		// The scrape's own outbox query and the relay may hold one each.
		{"in use, within the pool", metrics.PoolAcquiredConns, of(), func(t *testing.T, v float64) {
			assert.LessOrEqual(t, v, got.Value(metrics.PoolMaxConns, of()))
		}},
		{"idle", metrics.PoolIdleConns, of(), func(t *testing.T, v float64) { assert.GreaterOrEqual(t, v, 0.0) }},
		{"no job runs now", metrics.JobsActive, of("job", "export"), func(t *testing.T, v float64) { assert.Zero(t, v) }},
		{"two jobs succeeded", metrics.JobsFinishedTotal, of("job", "export", "outcome", string(metrics.JobSucceeded)), func(t *testing.T, v float64) { assert.Equal(t, 2.0, v) }},
		{"one failed", metrics.JobsFinishedTotal, of("job", "export", "outcome", string(metrics.JobFailed)), func(t *testing.T, v float64) { assert.Equal(t, 1.0, v) }},
		{"REST requests by route pattern", metrics.HTTPRequestsTotal, of("route", "POST /api/v1/jobs/{outcome}", "status_class", "2xx"), func(t *testing.T, v float64) { assert.Equal(t, 2.0, v) }},
		{"and by status class", metrics.HTTPRequestsTotal, of("route", "POST /api/v1/jobs/{outcome}", "status_class", "5xx"), func(t *testing.T, v float64) { assert.Equal(t, 1.0, v) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.True(t, got.Has(tc.metric, tc.labels), "no series %s%v", tc.metric, tc.labels)
			tc.check(t, got.Value(tc.metric, tc.labels))
		})
	}
	t.Run("every metric this package names is exposed", func(t *testing.T) {
		for _, name := range metrics.Names() {
			assert.True(t, got.Has(name, of()), "%s is not in the scrape", name)
		}
	})
}

func TestAnExhaustedPoolShowsInTheScrape(t *testing.T) {
	p := &probe{poolMax: 1}
	h := fntest.Start(t, p, map[string]string{"DATABASE_POOL_MAX": "1"})
	ctx := context.Background()
	before := h.Scrape()
	require.Equal(t, 1.0, before.Value(metrics.PoolMaxConns, of()))

	// With no connection left, the next acquire has to open one: an
	// acquire that found the pool empty, and time spent waiting.
	p.svc.Pool.Reset()
	conn, err := p.svc.Pool.Acquire(ctx)
	require.NoError(t, err)
	held := h.Scrape() // its outbox query waits for the held connection, then gives up
	conn.Release()
	after := h.Scrape()

	tests := []struct {
		name  string
		check func(t *testing.T)
	}{
		{"the only connection in use", func(t *testing.T) {
			assert.Equal(t, 1.0, held.Value(metrics.PoolAcquiredConns, of()))
		}},
		{"the outbox query timed out: up 0, the scrape answered", func(t *testing.T) {
			assert.Equal(t, 0.0, held.Value(metrics.OutboxStatsUp, of()))
			assert.False(t, held.Has(metrics.OutboxQueuedEvents, of()))
		}},
		{"the query's acquire was given up", func(t *testing.T) {
			assert.Greater(t, after.Value(metrics.PoolCanceledAcquires, of()), before.Value(metrics.PoolCanceledAcquires, of()))
		}},
		{"an acquire found the pool empty and waited", func(t *testing.T) {
			assert.Greater(t, after.Value(metrics.PoolEmptyAcquires, of()), before.Value(metrics.PoolEmptyAcquires, of()))
			assert.Greater(t, after.Value(metrics.PoolEmptyAcquireWait, of()), before.Value(metrics.PoolEmptyAcquireWait, of()))
		}},
		{"released: the query answers again", func(t *testing.T) {
			assert.Equal(t, 1.0, after.Value(metrics.OutboxStatsUp, of()))
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, tc.check)
	}
}

func TestJobMetricsCountActiveAndFailed(t *testing.T) {
	reg := metrics.New()
	srv := httptest.NewServer(reg.Handler())
	t.Cleanup(srv.Close)
	a, b := reg.Job("snapshot", "snapshot"), reg.Job("restore", "restore")
	// The steps run in order; each checks both jobs' series after it.
	tests := []struct {
		name                  string
		step                  func()
		active, failed, ended float64 // the snapshot job's
		restoreActive         float64
	}{
		{"created: zero series exist", func() {}, 0, 0, 0, 0},
		{"one started", a.Start, 1, 0, 0, 0},
		{"two started", a.Start, 2, 0, 0, 0},
		{"the other job is counted apart", b.Start, 2, 0, 0, 1},
		{"one failed", func() { a.Done(errors.New("disk full")) }, 1, 1, 1, 1},
		{"one succeeded", func() { a.Done(nil) }, 0, 1, 2, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.step()
			got := fntest.ScrapeURL(t, srv.URL)
			snap := map[string]string{"function": "snapshot", "job": "snapshot"}
			assert.Equal(t, tc.active, got.Value(metrics.JobsActive, snap))
			assert.Equal(t, tc.failed, got.Value(metrics.JobsFinishedTotal, map[string]string{"job": "snapshot", "outcome": string(metrics.JobFailed)}))
			assert.Equal(t, tc.ended, got.Value(metrics.JobsFinishedTotal, snap))
			assert.Equal(t, tc.restoreActive, got.Value(metrics.JobsActive, map[string]string{"job": "restore"}))
		})
	}
}

func TestANilRegistryRecordsNothing(t *testing.T) {
	var reg *metrics.Registry
	tests := []struct {
		name string
		call func()
	}{
		{"an event", func() { reg.Event("f", "t", metrics.Handled) }},
		{"a request", func() { reg.Request("f", "GET /api/v1/x", http.StatusOK) }},
		{"a job", func() { j := reg.Job("f", "j"); j.Start(); j.Done(errors.New("x")) }},
		{"a collector", func() {
			forget, err := reg.Register("f", metrics.Outbox(func(context.Context) (metrics.OutboxStats, error) {
				return metrics.OutboxStats{}, nil
			}))
			require.NoError(t, err)
			forget()
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { assert.NotPanics(t, tc.call) })
	}
}

func TestRegisterLabelsByFunctionAndForgets(t *testing.T) {
	reg := metrics.New()
	srv := httptest.NewServer(reg.Handler())
	t.Cleanup(srv.Close)
	stats := func(n int64) func(context.Context) (metrics.OutboxStats, error) {
		return func(context.Context) (metrics.OutboxStats, error) {
			return metrics.OutboxStats{Queued: n, OldestAge: time.Duration(n) * time.Second}, nil
		}
	}
	forgetA, err := reg.Register("a", metrics.Outbox(stats(1)))
	require.NoError(t, err)
	_, err = reg.Register("b", metrics.Outbox(stats(2)))
	require.NoError(t, err)
	_, err = reg.Register("b", metrics.Outbox(stats(3)))
	require.Error(t, err, "one function's collector registered twice")

	tests := []struct {
		name     string
		step     func()
		a, b     float64
		hasA     bool
		oldestOf float64
	}{
		{"two functions, one series each", func() {}, 1, 2, true, 2},
		{"a stopped: its series are gone", forgetA, 0, 2, false, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.step()
			got := fntest.ScrapeURL(t, srv.URL)
			assert.Equal(t, tc.a, got.Value(metrics.OutboxQueuedEvents, map[string]string{"function": "a"}))
			assert.Equal(t, tc.hasA, got.Has(metrics.OutboxQueuedEvents, map[string]string{"function": "a"}))
			assert.Equal(t, tc.b, got.Value(metrics.OutboxQueuedEvents, map[string]string{"function": "b"}))
			assert.Equal(t, tc.oldestOf, got.Value(metrics.OutboxOldestAge, map[string]string{"function": "b"}))
		})
	}
}

func TestStatusClass(t *testing.T) {
	tests := []struct {
		name   string
		status int
		want   string
	}{
		{"nothing written is a 200", 0, "2xx"},
		{"ok", http.StatusOK, "2xx"},
		{"no content", http.StatusNoContent, "2xx"},
		{"not found", http.StatusNotFound, "4xx"},
		{"unavailable", http.StatusServiceUnavailable, "5xx"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { assert.Equal(t, tc.want, metrics.StatusClass(tc.status)) })
	}
}
