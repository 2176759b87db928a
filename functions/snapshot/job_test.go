package function_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	authorizationv1 "k8s.io/api/authorization/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/streamspace-dev/functions/events"
	"github.com/streamspace-dev/functions/shared/fntest"
	"github.com/streamspace-dev/functions/shared/homesnap"
	"github.com/streamspace-dev/functions/shared/metrics"
	"github.com/streamspace-dev/functions/shared/s3test"
)

// archiveOf is metadata.archive of an available snapshot.
type archiveOf struct {
	Archive struct {
		SHA256   string   `json:"sha256"`
		Entries  int64    `json:"entries"`
		ETag     string   `json:"etag"`
		Manifest string   `json:"manifest"`
		Warnings []string `json:"warnings"`
	} `json:"archive"`
	Failure struct {
		Stage string `json:"stage"`
		Error string `json:"error"`
	} `json:"failure"`
}

func metadataOf(t *testing.T, raw []byte) archiveOf {
	t.Helper()
	var m archiveOf
	require.NoError(t, json.Unmarshal(raw, &m))
	return m
}

func TestSnapshotJob(t *testing.T) {
	w := newWorld(t, opts{})
	pod := w.pod(t, "s-1")
	random := make([]byte, 4<<20)
	_, err := rand.Read(random)
	require.NoError(t, err)
	write(t, filepath.Join(pod.Dir, "Documents", "notes.txt"), bytes.Repeat([]byte("note\n"), 10000))
	write(t, filepath.Join(pod.Dir, ".cache", "blob"), random)
	sparse(t, filepath.Join(pod.Dir, "disk.img"), 512<<20)

	id := w.create(t, "s-1")
	e := w.requested(t, id)
	status, _ := w.h.Deliver(e, false)
	require.Equal(t, http.StatusAccepted, status)

	s := w.snapshot(t, "s-1", id)
	require.Equal(t, "available", string(s.Status), "error: %s", s.ErrorMessage)
	require.NotNil(t, s.CompletedAt)
	assert.Positive(t, s.SizeBytes)
	m := metadataOf(t, s.Metadata)
	assert.Len(t, m.Archive.SHA256, 64)
	// ./, Documents/, notes.txt, .cache/, blob, disk.img
	assert.Equal(t, int64(6), m.Archive.Entries)
	archive, manifest, uploads := w.objects(t, s.StoragePath)
	assert.True(t, archive, "the archive is stored")
	assert.True(t, manifest, "the manifest is stored")
	assert.Zero(t, uploads)

	completed := w.h.Sink.WaitFor(context.Background(), events.SnapshotCompleted, time.Minute)
	require.Len(t, completed, 1)
	var d events.SnapshotCompletedData
	require.NoError(t, completed[0].DataAs(&d))
	assert.Equal(t, m.Archive.SHA256, d.SHA256)
	assert.Equal(t, s.SizeBytes, d.SizeBytes)
	assert.Equal(t, s.StoragePath, d.ObjectKey)
	assert.NotEmpty(t, w.eventsFor(events.SnapshotProgress, id), "progress was reported while it ran")

	t.Run("a redelivery after the job changes nothing", func(t *testing.T) {
		status, _ := w.h.Deliver(e, false)
		assert.Equal(t, http.StatusAccepted, status)
		again := w.snapshot(t, "s-1", id)
		assert.Equal(t, s.CompletedAt, again.CompletedAt)
		assert.Len(t, w.eventsFor(events.SnapshotCompleted, id), 1)
	})
	t.Run("listed, counted, then deleted with its objects", func(t *testing.T) {
		status, body := w.h.Do(http.MethodGet, "/api/v1/sessions/s-1/snapshots", w.alice(), nil)
		require.Equal(t, http.StatusOK, status)
		assert.Contains(t, string(body), `"count":1`)
		status, body = w.h.Do(http.MethodGet, "/api/v1/snapshots/stats", w.alice(), nil)
		require.Equal(t, http.StatusOK, status)
		assert.Contains(t, string(body), `"availableSnapshots":1`)

		status, body = w.h.Do(http.MethodDelete, "/api/v1/sessions/s-1/snapshots/"+id, w.alice(), nil)
		require.Equal(t, http.StatusOK, status, "%s", body)
		assert.Equal(t, "deleted", string(w.snapshot(t, "s-1", id).Status))
		archive, manifest, _ := w.objects(t, s.StoragePath)
		assert.False(t, archive)
		assert.False(t, manifest)
		status, body = w.h.Do(http.MethodGet, "/api/v1/snapshots", w.alice(), nil)
		require.Equal(t, http.StatusOK, status)
		assert.Contains(t, string(body), `"count":0`, "a deleted snapshot is not listed")
	})
}

