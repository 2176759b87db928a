package function_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/events"
	function "github.com/streamspace-dev/functions/functions/restore"
	"github.com/streamspace-dev/functions/shared/homesnap"
	"github.com/streamspace-dev/functions/shared/kube"
	"github.com/streamspace-dev/functions/shared/kubetest"
)

// breakingPods is the job's real pod client whose chosen execs end as
// Kubernetes' exec path can end one (docs/snapshots.md, "Exec streams can
// be cut short"): the command runs in the pod, but only the first cut
// bytes of its stdin or its stdout get through, and the exec then reports
// a connection reset when reset is set (the exit status was lost), else
// what the command returned (a success status after a stream cut short, or
// the command's own failure on a cut input). breaks names, per command
// (clear, extract, list, chown), which of its execs break, counted from 1.
type breakingPods struct {
	function.Pods
	names map[string]string

	mu     sync.Mutex
	execs  map[string]int
	breaks map[string][]int
	cut    int64
	reset  bool
	// then, when set, runs after each broken exec, before it returns.
	then func()
}

// newBreakingPods wraps p; the command names are those of
// function.Commands with the session's owner.
func newBreakingPods(p function.Pods, uid int) *breakingPods {
	names := map[string]string{}
	for i, cmd := range function.Commands(uid, uid) {
		names[strings.Join(cmd, " ")] = []string{"clear", "extract", "list", "chown"}[i]
	}
	return &breakingPods{Pods: p, names: names, execs: map[string]int{}}
}

// onBreak sets then.
func (b *breakingPods) onBreak(then func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.then = then
}

// set chooses the execs that break from now on and starts counting again.
func (b *breakingPods) set(breaks map[string][]int, cut int64, reset bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.execs, b.breaks, b.cut, b.reset = map[string]int{}, breaks, cut, reset
}

// counts is how many times each command was exec'd since set.
func (b *breakingPods) counts() map[string]int {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := map[string]int{}
	for k, v := range b.execs {
		out[k] = v
	}
	return out
}

func (b *breakingPods) Exec(ctx context.Context, pod kube.Pod, cmd []string, s kube.Streams) error {
	name, ok := b.names[strings.Join(cmd, " ")]
	if !ok {
		// The backup's tar: homesnap's own retry is tested in
		// shared/homesnap.
		return b.Pods.Exec(ctx, pod, cmd, s)
	}
	b.mu.Lock()
	b.execs[name]++
	brk := slices.Contains(b.breaks[name], b.execs[name])
	cut, reset, then := b.cut, b.reset, b.then
	b.mu.Unlock()
	if !brk {
		return b.Pods.Exec(ctx, pod, cmd, s)
	}
	if s.Stdin != nil {
		s.Stdin = io.LimitReader(s.Stdin, cut)
	}
	if s.Stdout != nil {
		s.Stdout = &kubetest.CutWriter{W: s.Stdout, Left: cut}
	}
	err := b.Pods.Exec(ctx, pod, cmd, s)
	if then != nil {
		then()
	}
	if reset {
		return kubetest.Reset(pod.Name)
	}
	return err
}

// emptyDir removes everything under dir, keeping dir.
func emptyDir(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	for _, e := range ents {
		require.NoError(t, os.RemoveAll(filepath.Join(dir, e.Name())))
	}
}

