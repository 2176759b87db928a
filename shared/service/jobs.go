package service

import (
	"sync"

	"github.com/streamspace-dev/functions/shared/errs"
)

// JobSlots bounds how many long jobs of one kind a function runs at once
// in this process. A job that holds its delivery open (a snapshot, a
// restore) streams through the instance's memory; Knative's
// containerConcurrency cannot bound those streams, since it counts REST
// requests too and the all-in-one runs every function behind one Service.
// Each function holds its own JobSlots, so in the all-in-one each keeps
// its own cap (docs/snapshots.md, "Streams per instance"). The job's
// metrics stay Job's.
type JobSlots struct {
	limit int
	slots chan struct{}
}

// NewJobSlots returns slots for limit jobs at once (at least one). A
// function makes them once, in Start, and keeps them.
func NewJobSlots(limit int) *JobSlots {
	limit = max(limit, 1)
	return &JobSlots{limit: limit, slots: make(chan struct{}, limit)}
}

// Limit is how many jobs may run at once.
func (j *JobSlots) Limit() int { return j.limit }

// TryStart takes a slot for a job. release, called when the job ends,
// frees it; later calls do nothing.
//
// When every slot is taken it returns an Unavailable error: on the event
// path that answers 503 with Retry-After, so the broker delivers the job
// again later. The caller takes the slot before changing anything (no
// lease, no row), so a refusal leaves no trace.
func (j *JobSlots) TryStart() (release func(), err error) {
	select {
	case j.slots <- struct{}{}:
	default:
		return nil, errs.E(errs.Unavailable, "all %d job slots of this instance are taken; try again later", j.limit)
	}
	var once sync.Once
	return func() { once.Do(func() { <-j.slots }) }, nil
}