// TestSnapshotEncrypted takes a snapshot with each server-side encryption
// mode: the archive and the manifest are both stored encrypted, and the
// archive reads back as the manifest describes it.
func TestSnapshotEncrypted(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		want    types.ServerSideEncryption
		wantKey string
	}{
		{name: "SSE-KMS with a key id", env: map[string]string{"S3_SSE": "aws:kms", "S3_SSE_KMS_KEY_ID": s3test.KMSKeyID},
			want: types.ServerSideEncryptionAwsKms, wantKey: s3test.KMSKeyARN},
		{name: "SSE-S3", env: map[string]string{"S3_SSE": "AES256"}, want: types.ServerSideEncryptionAes256},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, opts{env: tc.env})
			pod := w.pod(t, "s-1")
			random := make([]byte, 12<<20)
			_, err := rand.Read(random)
			require.NoError(t, err)
			write(t, filepath.Join(pod.Dir, "Documents", "notes.txt"), []byte("secret notes\n"))
			write(t, filepath.Join(pod.Dir, "blob"), random)

			id := w.create(t, "s-1")
			status, _ := w.h.Deliver(w.requested(t, id), false)
			require.Equal(t, http.StatusAccepted, status)
			s := w.snapshot(t, "s-1", id)
			require.Equal(t, "available", string(s.Status), "error: %s", s.ErrorMessage)
			assert.Contains(t, metadataOf(t, s.Metadata).Archive.ETag, "-2", "the archive went as a multipart upload of two parts")

			ctx := context.Background()
			for _, key := range []string{s.StoragePath, homesnap.ManifestKey(s.StoragePath)} {
				head, err := w.srv.Client().HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(w.bucket), Key: aws.String(key)})
				require.NoError(t, err)
				assert.Equal(t, tc.want, head.ServerSideEncryption, "%s is stored encrypted", key)
				assert.Equal(t, tc.wantKey, aws.ToString(head.SSEKMSKeyId), "%s's KMS key", key)
			}
			obj, err := w.srv.Client().GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(w.bucket), Key: aws.String(s.StoragePath)})
			require.NoError(t, err)
			defer obj.Body.Close()
			sum := sha256.New()
			_, err = io.Copy(sum, obj.Body)
			require.NoError(t, err)
			assert.Equal(t, metadataOf(t, s.Metadata).Archive.SHA256, hex.EncodeToString(sum.Sum(nil)),
				"the archive reads back as the manifest describes it")
		})
	}
}

// TestFileChangedIsAWarning: a file the desktop writes while tar reads it
// makes GNU tar exit 1 ("file changed as we read it"); the snapshot is
// still available, with the warning in its row and its manifest. The exec
// goes over WebSocket, whose exit status cannot be lost (docs/snapshots.md).
func TestFileChangedIsAWarning(t *testing.T) {
	w := newWorld(t, opts{env: map[string]string{"SNAPSHOT_EXEC_PROTOCOL": "websocket"}})
	w.grantWebSocketExec(t)
	pod := w.pod(t, "s-1")
	random := make([]byte, 48<<20)
	_, err := rand.Read(random)
	require.NoError(t, err)
	path := filepath.Join(pod.Dir, "growing.log")
	write(t, path, random)
	id := w.create(t, "s-1")
	e := w.requested(t, id)

	// The desktop appends to the file for as long as the job runs.
	stop := pod.KeepWriting(t, "growing.log")
	status, _ := w.h.Deliver(e, false)
	stop()
	require.Equal(t, http.StatusAccepted, status)

	s := w.snapshot(t, "s-1", id)
	require.Equal(t, "available", string(s.Status), "error: %s", s.ErrorMessage)
	assert.Empty(t, s.ErrorMessage)
	warnings := metadataOf(t, s.Metadata).Archive.Warnings
	require.Len(t, warnings, 1, "metadata.archive.warnings")
	assert.Contains(t, warnings[0], "file changed as we read it")

	out, err := w.srv.Client().GetObject(context.Background(), &s3.GetObjectInput{
		Bucket: aws.String(w.bucket), Key: aws.String(homesnap.ManifestKey(s.StoragePath))})
	require.NoError(t, err)
	defer out.Body.Close()
	var m homesnap.Manifest
	require.NoError(t, json.NewDecoder(out.Body).Decode(&m))
	assert.Equal(t, warnings, m.Warnings, "the manifest holds the same warning")
	require.Len(t, w.h.Sink.WaitFor(context.Background(), events.SnapshotCompleted, time.Minute), 1)
	assert.Len(t, w.eventsFor(events.SnapshotCompleted, id), 1)
	assert.Empty(t, w.eventsFor(events.SnapshotFailed, id))
}

