package metrics

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
)

// Pool is a collector of a pgx pool's statistics, read from pgxpool.Stat at
// scrape time (no query). pgx counts no acquires waiting right now; the
// rate of db_pool_empty_acquire_wait_seconds_total is their average number
// over the rate's window (the total time spent waiting per second of
// time), which is what an alert on a persistently waiting pool needs.
func Pool(pool *pgxpool.Pool) prometheus.Collector { return poolCollector{pool} }

type poolCollector struct{ pool *pgxpool.Pool }

var (
	poolAcquired = prometheus.NewDesc(PoolAcquiredConns,
		"Connections of the database pool in use now.", nil, nil)
	poolIdle = prometheus.NewDesc(PoolIdleConns,
		"Idle connections of the database pool.", nil, nil)
	poolConstructing = prometheus.NewDesc(PoolConstructing,
		"Connections of the database pool being opened now.", nil, nil)
	poolTotal = prometheus.NewDesc(PoolTotalConns,
		"Connections the database pool holds: in use, idle and being opened.", nil, nil)
	poolMax = prometheus.NewDesc(PoolMaxConns,
		"The most connections the database pool may hold (DATABASE_POOL_MAX).", nil, nil)
	poolAcquires = prometheus.NewDesc(PoolAcquiresTotal,
		"Connections acquired from the database pool.", nil, nil)
	poolEmptyAcquires = prometheus.NewDesc(PoolEmptyAcquires,
		"Acquires that found no idle connection and had to wait for one to be opened or released.", nil, nil)
	poolCanceled = prometheus.NewDesc(PoolCanceledAcquires,
		"Acquires given up before a connection came (a request or a timeout ended).", nil, nil)
	poolEmptyWait = prometheus.NewDesc(PoolEmptyAcquireWait,
		"Seconds acquires spent waiting for a connection; its rate is the average number of waiters.", nil, nil)
	poolAcquireWait = prometheus.NewDesc(PoolAcquireWait,
		"Seconds spent in every successful acquire, fast ones included.", nil, nil)
)

func (poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		poolAcquired, poolIdle, poolConstructing, poolTotal, poolMax,
		poolAcquires, poolEmptyAcquires, poolCanceled, poolEmptyWait, poolAcquireWait,
	} {
		ch <- d
	}
}

func (c poolCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.pool.Stat()
	gauge := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
	}
	counter := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v)
	}
	gauge(poolAcquired, float64(s.AcquiredConns()))
	gauge(poolIdle, float64(s.IdleConns()))
	gauge(poolConstructing, float64(s.ConstructingConns()))
	gauge(poolTotal, float64(s.TotalConns()))
	gauge(poolMax, float64(s.MaxConns()))
	counter(poolAcquires, float64(s.AcquireCount()))
	counter(poolEmptyAcquires, float64(s.EmptyAcquireCount()))
	counter(poolCanceled, float64(s.CanceledAcquireCount()))
	counter(poolEmptyWait, s.EmptyAcquireWaitTime().Seconds())
	counter(poolAcquireWait, s.AcquireDuration().Seconds())
}

// OutboxStats is what a scrape reads of one function's outbox.
type OutboxStats struct {
	// Queued is how many emitted events wait in event_outbox.
	Queued int64
	// OldestAge is how long the oldest of them has waited; 0 when none.
	OldestAge time.Duration
	// DeadLetters is how many of the function's events are in
	// event_dead_letters, waiting for an operator.
	DeadLetters int64
}

// StatsTimeout bounds the outbox query of one scrape: a database that is
// slow or unreachable costs the scrape this long at most, and shows as
// outbox_stats_up 0.
const StatsTimeout = 2 * time.Second

// Outbox is a collector of a function's outbox, read by stats at scrape
// time. When stats fails, the backlog series are left out (an alert on a
// stale zero would be wrong) and outbox_stats_up is 0; the scrape itself
// succeeds.
func Outbox(stats func(context.Context) (OutboxStats, error)) prometheus.Collector {
	return outboxCollector{stats}
}

type outboxCollector struct {
	stats func(context.Context) (OutboxStats, error)
}

var (
	outboxQueued = prometheus.NewDesc(OutboxQueuedEvents,
		"Emitted events waiting in event_outbox to be sent to K_SINK. Every instance of a function reports the same number: aggregate with max.", nil, nil)
	outboxOldest = prometheus.NewDesc(OutboxOldestAge,
		"Seconds the oldest event waiting in event_outbox has waited; 0 when none waits.", nil, nil)
	outboxDead = prometheus.NewDesc(OutboxDeadLetters,
		"Events in event_dead_letters: refused by the sink for good or too often, kept for an operator.", nil, nil)
	outboxUp = prometheus.NewDesc(OutboxStatsUp,
		"1 when this scrape could read the outbox's numbers, 0 when the query failed or timed out.", nil, nil)
)

func (outboxCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- outboxQueued
	ch <- outboxOldest
	ch <- outboxDead
	ch <- outboxUp
}

func (c outboxCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), StatsTimeout)
	defer cancel()
	s, err := c.stats(ctx)
	if err != nil {
		ch <- prometheus.MustNewConstMetric(outboxUp, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(outboxUp, prometheus.GaugeValue, 1)
	ch <- prometheus.MustNewConstMetric(outboxQueued, prometheus.GaugeValue, float64(s.Queued))
	ch <- prometheus.MustNewConstMetric(outboxOldest, prometheus.GaugeValue, s.OldestAge.Seconds())
	ch <- prometheus.MustNewConstMetric(outboxDead, prometheus.GaugeValue, float64(s.DeadLetters))
}
