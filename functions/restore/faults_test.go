package function_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/streamspace-dev/functions/events"
	function "github.com/streamspace-dev/functions/functions/restore"
	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/homesnap"
	"github.com/streamspace-dev/functions/shared/objstore"
)

// faultyObjects wraps the job's storage: onGet, when it returns a reader,
// replaces the body of a Get. It stands in for faults a real MinIO cannot be
// made to show at a chosen byte: a connection dropped mid-stream, a pod
// that disappears while it is fed, an owner that stops.
type faultyObjects struct {
	function.Objects
	mu    sync.Mutex
	gets  map[string]int
	onGet func(ctx context.Context, key string, n int, body io.ReadCloser) io.ReadCloser
}

func (f *faultyObjects) Get(ctx context.Context, key string, pin objstore.Pin) (io.ReadCloser, objstore.Object, error) {
	body, obj, err := f.Objects.Get(ctx, key, pin)
	if err != nil {
		return body, obj, err
	}
	f.mu.Lock()
	if f.gets == nil {
		f.gets = map[string]int{}
	}
	f.gets[key]++
	n := f.gets[key]
	f.mu.Unlock()
	if r := f.onGet(ctx, key, n, body); r != nil {
		return r, obj, nil
	}
	return body, obj, nil
}

// afterBytes passes n bytes of body, then calls then, whose result is the
// rest of the stream.
type afterBytes struct {
	io.ReadCloser
	left int64
	then func() (io.Reader, bool)
	rest io.Reader
}

func (a *afterBytes) Read(p []byte) (int, error) {
	if a.rest != nil {
		return a.rest.Read(p)
	}
	if a.left <= 0 {
		r, ok := a.then()
		if !ok {
			return 0, errors.New("connection reset by peer")
		}
		a.rest = r
		return r.Read(p)
	}
	if int64(len(p)) > a.left {
		p = p[:a.left]
	}
	n, err := a.ReadCloser.Read(p)
	a.left -= int64(n)
	return n, err
}

// worldWith starts a world whose storage runs onGet; the snapshot archive
// key is passed on so the fault can pick its read.
func worldWith(t *testing.T, onGet func(w *world, ctx context.Context, key string, n int, body io.ReadCloser) io.ReadCloser) *world {
	return newWorld(t, func(w *world, o function.Objects, p function.Pods) (function.Objects, function.Pods) {
		return &faultyObjects{Objects: o, onGet: func(ctx context.Context, key string, n int, body io.ReadCloser) io.ReadCloser {
			return onGet(w, ctx, key, n, body)
		}}, p
	})
}

// ownHome gives /config's files to the session's user, as they are in a
// session, so that "identical" includes owners after a chown -R.
func ownHome(t *testing.T, w *world) {
	t.Helper()
	require.NoError(t, exec.Command("chown", "-R", strconv.Itoa(w.uid)+":"+strconv.Itoa(w.uid), w.pod.Dir).Run())
}

// hostile builds a tar.gz of ents with no sanitising; a negative size
// claims that many bytes and then stops writing (a bomb's header).
type hostileEntry struct {
	name, link string
	typ        byte
	mode       int64
	body       string
	claim      int64
}

func hostile(t *testing.T, ents ...hostileEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, e := range ents {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: e.mode, Size: int64(len(e.body)),
			ModTime: time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC)}
		if e.claim > 0 {
			h.Size = e.claim
		}
		require.NoError(t, tw.WriteHeader(h))
		if e.claim > 0 {
			// A bomb's first MiB; the rest never comes.
			_, err := tw.Write(make([]byte, 1<<20))
			require.NoError(t, err)
			require.NoError(t, zw.Close())
			return buf.Bytes()
		}
		_, err := io.WriteString(tw, e.body)
		require.NoError(t, err)
	}
	require.NoError(t, tw.Close())
	require.NoError(t, zw.Close())
	return buf.Bytes()
}

