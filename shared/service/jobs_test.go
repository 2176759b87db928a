package service_test

import (
	"errors"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/errs"
	"github.com/streamspace-dev/functions/shared/metrics"
	"github.com/streamspace-dev/functions/shared/service"
)

// activeJobs reads the jobs_active series of job from reg.
func activeJobs(t *testing.T, reg *metrics.Registry, job string) float64 {
	t.Helper()
	families, err := reg.Gatherer().Gather()
	require.NoError(t, err)
	for _, f := range families {
		if f.GetName() != metrics.JobsActive {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "job" && l.GetValue() == job {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	t.Fatalf("no %s series for job %s", metrics.JobsActive, job)
	return 0
}

// TestJobSlots takes slots up to the limit: one more is refused as
// Unavailable (503 with Retry-After on the event path) and counts nothing;
// a job's end frees its slot, once however often done is called.
func TestJobSlots(t *testing.T) {
	tests := []struct {
		name  string
		limit int
		want  int // slots granted before the first refusal
	}{
		{name: "one", limit: 1, want: 1},
		{name: "two", limit: 2, want: 2},
		{name: "zero means one", limit: 0, want: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reg := metrics.New()
			jobs := service.NewJobs(tc.limit, reg.Job("fn", "export"))
			assert.Equal(t, tc.want, jobs.Limit())

			var done []func(error)
			for range tc.want {
				d, err := jobs.TryStart()
				require.NoError(t, err)
				done = append(done, d)
			}
			assert.Equal(t, float64(tc.want), activeJobs(t, reg, "export"))

			_, err := jobs.TryStart()
			require.Error(t, err, "every slot is taken")
			assert.Equal(t, errs.Unavailable, errs.KindOf(err))
			assert.Equal(t, http.StatusServiceUnavailable, errs.EventStatus(err), "the broker retries it")
			assert.Equal(t, float64(tc.want), activeJobs(t, reg, "export"), "a refused job is not counted")

			done[0](errors.New("failed"))
			done[0](nil) // a second call changes nothing
			assert.Equal(t, float64(tc.want-1), activeJobs(t, reg, "export"))
			d, err := jobs.TryStart()
			require.NoError(t, err, "the ended job's slot is free again")
			_, err = jobs.TryStart()
			assert.Error(t, err, "done freed one slot, not two")
			d(nil)
		})
	}
}