// TestRestoreBrokenExecStreams breaks the job's execs the ways Kubernetes'
// exec path breaks them: a command broken once runs again and the job ends
// as it would have; a clear, an extract, a listing or a chown broken at
// every attempt, or a command's own failure, fails the job as before:
// rolled back, or the rollback failed, loudly. failRead makes the
// extract's storage read drop after 1 KiB (not an exec: never run again),
// so that the job rolls back and the rollback's execs can break.
func TestRestoreBrokenExecStreams(t *testing.T) {
	var (
		mu       sync.Mutex
		snapKey  string
		failRead bool
		bp       *breakingPods
		objects  *faultyObjects
	)
	w := newWorld(t, func(w *world, o function.Objects, p function.Pods) (function.Objects, function.Pods) {
		bp = newBreakingPods(p, w.uid)
		objects = &faultyObjects{Objects: o, onGet: func(ctx context.Context, key string, n int, body io.ReadCloser) io.ReadCloser {
			mu.Lock()
			defer mu.Unlock()
			if key != snapKey || n != 2 || !failRead {
				return nil
			}
			return &afterBytes{ReadCloser: body, left: 1 << 10, then: func() (io.Reader, bool) { return nil, false }}
		}}
		return objects, bp
	})
	reads := func(key string) int {
		objects.mu.Lock()
		defer objects.mu.Unlock()
		return objects.gets[key]
	}
	src := snapshotDir(t)
	broken := fmt.Sprintf("attempt %d of %d", kube.Attempts, kube.Attempts)

	tests := []struct {
		name     string
		breaks   map[string][]int
		cut      int64
		reset    bool
		failRead bool
		// execs is how many times each command ran.
		execs map[string]int
		// reads is how many times the snapshot's object was read.
		reads int
		// failed is the phase the job failed in, "" when it completes.
		failed                     function.Phase
		rolledBack, rollbackFailed bool
		reason                     []string
	}{
		{name: "a reset clear is cleared again", breaks: map[string][]int{"clear": {1}}, reset: true,
			execs: map[string]int{"clear": 2, "extract": 1, "list": 1, "chown": 1}, reads: 2},
		{name: "a reset extract is cleared and extracted again from a fresh read", breaks: map[string][]int{"extract": {1}}, cut: 64 << 10, reset: true,
			execs: map[string]int{"clear": 2, "extract": 2, "list": 1, "chown": 1}, reads: 3},
		{name: "an extract reset twice is made a third time", breaks: map[string][]int{"extract": {1, 2}}, cut: 64 << 10, reset: true,
			execs: map[string]int{"clear": 3, "extract": 3, "list": 1, "chown": 1}, reads: 4},
		{name: "a reset listing is listed again", breaks: map[string][]int{"list": {1}}, cut: 40, reset: true,
			execs: map[string]int{"clear": 1, "extract": 1, "list": 2, "chown": 1}, reads: 2},
		{name: "a listing cut short inside a name with a success status is listed again", breaks: map[string][]int{"list": {1}}, cut: 40,
			execs: map[string]int{"clear": 1, "extract": 1, "list": 2, "chown": 1}, reads: 2},
		{name: "a listing that lost every name with a success status is listed again", breaks: map[string][]int{"list": {1}}, cut: 0,
			execs: map[string]int{"clear": 1, "extract": 1, "list": 2, "chown": 1}, reads: 2},
		{name: "a reset chown is run again", breaks: map[string][]int{"chown": {1}}, reset: true,
			execs: map[string]int{"clear": 1, "extract": 1, "list": 1, "chown": 2}, reads: 2},
		{name: "a reset during the rollback's clear is cleared again", failRead: true, breaks: map[string][]int{"clear": {2}}, reset: true,
			execs: map[string]int{"clear": 3, "extract": 2, "list": 1, "chown": 1}, reads: 2,
			failed: function.PhaseExtracting, rolledBack: true, reason: []string{"connection reset by peer", "rolled back"}},
		{name: "a reset during the rollback's extract is cleared and extracted again", failRead: true, breaks: map[string][]int{"extract": {2}},
			cut: 2 << 10, reset: true,
			execs: map[string]int{"clear": 3, "extract": 3, "list": 1, "chown": 1}, reads: 2,
			failed: function.PhaseExtracting, rolledBack: true, reason: []string{"connection reset by peer", "rolled back"}},
		{name: "a listing broken at every attempt fails and rolls back", breaks: map[string][]int{"list": {1, 2, 3}}, cut: 40, reset: true,
			execs: map[string]int{"clear": 2, "extract": 2, "list": 4, "chown": 1}, reads: 2,
			failed: function.PhaseVerifying, rolledBack: true, reason: []string{"list /config", "connection reset by peer", broken, "rolled back"}},
		{name: "an extract broken at every attempt fails and rolls back", breaks: map[string][]int{"extract": {1, 2, 3}}, cut: 64 << 10, reset: true,
			execs: map[string]int{"clear": 4, "extract": 4, "list": 1, "chown": 1}, reads: 4,
			failed: function.PhaseExtracting, rolledBack: true, reason: []string{"extract into /config", broken, "rolled back"}},
		{name: "a rollback whose clear breaks at every attempt fails loudly", failRead: true, breaks: map[string][]int{"clear": {2, 3, 4}}, reset: true,
			execs: map[string]int{"clear": 4, "extract": 1}, reads: 2,
			failed: function.PhaseExtracting, rollbackFailed: true, reason: []string{"rollback failed: clear /config", broken}},
		{name: "tar's own exit status is not run again", breaks: map[string][]int{"extract": {1}}, cut: 64 << 10,
			execs: map[string]int{"clear": 2, "extract": 2, "list": 1, "chown": 1}, reads: 2,
			failed: function.PhaseExtracting, rolledBack: true, reason: []string{"extract into /config: command exited with status 2", "rolled back"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			emptyDir(t, w.pod.Dir)
			writeTree(t, w.pod.Dir, homeBefore)
			ownHome(t, w)
			before := fileState(t, w.pod.Dir)
			snap := w.storeSnapshot(t, src)
			mu.Lock()
			snapKey, failRead = homesnap.ArchiveKey(w.user, w.session, snap), tc.failRead
			mu.Unlock()
			bp.set(tc.breaks, tc.cut, tc.reset)
			id, e := w.request(t, snap)
			require.Equal(t, 2, w.deliver(t, e)/100)

			row := w.job(t, snap, id)
			assert.Equal(t, tc.execs, bp.counts(), "execs per command")
			assert.Equal(t, tc.reads, reads(snapKey), "reads of the snapshot's object")
			if tc.failed == "" {
				assert.Equal(t, "completed", row.Status, row.Error)
				assert.Equal(t, jobState{Phase: string(function.PhaseCompleted), Backup: row.Backup}, stateOf(t, w.h, id))
				assert.Equal(t, contentState(t, src), contentState(t, w.pod.Dir), "/config is the snapshot")
				for path, v := range fileState(t, w.pod.Dir) {
					if !strings.HasPrefix(v, "link") {
						assert.Contains(t, v, " 4242:4242", path)
					}
				}
				waitEvent(t, w.h, events.RestoreCompleted, id, &events.RestoreCompletedData{})
				return
			}
			assert.Equal(t, "failed", row.Status)
			for _, r := range tc.reason {
				assert.Contains(t, row.Error, r)
			}
			assert.Equal(t, jobState{Phase: string(function.PhaseFailed), FailedPhase: string(tc.failed), Backup: row.Backup,
				RolledBack: tc.rolledBack, RollbackFailed: tc.rollbackFailed}, stateOf(t, w.h, id))
			if tc.rolledBack {
				assert.Equal(t, before, fileState(t, w.pod.Dir), "/config is as it was before the restore")
			}
			var d events.RestoreFailedData
			waitEvent(t, w.h, events.RestoreFailed, id, &d)
			assert.Equal(t, tc.rolledBack, d.RolledBack)
			assert.Equal(t, tc.rollbackFailed, d.RollbackFailed)
			notified := 0
			if tc.rollbackFailed {
				notified = 1
			}
			assert.Equal(t, notified, w.h.Count(`select count(*) from notifications
				where user_id = 'root' and type = 'snapshot.restore.rollback_failed' and data->>'restoreJobId' = $1`, id),
				"the admins are told of a failed rollback, and only of one")
		})
	}
}