// TestRestoreVetFailureLeavesConfigUntouched stores hostile archives whose
// manifests are right about them, as a session could have produced, and
// checks that the job fails before anything touches the pod: every file of
// /config hashes the same, and no backup was taken.
func TestRestoreVetFailureLeavesConfigUntouched(t *testing.T) {
	w := newWorld(t, nil)
	writeTree(t, w.pod.Dir, homeBefore)
	ownHome(t, w)
	before := fileState(t, w.pod.Dir)
	dir := hostileEntry{name: "./", typ: tar.TypeDir, mode: 0o755}
	good := hostileEntry{name: "./a.txt", typ: tar.TypeReg, mode: 0o644, body: "fine"}
	goodArchive := hostile(t, dir, good)

	tests := []struct {
		name   string
		data   []byte
		man    map[string]any
		reason string
	}{
		{name: "traversal", data: hostile(t, dir, good, hostileEntry{name: "../evil", typ: tar.TypeReg, mode: 0o644, body: "x"}),
			reason: "parent directory reference"},
		{name: "absolute path", data: hostile(t, dir, hostileEntry{name: "/etc/cron.d/evil", typ: tar.TypeReg, mode: 0o644, body: "x"}),
			reason: "absolute path"},
		{name: "symlink escape", data: hostile(t, dir, hostileEntry{name: "./etc", typ: tar.TypeSymlink, link: "../../../etc", mode: 0o777},
			hostileEntry{name: "./etc/passwd", typ: tar.TypeReg, mode: 0o644, body: "x"}), reason: "leaves the root"},
		{name: "two-link chain", data: hostile(t, dir, hostileEntry{name: "a", typ: tar.TypeSymlink, link: "d/..", mode: 0o777},
			hostileEntry{name: "d", typ: tar.TypeSymlink, link: ".", mode: 0o777}), reason: "earlier link resolves through"},
		{name: "hardlink to outside", data: hostile(t, dir, hostileEntry{name: "h", typ: tar.TypeLink, link: "../../etc/shadow"}),
			reason: "hardlink target"},
		{name: "device node", data: hostile(t, dir, hostileEntry{name: "./mem", typ: tar.TypeChar, mode: 0o666}),
			reason: "device node"},
		{name: "setuid file", data: hostile(t, dir, hostileEntry{name: "./su", typ: tar.TypeReg, mode: 0o4755, body: "#!/bin/sh"}),
			reason: "setuid"},
		{name: "10 GB bomb behind a 1 MiB manifest", data: hostile(t, dir, hostileEntry{name: "./zeros", typ: tar.TypeReg, mode: 0o644, claim: 10 << 30}),
			man: map[string]any{"entries": 2, "contentBytes": 1 << 20}, reason: "exceed 1048576 bytes"},
		{name: "checksum mismatch", data: goodArchive,
			man: map[string]any{"sha256": strings.Repeat("ab", 32)}, reason: "does not match the manifest"},
		{name: "truncated archive", data: goodArchive[:len(goodArchive)-8],
			man: map[string]any{"entries": 2, "contentBytes": 4}, reason: "truncated"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			snap := w.storeArchive(t, tc.data, tc.man)
			id, e := w.request(t, snap)
			require.Equal(t, 2, w.deliver(t, e)/100)
			row := w.job(t, snap, id)
			assert.Equal(t, "failed", row.Status)
			assert.Contains(t, row.Error, tc.reason)
			assert.False(t, row.RolledBack)
			assert.False(t, row.RollbackFailed, "nothing was cleared, so nothing was rolled back")
			assert.Empty(t, row.Backup, "no backup is taken of a session whose snapshot fails the vet")
			assert.Equal(t, jobState{Phase: string(function.PhaseFailed), FailedPhase: string(function.PhaseVetting)}, stateOf(t, w.h, id),
				"a job with no backup records its phase too")
			assert.Equal(t, "failed", row.SnapshotStatus, "a snapshot that fails the vet can never be restored")
			assert.Equal(t, before, fileState(t, w.pod.Dir), "/config is byte-identical")
			var d events.RestoreFailedData
			waitEvent(t, w.h, events.RestoreFailed, id, &d)
			assert.False(t, d.RolledBack)
			assert.False(t, d.RollbackFailed)
			assert.Contains(t, d.Reason, tc.reason)
		})
	}
	assert.Equal(t, 0, w.h.Count(`select count(*) from session_snapshots where type = 'pre-restore'`))
}

