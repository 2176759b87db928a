package function_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/klauspost/compress/gzip"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/streamspace-dev/functions/events"
	function "github.com/streamspace-dev/functions/functions/restore"
	"github.com/streamspace-dev/functions/shared/homesnap"
	"github.com/streamspace-dev/functions/shared/objstore"
)

// faultyObjects wraps the job's storage: before, when set, runs before the
// nth Get of a key reaches the store; onGet, when set and it returns a
// reader, replaces the body of a Get. They stand in for faults a real MinIO
// cannot be made to show at a chosen byte or moment: a connection dropped
// mid-stream, a pod that disappears while it is fed, an owner that stops,
// an object overwritten between two reads.
type faultyObjects struct {
	function.Objects
	mu     sync.Mutex
	gets   map[string]int
	before func(ctx context.Context, key string, n int)
	onGet  func(ctx context.Context, key string, n int, body io.ReadCloser) io.ReadCloser
}

func (f *faultyObjects) Get(ctx context.Context, key string, pin objstore.Pin) (io.ReadCloser, objstore.Object, error) {
	f.mu.Lock()
	if f.gets == nil {
		f.gets = map[string]int{}
	}
	f.gets[key]++
	n := f.gets[key]
	f.mu.Unlock()
	if f.before != nil {
		f.before(ctx, key, n)
	}
	body, obj, err := f.Objects.Get(ctx, key, pin)
	if err != nil || f.onGet == nil {
		return body, obj, err
	}
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

// zeros reads as an endless run of zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// countingBody counts the bytes read from an object's body.
type countingBody struct {
	io.ReadCloser
	n atomic.Int64
}

func (c *countingBody) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// storeStream uploads, as a snapshot, the tar.gz of what gen writes,
// compressed at gzip's fastest level as it is produced and streamed through
// a pipe into a multipart upload, so that no archive is held in memory or
// on disk whatever its size. Its manifest has the checksum and size of the
// bytes uploaded and man's entries and content bytes, which gen must match.
func (w *world) storeStream(t *testing.T, gen func(tw *tar.Writer) error, man map[string]any) string {
	t.Helper()
	ctx := context.Background()
	id := addSnapshot(t, w.h, w.session, w.user, "available")
	key := homesnap.ArchiveKey(w.user, w.session, id)
	store, err := objstore.New(ctx, objstore.Config{Endpoint: w.s3.Endpoint, Bucket: w.bucket, Region: w.s3.Region,
		ForcePathStyle: true, Concurrency: 2, AccessKeyID: w.s3.AccessKey, SecretAccessKey: w.s3.SecretKey})
	require.NoError(t, err)
	pr, pw := io.Pipe()
	go func() {
		zw, err := gzip.NewWriterLevel(pw, gzip.BestSpeed)
		if err != nil {
			pw.CloseWithError(err)
			return
		}
		tw := tar.NewWriter(zw)
		err = gen(tw)
		if err == nil {
			err = tw.Close()
		}
		if err == nil {
			err = zw.Close()
		}
		pw.CloseWithError(err)
	}()
	sum := sha256.New()
	size := &countingBody{ReadCloser: pr}
	obj, err := store.Upload(ctx, key, io.TeeReader(size, sum), objstore.UploadOptions{})
	pr.Close()
	require.NoError(t, err)
	m := map[string]any{"version": 1, "archive": key, "etag": obj.ETag, "sha256": hex.EncodeToString(sum.Sum(nil)),
		"sizeBytes": size.n.Load(), "compression": "gzip"}
	maps.Copy(m, man)
	raw, err := json.Marshal(m)
	require.NoError(t, err)
	_, err = store.Put(ctx, homesnap.ManifestKey(key), raw, "application/json")
	require.NoError(t, err)
	return id
}

// objectSize is the stored size of the object at key.
func (w *world) objectSize(t *testing.T, key string) int64 {
	t.Helper()
	out, err := w.s3.Client().HeadObject(context.Background(), &s3.HeadObjectInput{Bucket: aws.String(w.bucket), Key: aws.String(key)})
	require.NoError(t, err)
	return aws.ToInt64(out.ContentLength)
}

// TestRestoreVetFailureLeavesConfigUntouched stores hostile archives whose
// manifests are right about them, as a session could have produced, and
// checks that the job fails before anything touches the pod: every file of
// /config hashes the same, and no backup was taken.
//
// The function's byte cap is set to 1 GiB, as a deployment may set it, so
// that a real 10 GiB stream with an honest manifest meets it; the entry cap
// is the default. The bytes the vet reads of each object are counted, to
// show a cap stops the read early.
func TestRestoreVetFailureLeavesConfigUntouched(t *testing.T) {
	var (
		mu    sync.Mutex
		reads = map[string]*countingBody{}
	)
	w := newWorld(t, func(w *world, o function.Objects, p function.Pods) (function.Objects, function.Pods) {
		return &faultyObjects{Objects: o, onGet: func(ctx context.Context, key string, n int, body io.ReadCloser) io.ReadCloser {
			c := &countingBody{ReadCloser: body}
			mu.Lock()
			defer mu.Unlock()
			reads[key] = c
			return c
		}}, p
	}, map[string]string{"RESTORE_MAX_BYTES": strconv.Itoa(1 << 30)})
	writeTree(t, w.pod.Dir, homeBefore)
	ownHome(t, w)
	before := fileState(t, w.pod.Dir)
	dir := hostileEntry{name: "./", typ: tar.TypeDir, mode: 0o755}
	good := hostileEntry{name: "./a.txt", typ: tar.TypeReg, mode: 0o644, body: "fine"}
	goodArchive := hostile(t, dir, good)

	tests := []struct {
		name string
		data []byte
		// gen, instead of data, writes an archive too large to hold,
		// streamed into the upload (storeStream).
		gen    func(tw *tar.Writer) error
		man    map[string]any
		reason string
		// snapshot is the snapshot's status after: failed for an archive
		// no restore could accept; available when only a setting refused it.
		snapshot string
		// maxShare, when set, is the most of the object the vet may read,
		// as a share of its size: a cap must stop the read early.
		maxShare float64
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
		{name: "a real 10 GiB of zeros, honest manifest, over RESTORE_MAX_BYTES", gen: func(tw *tar.Writer) error {
			if err := tw.WriteHeader(&tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755}); err != nil {
				return err
			}
			if err := tw.WriteHeader(&tar.Header{Name: "./zeros", Typeflag: tar.TypeReg, Mode: 0o644, Size: 10 << 30}); err != nil {
				return err
			}
			_, err := io.CopyN(tw, zeros{}, 10<<30)
			return err
		}, man: map[string]any{"entries": 2, "contentBytes": int64(10 << 30)},
			reason: "exceed 1073741824 bytes in total (RESTORE_MAX_BYTES is 1073741824", snapshot: "available", maxShare: 0.01},
		{name: "1,000,000 tiny files, honest manifest, over the default RESTORE_MAX_ENTRIES", gen: func(tw *tar.Writer) error {
			if err := tw.WriteHeader(&tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o755}); err != nil {
				return err
			}
			for i := range 1_000_000 {
				if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("./f/%07d", i), Typeflag: tar.TypeReg, Mode: 0o644}); err != nil {
					return err
				}
			}
			return nil
		}, man: map[string]any{"entries": 1_000_001, "contentBytes": 0},
			reason: "more than 500000 entries (RESTORE_MAX_ENTRIES is 500000", snapshot: "available", maxShare: 0.6},
		{name: "checksum mismatch", data: goodArchive,
			man: map[string]any{"sha256": strings.Repeat("ab", 32)}, reason: "does not match the manifest"},
		{name: "truncated archive", data: goodArchive[:len(goodArchive)-8],
			man: map[string]any{"entries": 2, "contentBytes": 4}, reason: "truncated"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var snap string
			if tc.gen != nil {
				snap = w.storeStream(t, tc.gen, tc.man)
			} else {
				snap = w.storeArchive(t, tc.data, tc.man)
			}
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
			if tc.snapshot == "" {
				tc.snapshot = "failed"
			}
			assert.Equal(t, tc.snapshot, row.SnapshotStatus, "a snapshot that fails the vet can never be restored, unless a setting refused it")
			assert.Equal(t, before, fileState(t, w.pod.Dir), "/config is byte-identical")
			key := homesnap.ArchiveKey(w.user, w.session, snap)
			mu.Lock()
			read := reads[key]
			mu.Unlock()
			require.NotNil(t, read, "the vet read the object")
			if tc.maxShare > 0 {
				size := w.objectSize(t, key)
				assert.LessOrEqual(t, float64(read.n.Load()), tc.maxShare*float64(size),
					"the cap stopped the read early: %d of %d bytes read", read.n.Load(), size)
			}
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

// TestRestoreExtractReadsWhatWasVetted changes what the extract reads after
// the vet passed and /config was cleared. The object overwritten in MinIO
// with a hostile archive: the extract's read is pinned to the ETag the vet
// saw, and MinIO refuses it. A hostile body handed over in place of the
// pinned object's, as a store or a path to it that lies would: Repack
// checks every entry again and stops at the traversal. Either way the job
// fails while extracting and rolls back: /config is byte-identical and
// nothing was written beside it.
func TestRestoreExtractReadsWhatWasVetted(t *testing.T) {
	const escaped = "escaped-by-the-second-read"
	dir := hostileEntry{name: "./", typ: tar.TypeDir, mode: 0o755}
	evil := hostile(t, dir, hostileEntry{name: "./a.txt", typ: tar.TypeReg, mode: 0o644, body: "fine"},
		hostileEntry{name: "../" + escaped, typ: tar.TypeReg, mode: 0o644, body: "x"})
	var (
		snapKey string
		// overwrite and swap say what the row does to the extract's read,
		// the second Get of the snapshot's key.
		overwrite, swap bool
	)
	w := newWorld(t, func(w *world, o function.Objects, p function.Pods) (function.Objects, function.Pods) {
		return &faultyObjects{Objects: o,
			before: func(ctx context.Context, key string, n int) {
				if key != snapKey || n != 2 || !overwrite {
					return
				}
				_, err := w.s3.Client().PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(w.bucket), Key: aws.String(key),
					Body: bytes.NewReader(evil)})
				assert.NoError(t, err, "overwrite the vetted object")
			},
			onGet: func(ctx context.Context, key string, n int, body io.ReadCloser) io.ReadCloser {
				if key != snapKey || n != 2 || !swap {
					return nil
				}
				body.Close()
				return io.NopCloser(bytes.NewReader(evil))
			}}, p
	})
	writeTree(t, w.pod.Dir, homeBefore)
	ownHome(t, w)
	before := fileState(t, w.pod.Dir)

	tests := []struct {
		name            string
		overwrite, swap bool
		reason          string
	}{
		{name: "the object is overwritten after the vet: the pinned read is refused", overwrite: true,
			reason: "PreconditionFailed"},
		{name: "the extract's read returns other bytes: Repack refuses the entry", swap: true,
			reason: `entry "../` + escaped + `": parent directory reference`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			snap := w.storeSnapshot(t, snapshotDir(t))
			snapKey, overwrite, swap = homesnap.ArchiveKey(w.user, w.session, snap), tc.overwrite, tc.swap
			id, e := w.request(t, snap)
			require.Equal(t, 2, w.deliver(t, e)/100)

			row := w.job(t, snap, id)
			assert.Equal(t, "failed", row.Status)
			assert.Contains(t, row.Error, tc.reason)
			assert.True(t, row.RolledBack)
			assert.False(t, row.RollbackFailed)
			assert.Equal(t, jobState{Phase: string(function.PhaseFailed), FailedPhase: string(function.PhaseExtracting),
				Backup: row.Backup, RolledBack: true}, stateOf(t, w.h, id), "the vet passed; the extract's read failed")
			assert.Equal(t, before, fileState(t, w.pod.Dir), "/config is byte-identical")
			assert.NoFileExists(t, filepath.Join(filepath.Dir(w.pod.Dir), escaped), "nothing was written beside /config")
			var d events.RestoreFailedData
			waitEvent(t, w.h, events.RestoreFailed, id, &d)
			assert.True(t, d.RolledBack)
			assert.False(t, d.RollbackFailed)
		})
	}
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
	id, e := w.requestInto(t, snap, "s-gone")
	require.Equal(t, 2, w.deliver(t, e)/100)
	row := w.job(t, snap, id)
	assert.Equal(t, "failed", row.Status)
	assert.Contains(t, row.Error, "find the session's pod")
	assert.False(t, row.RolledBack)
	assert.Empty(t, row.Backup)
	assert.Equal(t, jobState{Phase: string(function.PhaseFailed), FailedPhase: string(function.PhaseVetting)}, stateOf(t, w.h, id))
	assert.Equal(t, "available", row.SnapshotStatus)
}