// breakingWorld is a world whose execs named in breaks are reset
// (breakingPods), with homeBefore in the pod and a snapshot stored.
func breakingWorld(t *testing.T, breaks map[string][]int) (*world, *breakingPods, string) {
	var bp *breakingPods
	w := newWorld(t, func(w *world, o function.Objects, p function.Pods) (function.Objects, function.Pods) {
		bp = newBreakingPods(p, w.uid)
		return o, bp
	})
	writeTree(t, w.pod.Dir, homeBefore)
	snap := w.storeSnapshot(t, snapshotDir(t))
	bp.set(breaks, 0, true)
	return w, bp, snap
}

// TestRestoreBrokenStreamOfAGonePod resets the listing's stream and deletes
// the pod: the pod is not found again by its label, so the listing is not
// run again, and the rollback cannot reach the pod either: the job says so
// loudly.
func TestRestoreBrokenStreamOfAGonePod(t *testing.T) {
	w, bp, snap := breakingWorld(t, map[string][]int{"list": {1}})
	bp.onBreak(func() { w.pod.Delete(t) })
	id, e := w.request(t, snap)
	require.Equal(t, 2, w.deliver(t, e)/100)

	row := w.job(t, snap, id)
	assert.Equal(t, "failed", row.Status)
	assert.Equal(t, map[string]int{"clear": 2, "extract": 1, "list": 1}, bp.counts(),
		"the listing is not run again; the rollback's clear finds no pod")
	assert.Contains(t, row.Error, "not run again: session "+w.session+" has no running pod")
	assert.Contains(t, row.Error, "rollback failed: clear /config")
	assert.Equal(t, jobState{Phase: string(function.PhaseFailed), FailedPhase: string(function.PhaseVerifying), Backup: row.Backup,
		RollbackFailed: true}, stateOf(t, w.h, id))
	var d events.RestoreFailedData
	waitEvent(t, w.h, events.RestoreFailed, id, &d)
	assert.True(t, d.RollbackFailed)
	assert.Equal(t, 1, w.h.Count(`select count(*) from notifications
		where user_id = 'root' and type = 'snapshot.restore.rollback_failed' and data->>'restoreJobId' = $1`, id))
}