// grantWebSocketExec adds get on pods/exec to the function's Role, which a
// WebSocket exec (a GET) needs, and waits until the API server applies it.
func (w *world) grantWebSocketExec(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	role, err := w.cluster.Client.RbacV1().Roles(w.ns).Get(ctx, "snapshot", metav1.GetOptions{})
	require.NoError(t, err)
	role.Rules = append(role.Rules, rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"pods/exec"}, Verbs: []string{"get"}})
	_, err = w.cluster.Client.RbacV1().Roles(w.ns).Update(ctx, role, metav1.UpdateOptions{})
	require.NoError(t, err)
	cs, err := kubernetes.NewForConfig(w.cluster.ServiceAccountConfig("functions", "snapshot"))
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		r, err := cs.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
				Namespace: w.ns, Verb: "get", Resource: "pods", Subresource: "exec"}},
		}, metav1.CreateOptions{})
		return err == nil && r.Status.Allowed
	}, 2*time.Minute, 20*time.Millisecond, "get on pods/exec takes effect")
}

func TestSnapshotJobFailures(t *testing.T) {
	tests := []struct {
		name    string
		o       opts
		prepare func(t *testing.T, w *world)
		stage   string
		reason  string
	}{
		{name: "a hibernated session (no pod)", stage: "pod", reason: "no running pod", prepare: func(*testing.T, *world) {}},
		{name: "a home larger than SNAPSHOT_MAX_BYTES", stage: "limit", reason: "larger than the snapshot limit",
			o: opts{env: map[string]string{"SNAPSHOT_MAX_BYTES": "16777216"}},
			prepare: func(t *testing.T, w *world) {
				sparse(t, filepath.Join(w.pod(t, "s-1").Dir, "big"), 64<<20)
			}},
		{name: "a home with more entries than SNAPSHOT_MAX_ENTRIES", stage: "limit", reason: "more than 20 entries",
			o: opts{env: map[string]string{"SNAPSHOT_MAX_ENTRIES": "20"}},
			prepare: func(t *testing.T, w *world) {
				dir := filepath.Join(w.pod(t, "s-1").Dir, "many")
				require.NoError(t, os.MkdirAll(dir, 0o755))
				for i := range 30 {
					require.NoError(t, os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%02d", i)), []byte("x"), 0o644))
				}
			}},
		// The broken stream is captured again (kube.Attempts), and that
		// attempt finds the pod gone.
		{name: "the pod disappears mid-stream", stage: "pod", reason: "not found", o: opts{env: map[string]string{"SNAPSHOT_MAX_BYTES": "8589934592"}}, prepare: func(t *testing.T, w *world) {
			pod := w.pod(t, "s-1")
			sparse(t, filepath.Join(pod.Dir, "big"), 64<<30)
			go func() {
				// Once the stream flows (progress reported), the pod goes.
				deadline := time.Now().Add(2 * time.Minute)
				for time.Now().Before(deadline) && !hasProgress(w) {
					time.Sleep(10 * time.Millisecond)
				}
				pod.Delete(t)
			}()
		}},
		{name: "an unknown KMS key", stage: "upload", reason: "S3_SSE_KMS_KEY_ID",
			o: opts{env: map[string]string{"S3_SSE": "aws:kms", "S3_SSE_KMS_KEY_ID": "no-such-key"}},
			prepare: func(t *testing.T, w *world) {
				write(t, filepath.Join(w.pod(t, "s-1").Dir, "notes.txt"), []byte("secret notes\n"))
			}},
		{name: "the store refuses mid-upload", stage: "upload", o: opts{endpoint: refusingProxy(t)}, prepare: func(t *testing.T, w *world) {
			random := make([]byte, 24<<20)
			_, err := rand.Read(random)
			require.NoError(t, err)
			write(t, filepath.Join(w.pod(t, "s-1").Dir, "random"), random)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, tc.o)
			tc.prepare(t, w)
			id := w.create(t, "s-1")
			status, _ := w.h.Deliver(w.requested(t, id), false)
			require.Equal(t, http.StatusAccepted, status, "a recorded failure is not retried")

			s := w.snapshot(t, "s-1", id)
			require.Equal(t, "failed", string(s.Status))
			assert.True(t, strings.HasPrefix(s.ErrorMessage, tc.stage+": "), "error %q names the stage %s", s.ErrorMessage, tc.stage)
			assert.Contains(t, s.ErrorMessage, tc.reason)
			assert.Equal(t, tc.stage, metadataOf(t, s.Metadata).Failure.Stage)
			archive, manifest, uploads := w.objects(t, s.StoragePath)
			assert.False(t, archive, "no archive is left")
			assert.False(t, manifest, "no manifest is left")
			assert.Zero(t, uploads, "no multipart upload is left")

			failed := w.h.Sink.WaitFor(context.Background(), events.SnapshotFailed, time.Minute)
			require.Len(t, failed, 1)
			var d events.SnapshotFailedData
			require.NoError(t, failed[0].DataAs(&d))
			assert.Equal(t, s.ErrorMessage, d.Reason)

			scrape := fntest.ScrapeURL(t, w.h.URL+"/metrics")
			assert.Equal(t, 1.0, scrape.Value(metrics.JobsFinishedTotal, map[string]string{"function": "snapshot", "job": "snapshot", "outcome": "failed"}))
			assert.Equal(t, 0.0, scrape.Value(metrics.JobsActive, map[string]string{"function": "snapshot", "job": "snapshot"}))
		})
	}
}

