package function_test

import (
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/kubetest"
)

// TestJobSlots runs with RESTORE_MAX_JOBS=1 and one job held open (its
// backup's tar waits in the pod until the test releases it): a second
// job's delivery is answered 503 with Retry-After and changes nothing, a
// REST request is answered meanwhile, and once the first job ends the
// redelivery runs.
func TestJobSlots(t *testing.T) {
	w := newWorld(t, nil, map[string]string{"RESTORE_MAX_JOBS": "1"})
	writeTree(t, w.pod.Dir, homeBefore)
	ownHome(t, w)
	// A second running session of the same user, with its own pod.
	other := w.cluster.Kubelet(t).Pod(t, w.ns, kubetest.PodSpec{SessionID: "s-2",
		Env: map[string]string{"PUID": strconv.Itoa(w.uid), "PGID": strconv.Itoa(w.uid)}})
	sqlExec(t, w.h, `insert into sessions (id, user_id, template_name, state, namespace) values ('s-2', $1, 'firefox', 'running', $2)`,
		w.user, w.ns)

	src := snapshotDir(t)
	firstSnap, secondSnap := w.storeSnapshot(t, src), w.storeSnapshot(t, src)
	first, firstEvent := w.request(t, firstSnap)
	second, secondEvent := w.requestInto(t, secondSnap, "s-2")
	secondBefore := stateOf(t, w.h, second)

	release := w.pod.Hold(t)
	firstDone := make(chan int, 1)
	go func() { firstDone <- w.deliver(t, firstEvent) }()
	require.Eventually(t, func() bool { return w.pod.Held() == 1 }, wait, 10*time.Millisecond,
		"the first job holds the only slot, its backup's tar waiting")

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
				assert.Zero(t, w.h.Count(`select count(*) from job_leases where name = $1`, "restore:"+second), "no lease taken")
				assert.Equal(t, "pending", w.job(t, secondSnap, second).Status)
				assert.Equal(t, secondBefore, stateOf(t, w.h, second), "no phase recorded")
				assert.Zero(t, other.Running(), "nothing runs in its pod")
			},
		},
		{
			name: "the first job's status is read",
			do: func(t *testing.T) (int, http.Header) {
				status, header, _ := w.h.DoHeader(http.MethodGet, restorePath(w.session, firstSnap)+"/status", w.h.Token(w.user, authn.User), nil)
				return status, header
			},
			status: http.StatusOK,
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
	assert.Equal(t, 1, w.pod.Held(), "the first job still holds its slot")

	release()
	select {
	case status := <-firstDone:
		assert.Equal(t, 2, status/100)
	case <-time.After(wait):
		t.Fatal("the first job did not end")
	}
	assert.Equal(t, "completed", w.job(t, firstSnap, first).Status)

	require.Equal(t, 2, w.deliver(t, secondEvent)/100, "the redelivery runs once a slot is free")
	row := w.job(t, secondSnap, second)
	assert.Equal(t, "completed", row.Status, row.Error)
	assert.Equal(t, contentState(t, src), contentState(t, other.Dir))
}