// TestRestoreRollbackStopsWhenTheLeaseIsLost breaks the listing at every
// attempt, so the job rolls back, and breaks the rollback's extract after
// another owner took the job's lease: the extract is not run again, and
// the job records nothing, leaving the rollback and its record to the new
// owner.
func TestRestoreRollbackStopsWhenTheLeaseIsLost(t *testing.T) {
	w, bp, snap := breakingWorld(t, map[string][]int{"list": {1, 2, 3}, "extract": {2}})
	bp.onBreak(func() {
		if bp.counts()["extract"] != 2 {
			return
		}
		// Another owner takes the lease over; the job learns it at its
		// next heartbeat, sent here at once.
		l := w.lease.Load()
		sqlExec(t, w.h, `update job_leases set owner = 'another', lease_until = now() + interval '1 hour' where name = $1`, l.Name)
		require.Error(t, l.Heartbeat(context.Background()))
	})
	id, e := w.request(t, snap)
	require.Equal(t, 2, w.deliver(t, e)/100)

	assert.Equal(t, map[string]int{"clear": 2, "extract": 2, "list": 3}, bp.counts(),
		"the rollback's extract is not run again once the lease is lost")
	row := w.job(t, snap, id)
	assert.Equal(t, "in_progress", row.Status, "the owner that lost the lease records no outcome")
	assert.False(t, row.RollbackFailed)
	assert.Equal(t, string(function.PhaseRollingBack), stateOf(t, w.h, id).Phase)
	assert.Equal(t, 0, w.h.Count(`select count(*) from notifications where data->>'restoreJobId' = $1`, id),
		"no admin is told of a rollback failure that was not one")
}
