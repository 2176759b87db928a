package function_test

import (
	"net/http"
	"path/filepath"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/events"
)

// TestJobSlots runs with SNAPSHOT_MAX_JOBS=1 and one job held open (its
// pod's tar waits until the test releases it): a second job's delivery is
// answered 503 with Retry-After and changes nothing, REST requests are
// answered meanwhile, and once the first job ends the redelivery runs.
func TestJobSlots(t *testing.T) {
	w := newWorld(t, opts{env: map[string]string{"SNAPSHOT_MAX_JOBS": "1"}})
	pod := w.pod(t, "s-1")
	write(t, filepath.Join(pod.Dir, "notes.txt"), []byte("hello"))
	release := pod.Hold(t)

	first := w.create(t, "s-1")
	firstEvent := w.requested(t, first)
	second := w.create(t, "s-1")
	secondEvent := w.requested(t, second)

	firstDone := make(chan int, 1)
	go func() {
		status, _ := w.h.Deliver(firstEvent, false)
		firstDone <- status
	}()
	require.Eventually(t, func() bool { return pod.Held() == 1 }, 2*time.Minute, 10*time.Millisecond,
		"the first job holds the only slot, its tar waiting")

	tests := []struct {
		name   string
		do     func(t *testing.T) (int, http.Header)
		status int
		check  func(t *testing.T, header http.Header)
	}{
		{
			name:   "a second job's delivery is refused and changes nothing",
			do:     func(t *testing.T) (int, http.Header) { return w.h.DeliverHeader(secondEvent) },
			status: http.StatusServiceUnavailable,
			check: func(t *testing.T, header http.Header) {
				assert.NotEmpty(t, header.Get("Retry-After"), "the broker is told when to try again")
				assert.Zero(t, w.h.Count(`select count(*) from job_leases where name = $1`, "snapshot:"+second), "no lease taken")
				assert.Equal(t, "creating", string(w.snapshot(t, "s-1", second).Status))
				assert.Empty(t, w.eventsFor(events.SnapshotFailed, second))
			},
		},
		{
			name: "the session's snapshots are listed",
			do: func(t *testing.T) (int, http.Header) {
				status, header, _ := w.h.DoHeader(http.MethodGet, "/api/v1/sessions/s-1/snapshots", w.alice(), nil)
				return status, header
			},
			status: http.StatusOK,
		},
		{
			name: "a snapshot's status is read",
			do: func(t *testing.T) (int, http.Header) {
				status, header, _ := w.h.DoHeader(http.MethodGet, "/api/v1/sessions/s-1/snapshots/"+first, w.alice(), nil)
				return status, header
			},
			status: http.StatusOK,
		},
		{
			name: "a snapshot is asked for",
			do: func(t *testing.T) (int, http.Header) {
				status, header, _ := w.h.DoHeader(http.MethodPost, "/api/v1/sessions/s-1/snapshots", w.alice(), map[string]any{"name": "while busy"})
				return status, header
			},
			status: http.StatusCreated,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, header := tc.do(t)
			require.Equal(t, tc.status, status)
			if tc.check != nil {
				tc.check(t, header)
			}
		})
	}
	assert.Equal(t, 1, pod.Held(), "the first job still holds its slot")

	release()
	select {
	case status := <-firstDone:
		assert.Equal(t, http.StatusAccepted, status)
	case <-time.After(3 * time.Minute):
		t.Fatal("the first job did not end")
	}
	assert.Equal(t, "available", string(w.snapshot(t, "s-1", first).Status))

	redeliver := func(e cloudevents.Event) int {
		status, _ := w.h.Deliver(e, false)
		return status
	}
	assert.Equal(t, http.StatusAccepted, redeliver(secondEvent), "the redelivery runs once a slot is free")
	assert.Equal(t, "available", string(w.snapshot(t, "s-1", second).Status))
}
