package service

import (
	"sync"

	"github.com/streamspace-dev/functions/shared/errs"
	"github.com/streamspace-dev/functions/shared/metrics"
)

// Jobs bounds how many long jobs of one kind a function runs at once in
// this process, and counts them in its metrics. A job that holds its
// delivery open (a snapshot, a restore) streams through the instance's
// memory; Knative's containerConcurrency cannot bound those streams
// alone, since it counts REST requests too and the all-in-one runs every
// function behind one Service. Each function holds its own Jobs, so in
// the all-in-one each keeps its own cap (docs/snapshots.md, "Streams per
// instance").
type Jobs struct {
	limit   int
	slots   chan struct{}
	metrics *metrics.JobMetrics
}

// NewJobs returns slots for limit jobs at once (at least one), counted in
// m (nil counts nothing).
func NewJobs(limit int, m *metrics.JobMetrics) *Jobs {
	limit = max(limit, 1)
	return &Jobs{limit: limit, slots: make(chan struct{}, limit), metrics: m}
}

// Jobs returns the slots of this function's long job named job, at most
// limit running at once, counted in its job metrics. A function calls it
// once, in Start, and keeps the result: the slots are per call.
func (s *Service) Jobs(job string, limit int) *Jobs { return NewJobs(limit, s.Job(job)) }

// Limit is how many jobs may run at once.
func (j *Jobs) Limit() int { return j.limit }

// TryStart takes a slot for a job and records its start. done, called
// once when the job ends, records the outcome (failed when err is not nil)
// and frees the slot; later calls do nothing.
//
// When every slot is taken it returns an Unavailable error and records
// nothing: on the event path that answers 503 with Retry-After, so the
// broker delivers the job again later. The caller must not have changed
// anything before (no lease, no row), so the refusal leaves no trace.
func (j *Jobs) TryStart() (done func(err error), err error) {
	select {
	case j.slots <- struct{}{}:
	default:
		return nil, errs.E(errs.Unavailable, "all %d job slots of this instance are taken; try again later", j.limit)
	}
	j.metrics.Start()
	var once sync.Once
	return func(err error) {
		once.Do(func() {
			j.metrics.Done(err)
			<-j.slots
		})
	}, nil
}