// TestRestoreRollsBack fails the extract after /config was cleared: the job
// must put the pre-restore backup back, leaving /config as it was.
func TestRestoreRollsBack(t *testing.T) {
	var snapKey string
	w := worldWith(t, func(w *world, ctx context.Context, key string, n int, body io.ReadCloser) io.ReadCloser {
		if key != snapKey || n != 2 {
			return nil
		}
		// The extract's read drops after 1 KiB.
		return &afterBytes{ReadCloser: body, left: 1 << 10, then: func() (io.Reader, bool) { return nil, false }}
	})
	writeTree(t, w.pod.Dir, homeBefore)
	ownHome(t, w)
	before := fileState(t, w.pod.Dir)
	snap := w.storeSnapshot(t, snapshotDir(t))
	snapKey = homesnap.ArchiveKey(w.user, w.session, snap)
	id, e := w.request(t, snap)
	require.Equal(t, 2, w.deliver(t, e)/100)

	row := w.job(t, snap, id)
	assert.Equal(t, "failed", row.Status)
	assert.True(t, row.RolledBack)
	assert.False(t, row.RollbackFailed)
	assert.Contains(t, row.Error, "connection reset by peer")
	assert.Contains(t, row.Error, "rolled back to the pre-restore snapshot "+row.Backup)
	assert.Equal(t, "available", row.SnapshotStatus, "a read that failed says nothing against the snapshot")
	assert.Equal(t, before, fileState(t, w.pod.Dir), "/config is as it was before the restore")
	assert.Equal(t, jobState{Phase: string(function.PhaseFailed), FailedPhase: string(function.PhaseExtracting),
		Backup: row.Backup, RolledBack: true}, stateOf(t, w.h, id))
	var d events.RestoreFailedData
	waitEvent(t, w.h, events.RestoreFailed, id, &d)
	assert.True(t, d.RolledBack)
	assert.False(t, d.RollbackFailed)
	assert.Equal(t, 0, w.h.Count(`select count(*) from notifications`))
	assert.Equal(t, 1.0, w.h.Scrape().Value("streamspace_functions_jobs_finished_total",
		map[string]string{"function": "restore", "job": "restore", "outcome": "failed"}))
}