func hasProgress(w *world) bool {
	for _, e := range w.h.Sink.Events() {
		if e.Type() == events.SnapshotProgress {
			return true
		}
	}
	return false
}

func TestRedeliveryDuringTheJob(t *testing.T) {
	w := newWorld(t, opts{env: map[string]string{"SNAPSHOT_MAX_BYTES": "8589934592"}})
	pod := w.pod(t, "s-1")
	sparse(t, filepath.Join(pod.Dir, "big"), 64<<30)
	id := w.create(t, "s-1")
	e := w.requested(t, id)

	first := make(chan int, 1)
	go func() {
		status, _ := w.h.Deliver(e, false)
		first <- status
	}()
	require.Eventually(t, func() bool { return hasProgress(w) }, 2*time.Minute, 10*time.Millisecond, "the job streams")

	status, _ := w.h.Deliver(e, false)
	assert.Equal(t, http.StatusAccepted, status, "a redelivery while the job runs is acknowledged")
	assert.Equal(t, "creating", string(w.snapshot(t, "s-1", id).Status), "and changes nothing")

	// End the job quickly: its pod goes.
	pod.Delete(t)
	select {
	case status := <-first:
		assert.Equal(t, http.StatusAccepted, status)
	case <-time.After(3 * time.Minute):
		t.Fatal("the job did not end")
	}
	assert.Equal(t, "failed", string(w.snapshot(t, "s-1", id).Status))
	require.Len(t, w.h.Sink.WaitFor(context.Background(), events.SnapshotFailed, time.Minute), 1)
	assert.Len(t, w.eventsFor(events.SnapshotFailed, id), 1, "one outcome, from the job that ran")
}

func TestTakeoverAfterLeaseExpiry(t *testing.T) {
	w := newWorld(t, opts{})
	pod := w.pod(t, "s-1")
	write(t, filepath.Join(pod.Dir, "notes.txt"), []byte("hello"))
	id := w.create(t, "s-1")
	e := w.requested(t, id)
	s := w.snapshot(t, "s-1", id)

	// An owner that died mid-upload: its lease ran out, its multipart
	// upload is still open.
	ctx := context.Background()
	_, err := w.h.Pool.Exec(ctx, `insert into job_leases (name, owner, lease_until, heartbeat_at)
		values ($1, 'dead-instance', now() - interval '1 minute', now() - interval '2 minutes')`, "snapshot:"+id)
	require.NoError(t, err)
	c := w.srv.Client()
	up, err := c.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: aws.String(w.bucket), Key: aws.String(s.StoragePath)})
	require.NoError(t, err)
	_, err = c.UploadPart(ctx, &s3.UploadPartInput{Bucket: aws.String(w.bucket), Key: aws.String(s.StoragePath),
		UploadId: up.UploadId, PartNumber: aws.Int32(1), Body: bytes.NewReader(make([]byte, 5<<20))})
	require.NoError(t, err)

	status, _ := w.h.Deliver(e, false)
	require.Equal(t, http.StatusAccepted, status)
	assert.Equal(t, "available", string(w.snapshot(t, "s-1", id).Status), "the job was taken over")
	_, err = c.ListParts(ctx, &s3.ListPartsInput{Bucket: aws.String(w.bucket), Key: aws.String(s.StoragePath), UploadId: up.UploadId})
	require.Error(t, err, "the stale upload was aborted")
	_, _, uploads := w.objects(t, s.StoragePath)
	assert.Zero(t, uploads)
	assert.Zero(t, w.h.Count(`select count(*) from job_leases where name = $1`, "snapshot:"+id), "the lease was released")
}

func TestLeaseHeldElsewhere(t *testing.T) {
	w := newWorld(t, opts{})
	w.pod(t, "s-1")
	id := w.create(t, "s-1")
	_, err := w.h.Pool.Exec(context.Background(), `insert into job_leases (name, owner, lease_until, heartbeat_at)
		values ($1, 'live-instance', now() + interval '1 hour', now())`, "snapshot:"+id)
	require.NoError(t, err)
	status, _ := w.h.Deliver(w.requested(t, id), false)
	assert.Equal(t, http.StatusAccepted, status, "acknowledged: the job runs elsewhere")
	assert.Equal(t, "creating", string(w.snapshot(t, "s-1", id).Status))
	assert.Equal(t, 1, w.h.Count(`select count(*) from job_leases where owner = 'live-instance'`), "its lease is untouched")
}

// TestLeaseLostMidJob: a job whose lease another owner took (its heartbeat
// was late, and a redelivery took over) stops, leaves no upload behind, and
// records nothing: the outcome is the new owner's to write.
func TestLeaseLostMidJob(t *testing.T) {
	w := newWorld(t, opts{env: map[string]string{"SNAPSHOT_MAX_BYTES": "8589934592"}})
	pod := w.pod(t, "s-1")
	sparse(t, filepath.Join(pod.Dir, "big"), 64<<30)
	id := w.create(t, "s-1")
	e := w.requested(t, id)
	s := w.snapshot(t, "s-1", id)

	done := make(chan int, 1)
	go func() {
		status, _ := w.h.Deliver(e, false)
		done <- status
	}()
	require.Eventually(t, func() bool { return hasProgress(w) }, 2*time.Minute, 10*time.Millisecond, "the job streams")
	_, err := w.h.Pool.Exec(context.Background(),
		`update job_leases set owner = 'new-owner', lease_until = now() + interval '1 hour' where name = $1`, "snapshot:"+id)
	require.NoError(t, err)

	select {
	case status := <-done:
		assert.Equal(t, http.StatusAccepted, status)
	case <-time.After(3 * time.Minute):
		t.Fatal("the job did not stop after losing its lease")
	}
	assert.Equal(t, "creating", string(w.snapshot(t, "s-1", id).Status), "the new owner records the outcome")
	assert.Empty(t, w.eventsFor(events.SnapshotFailed, id))
	assert.Empty(t, w.eventsFor(events.SnapshotCompleted, id))
	_, _, uploads := w.objects(t, s.StoragePath)
	assert.Zero(t, uploads, "its upload was aborted")
	assert.Equal(t, 1, w.h.Count(`select count(*) from job_leases where owner = 'new-owner'`), "the new owner's lease is untouched")
}