// TestRestorePodDisappears breaks the pod while the archive streams into
// it: the rollback cannot reach the pod either, so the job says so loudly —
// its row, its event and a notification to every admin.
func TestRestorePodDisappears(t *testing.T) {
	var snapKey string
	w := worldWith(t, func(w *world, ctx context.Context, key string, n int, body io.ReadCloser) io.ReadCloser {
		if key != snapKey || n != 2 {
			return nil
		}
		return &afterBytes{ReadCloser: body, left: 1 << 10, then: func() (io.Reader, bool) {
			w.pod.Break()
			_ = w.cluster.Client.CoreV1().Pods(w.pod.Namespace).Delete(context.Background(), w.pod.Name,
				metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
			return body, true
		}}
	})
	writeTree(t, w.pod.Dir, homeBefore)
	ownHome(t, w)
	snap := w.storeSnapshot(t, snapshotDir(t))
	snapKey = homesnap.ArchiveKey(w.user, w.session, snap)
	id, e := w.request(t, snap)
	require.Equal(t, 2, w.deliver(t, e)/100)

	row := w.job(t, snap, id)
	assert.Equal(t, "failed", row.Status)
	assert.False(t, row.RolledBack)
	assert.True(t, row.RollbackFailed, "the status route says the rollback failed, not only its text")
	assert.Contains(t, row.Error, "rollback failed")
	assert.NotEmpty(t, row.Backup, "the backup was taken before the pod went")
	state := stateOf(t, w.h, id)
	// The killed tar's exit status can be lost over SPDY (docs/snapshots.md):
	// the extract then seems to succeed and the verify finds the pod gone.
	assert.Contains(t, []string{string(function.PhaseExtracting), string(function.PhaseVerifying)}, state.FailedPhase)
	state.FailedPhase = ""
	assert.Equal(t, jobState{Phase: string(function.PhaseFailed), Backup: row.Backup, RollbackFailed: true}, state)
	var d events.RestoreFailedData
	waitEvent(t, w.h, events.RestoreFailed, id, &d)
	assert.False(t, d.RolledBack)
	assert.True(t, d.RollbackFailed, "the event says the rollback failed, not only its text")
	assert.Contains(t, d.Reason, "rollback failed")
	assert.Equal(t, 1, w.h.Count(`select count(*) from notifications
		where user_id = 'root' and type = 'snapshot.restore.rollback_failed' and data->>'restoreJobId' = $1 and data->>'backupSnapshotId' = $2`,
		id, row.Backup), "every admin is told")
	assert.Equal(t, 0, w.h.Count(`select count(*) from notifications where user_id = $1`, w.user))
}

// TestRestoreRedelivery delivers the event again while the job runs, and
// again after its owner stopped renewing its lease.
func TestRestoreRedelivery(t *testing.T) {
	var (
		snapKey string
		entered = make(chan struct{}, 1)
		release = make(chan struct{})
	)
	w := worldWith(t, func(w *world, ctx context.Context, key string, n int, body io.ReadCloser) io.ReadCloser {
		if key != snapKey || n != 2 {
			return nil
		}
		// The first extract waits, with /config already cleared, until the
		// test releases it or its context ends.
		return &afterBytes{ReadCloser: body, left: 0, then: func() (io.Reader, bool) {
			entered <- struct{}{}
			select {
			case <-release:
				return body, true
			case <-ctx.Done():
				return nil, false
			}
		}}
	})
	writeTree(t, w.pod.Dir, homeBefore)
	ownHome(t, w)
	src := snapshotDir(t)
	snap := w.storeSnapshot(t, src)
	snapKey = homesnap.ArchiveKey(w.user, w.session, snap)
	id, e := w.request(t, snap)

	first := make(chan int, 1)
	go func() {
		status, _ := w.h.Deliver(e, false)
		first <- status
	}()
	<-entered
	row := w.job(t, snap, id)
	require.Equal(t, "in_progress", row.Status)
	assert.Equal(t, function.PhaseExtracting, row.Progress.Phase)
	require.NotEmpty(t, row.Backup)
	assert.Equal(t, jobState{Phase: string(function.PhaseExtracting), Backup: row.Backup}, stateOf(t, w.h, id))

	// While it runs: acknowledged, nothing done.
	assert.Equal(t, 2, w.deliver(t, e)/100, "a redelivery while the job runs is acknowledged")
	assert.Equal(t, "in_progress", w.job(t, snap, id).Status)

	// The owner dies: its lease is taken from it, as one that expired would
	// be. Its next heartbeat finds the lease lost and it stops without
	// writing anything more.
	sqlExec(t, w.h, `update job_leases set owner = 'a-dead-pod', lease_until = now() - interval '1 second' where name = $1`, "restore:"+id)
	select {
	case status := <-first:
		assert.Equal(t, 2, status/100)
	case <-time.After(wait):
		t.Fatal("the first owner did not stop after losing its lease")
	}
	assert.Equal(t, "in_progress", w.job(t, snap, id).Status)

	// A redelivery after the lease expired takes the job over, and resumes
	// from the backup the first owner took: /config was already cleared.
	close(release)
	require.Equal(t, 2, w.deliver(t, e)/100)
	row = w.job(t, snap, id)
	assert.Equal(t, "completed", row.Status, row.Error)
	assert.Equal(t, contentState(t, src), contentState(t, w.pod.Dir))
	assert.Equal(t, 1, w.h.Count(`select count(*) from session_snapshots where type = 'pre-restore'`), "one backup, taken once")
	waitEvent(t, w.h, events.RestoreCompleted, id, &events.RestoreCompletedData{})
	assert.Equal(t, 1, countEvents(w, events.RestoreCompleted, id))
}

func countEvents(w *world, typ, job string) int {
	n := 0
	for _, e := range w.h.Sink.Events() {
		var d struct {
			RestoreJobID string `json:"restoreJobId"`
		}
		if e.Type() == typ && e.DataAs(&d) == nil && d.RestoreJobID == job {
			n++
		}
	}
	return n
}

// TestRestoreWithoutAPod restores into a session whose row says running but
// that has no pod (hibernated since): the job fails cleanly before
// anything, and the snapshot is available again.
func TestRestoreWithoutAPod(t *testing.T) {
	w := newWorld(t, nil)
	sqlExec(t, w.h, `insert into sessions (id, user_id, template_name, state, namespace) values ('s-gone', $1, 'firefox', 'running', $2)`,
		w.user, w.ns)
	snap := w.storeSnapshot(t, snapshotDir(t))
	status, body := w.h.Do(http.MethodPost, restorePath(w.session, snap), w.h.Token(w.user, authn.User),
		map[string]string{"targetSessionId": "s-gone"})
	require.Equal(t, http.StatusAccepted, status, "%s", body)
	var res function.RestoreResult
	require.NoError(t, json.Unmarshal(body, &res))
	var e cloudevents.Event
	require.Eventually(t, func() bool {
		for _, ev := range w.h.Sink.Events() {
			var d events.RestoreRequestedData
			if ev.Type() == events.RestoreRequested && ev.DataAs(&d) == nil && d.RestoreJobID == res.RestoreJobID {
				e = ev
				return true
			}
		}
		return false
	}, wait, 20*time.Millisecond)
	require.Equal(t, 2, w.deliver(t, e)/100)
	row := w.job(t, snap, res.RestoreJobID)
	assert.Equal(t, "failed", row.Status)
	assert.Contains(t, row.Error, "find the session's pod")
	assert.False(t, row.RolledBack)
	assert.Empty(t, row.Backup)
	assert.Equal(t, jobState{Phase: string(function.PhaseFailed), FailedPhase: string(function.PhaseVetting)}, stateOf(t, w.h, res.RestoreJobID))
	assert.Equal(t, "available", row.SnapshotStatus)
}
