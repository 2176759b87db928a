package homesnap_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/klauspost/compress/gzip"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/streamspace-dev/functions/shared/homesnap"
	"github.com/streamspace-dev/functions/shared/kube"
	"github.com/streamspace-dev/functions/shared/kubetest"
	"github.com/streamspace-dev/functions/shared/objstore"
	"github.com/streamspace-dev/functions/shared/s3test"
)

type env struct {
	srv    *s3test.Server
	bucket string
	store  *objstore.Store
	kube   *kube.Client
	pod    *kubetest.Pod
	target kube.Pod
}

// setup starts a session pod on the test kubelet, a bucket on MinIO, and
// clients acting as the function's ServiceAccount with its Role.
func setupB(b *testing.B) *env { return setup(b, nil) }

func setup(t testing.TB, endpoint func(string) string) *env {
	t.Helper()
	c := kubetest.Start(t)
	ns := c.Namespace(t)
	pod := c.Kubelet(t).Pod(t, ns, kubetest.PodSpec{SessionID: "s1"})
	ctx := context.Background()
	_, err := c.Client.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "snapshot", Namespace: ns},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list"}},
			// The deployed Role's: get and create, so kube.Auto takes
			// WebSocket (deploy/functions/snapshot/role.yaml).
			{APIGroups: []string{""}, Resources: []string{"pods/exec"}, Verbs: []string{"get", "create"}},
		},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	_, err = c.Client.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "snapshot", Namespace: ns},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "snapshot"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "snapshot", Namespace: "functions"}},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	k, err := kube.New(c.ServiceAccountConfig("functions", "snapshot"), kube.Auto)
	require.NoError(t, err)
	// The API server's RBAC cache takes a moment to see a new binding.
	var target kube.Pod
	require.Eventually(t, func() bool {
		target, err = k.SessionPod(ctx, ns, "s1")
		return err == nil
	}, 2*time.Minute, 20*time.Millisecond, "the Role takes effect")

	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	ep := srv.Endpoint
	if endpoint != nil {
		ep = endpoint(ep)
	}
	st, err := objstore.New(ctx, objstore.Config{Endpoint: ep, Bucket: bucket, Region: srv.Region, ForcePathStyle: true,
		Concurrency: 2, AccessKeyID: srv.AccessKey, SecretAccessKey: srv.SecretKey})
	require.NoError(t, err)
	return &env{srv: srv, bucket: bucket, store: st, kube: k, pod: pod, target: target}
}

func (e *env) request(key string) homesnap.Request {
	return homesnap.Request{Pod: e.target, ArchiveKey: key, ManifestKey: homesnap.ManifestKey(key), MaxBytes: 1 << 30, Level: 6}
}

// left reports what a capture of key left in the bucket: objects and
// unfinished multipart uploads (listed by the exact key, as MinIO needs).
func (e *env) left(t *testing.T, key string) (objects, uploads int) {
	t.Helper()
	ctx := context.Background()
	c := e.srv.Client()
	for _, k := range []string{key, homesnap.ManifestKey(key)} {
		if _, err := c.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(e.bucket), Key: aws.String(k)}); err == nil {
			objects++
		}
	}
	out, err := c.ListMultipartUploads(ctx, &s3.ListMultipartUploadsInput{Bucket: aws.String(e.bucket), Prefix: aws.String(key)})
	require.NoError(t, err)
	return objects, len(out.Uploads)
}

func write(t *testing.T, path string, data []byte) {
	t.Helper()
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	require.NoError(t, os.WriteFile(path, data, 0o644))
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return b
}

func TestCapture(t *testing.T) {
	e := setup(t, nil)
	write(t, filepath.Join(e.pod.Dir, "notes.txt"), bytes.Repeat([]byte("hello snapshot\n"), 100000))
	write(t, filepath.Join(e.pod.Dir, ".mozilla", "profile", "cache.bin"), randomBytes(t, 12<<20))
	write(t, filepath.Join(e.pod.Dir, "empty"), nil)
	require.NoError(t, os.Symlink("notes.txt", filepath.Join(e.pod.Dir, "link")))

	var progress atomic.Int32
	req := e.request("snapshots/u/s1/a.tar.gz")
	req.Progress = func(homesnap.Progress) { progress.Add(1) }
	req.ProgressEvery = 1
	req.Labels = map[string]string{"snapshot-id": "a"}
	res, err := homesnap.Capture(context.Background(), e.kube, e.store, req)
	require.NoError(t, err)

	m := res.Manifest
	// ./, notes.txt, .mozilla/, .mozilla/profile/, cache.bin, empty, link
	assert.Equal(t, int64(7), m.Entries)
	assert.Equal(t, int64(1500000+12<<20), m.ContentBytes)
	assert.Equal(t, "gzip", m.Compression)
	assert.Equal(t, e.target.Name, m.Pod.Name)
	assert.Empty(t, m.Warnings)

	// The stored object is what the manifest says, and tar -xzf opens it.
	body, obj, err := e.store.Get(context.Background(), m.Archive, objstore.Pin{ETag: m.ETag})
	require.NoError(t, err)
	raw, err := io.ReadAll(body)
	require.NoError(t, body.Close())
	require.NoError(t, err)
	sum := sha256.Sum256(raw)
	assert.Equal(t, hex.EncodeToString(sum[:]), m.SHA256)
	assert.Equal(t, int64(len(raw)), m.SizeBytes)
	assert.Equal(t, obj.Size, m.SizeBytes)
	out := t.TempDir()
	cmd := exec.Command("tar", "-xzf", "-", "-C", out)
	cmd.Stdin = bytes.NewReader(raw)
	msg, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", msg)
	for _, f := range []string{"notes.txt", ".mozilla/profile/cache.bin", "empty"} {
		want, err := os.ReadFile(filepath.Join(e.pod.Dir, f))
		require.NoError(t, err)
		got, err := os.ReadFile(filepath.Join(out, f))
		require.NoError(t, err)
		assert.True(t, bytes.Equal(want, got), "%s extracted as it was", f)
	}
	target, err := os.Readlink(filepath.Join(out, "link"))
	require.NoError(t, err)
	assert.Equal(t, "notes.txt", target)

	// The manifest was written, and says the same.
	mb, _, err := e.store.Get(context.Background(), homesnap.ManifestKey(m.Archive), objstore.Pin{})
	require.NoError(t, err)
	var stored homesnap.Manifest
	require.NoError(t, json.NewDecoder(mb).Decode(&stored))
	require.NoError(t, mb.Close())
	assert.Equal(t, m.SHA256, stored.SHA256)
	assert.Equal(t, m.ETag, stored.ETag)
	assert.Equal(t, "a", stored.Labels["snapshot-id"])
	assert.Positive(t, progress.Load(), "progress was reported")
}

// sparse writes a file of n zero bytes without using the disk, so a tar
// of it streams for a while.
func sparse(t *testing.T, path string, n int64) {
	t.Helper()
	f, err := os.Create(path)
	require.NoError(t, err)
	require.NoError(t, f.Truncate(n))
	require.NoError(t, f.Close())
}

// refusingProxy forwards to MinIO and refuses every part after the first.
func refusingProxy(t *testing.T) func(string) string {
	return func(endpoint string) string {
		u, err := url.Parse(endpoint)
		require.NoError(t, err)
		proxy := httputil.NewSingleHostReverseProxy(u)
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			q := r.URL.Query()
			if r.Method == http.MethodPut && q.Get("partNumber") != "" && q.Get("partNumber") != "1" {
				_, _ = io.Copy(io.Discard, r.Body)
				w.WriteHeader(http.StatusForbidden)
				_, _ = io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>Access Denied.</Message></Error>`)
				return
			}
			proxy.ServeHTTP(w, r)
		}))
		t.Cleanup(srv.Close)
		return srv.URL
	}
}

func TestCaptureFailures(t *testing.T) {
	tests := []struct {
		name     string
		endpoint func(string) string
		prepare  func(t *testing.T, e *env, req *homesnap.Request)
		stage    homesnap.Stage
	}{
		{name: "home larger than the limit", stage: homesnap.StageLimit, prepare: func(t *testing.T, e *env, req *homesnap.Request) {
			sparse(t, filepath.Join(e.pod.Dir, "big"), 64<<20)
			req.MaxBytes = 16 << 20
		}},
		{name: "home with more entries than the limit", stage: homesnap.StageLimit, prepare: func(t *testing.T, e *env, req *homesnap.Request) {
			for i := range 40 {
				write(t, filepath.Join(e.pod.Dir, "many", fmt.Sprintf("f%02d", i)), []byte("x"))
			}
			req.MaxEntries = 25
		}},
		// The broken stream is captured again, and that attempt finds no pod.
		{name: "the pod disappears mid-stream", stage: homesnap.StagePod, prepare: func(t *testing.T, e *env, req *homesnap.Request) {
			sparse(t, filepath.Join(e.pod.Dir, "big"), 8<<30)
			var once sync.Once
			req.ProgressEvery = 1
			req.Progress = func(p homesnap.Progress) {
				if p.Bytes > 32<<20 {
					once.Do(func() { e.pod.Delete(t) })
				}
			}
		}},
		{name: "the store refuses mid-upload", stage: homesnap.StageUpload, endpoint: refusingProxy(t), prepare: func(t *testing.T, e *env, req *homesnap.Request) {
			write(t, filepath.Join(e.pod.Dir, "random"), randomBytes(t, 24<<20))
		}},
		{name: "the pod is gone before the capture", stage: homesnap.StagePod, prepare: func(t *testing.T, e *env, req *homesnap.Request) {
			e.pod.Delete(t)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := setup(t, tc.endpoint)
			key := "snapshots/u/s1/f.tar.gz"
			req := e.request(key)
			tc.prepare(t, e, &req)
			_, err := homesnap.Capture(context.Background(), e.kube, e.store, req)
			require.Error(t, err)
			assert.Equal(t, tc.stage, homesnap.StageOf(err), "got %v", err)
			objects, uploads := e.left(t, key)
			assert.Zero(t, objects, "no archive or manifest is left")
			assert.Zero(t, uploads, "no multipart upload is left")
		})
	}
}

// TestFileChangedIsAWarning makes GNU tar read a file that grows while it
// reads it: tar exits 1 ("file changed as we read it"), and the capture
// completes with a warning.
func TestFileChangedIsAWarning(t *testing.T) {
	e := setup(t, nil)
	path := filepath.Join(e.pod.Dir, "growing.log")
	write(t, path, randomBytes(t, 48<<20))
	stop := e.pod.KeepWriting(t, "growing.log")
	res, err := homesnap.Capture(context.Background(), e.kube, e.store, e.request("snapshots/u/s1/w.tar.gz"))
	stop()
	require.NoError(t, err)
	require.Len(t, res.Manifest.Warnings, 1)
	assert.Contains(t, res.Manifest.Warnings[0], "file changed as we read it")
}

// TestArchiveIsExactlyTarsStream checks the stored gzip, written in
// members, holds every byte tar wrote, its end-of-archive blocks included.
func TestArchiveIsExactlyTarsStream(t *testing.T) {
	e := setup(t, nil)
	write(t, filepath.Join(e.pod.Dir, "a"), []byte("a"))
	res, err := homesnap.Capture(context.Background(), e.kube, e.store, e.request("snapshots/u/s1/x.tar.gz"))
	require.NoError(t, err)
	body, _, err := e.store.Get(context.Background(), res.Manifest.Archive, objstore.Pin{})
	require.NoError(t, err)
	defer body.Close()
	stored, err := io.ReadAll(body)
	require.NoError(t, err)
	require.Greater(t, len(stored), 20)
	assert.Equal(t, []byte{'S', 'L', 4, 0}, stored[12:16], "the first member gives its length (docs/archive.md, Members)")
	zr, err := gzip.NewReader(bytes.NewReader(stored))
	require.NoError(t, err)
	raw, err := io.ReadAll(zr)
	require.NoError(t, err)
	assert.Equal(t, res.Manifest.TarBytes, int64(len(raw)))
	assert.Zero(t, len(raw)%10240, "GNU tar pads to its 10 KiB record")
	tr := tar.NewReader(bytes.NewReader(raw))
	n := 0
	for {
		_, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		n++
	}
	assert.Equal(t, res.Manifest.Entries, int64(n))
}

// breakingExecer is the real client whose first breaks execs end as
// Kubernetes' exec path can end one (docs/snapshots.md, "Exec streams can
// be cut short"): the pod's tar runs to its end, but only the first cut
// bytes of its stdout reach the capture, and the exec then reports err —
// nil when the exit status read as success, else the reset.
type breakingExecer struct {
	kube   *kube.Client
	breaks int
	cut    int64
	err    error
	garble bool // the first header's checksum is garbled instead
	execs  atomic.Int32
}

func (b *breakingExecer) Exec(ctx context.Context, pod kube.Pod, cmd []string, s kube.Streams) error {
	if int(b.execs.Add(1)) > b.breaks {
		return b.kube.Exec(ctx, pod, cmd, s)
	}
	var out io.Writer = &kubetest.CutWriter{W: s.Stdout, Left: b.cut}
	if b.garble {
		out = &garbleWriter{w: s.Stdout}
	}
	if err := b.kube.Exec(ctx, pod, cmd, kube.Streams{Stdin: s.Stdin, Stdout: out, Stderr: s.Stderr}); err != nil {
		return err
	}
	return b.err
}

// garbleWriter passes everything on with the first header's checksum field
// (bytes 148 to 155) overwritten.
type garbleWriter struct {
	w   io.Writer
	pos int64
}

func (g *garbleWriter) Write(p []byte) (int, error) {
	q := bytes.Clone(p)
	for i := range q {
		if at := g.pos + int64(i); at >= 148 && at < 156 {
			q[i] = '7'
		}
	}
	g.pos += int64(len(p))
	return g.w.Write(q)
}

// TestCaptureRetriesBrokenStreams breaks the exec stream the two ways seen
// through the real API server and kubelet: a stream cut short whose exit
// status read as success, and a connection reset. The capture is made
// again and stores the whole home; tar's own failures are not retried.
func TestCaptureRetriesBrokenStreams(t *testing.T) {
	reset := kubetest.Reset("ss-s1")
	tests := []struct {
		name   string
		breaks int
		err    error
		garble bool
		execs  int32
		stage  homesnap.Stage // "" when the capture completes
		msg    string
	}{
		{name: "a stream cut short with a success status", breaks: 1, execs: 2},
		{name: "a connection reset", breaks: 1, err: reset, execs: 2},
		{name: "two broken attempts", breaks: 2, err: reset, execs: 3},
		{name: "every attempt broken", breaks: kube.Attempts, execs: kube.Attempts, stage: homesnap.StageTar,
			msg: fmt.Sprintf("attempt %d of %d", kube.Attempts, kube.Attempts)},
		{name: "tar's own failure", breaks: 1, err: &kube.ExitError{Code: 2, Stderr: "tar: ./x: Cannot open: Permission denied"},
			execs: 1, stage: homesnap.StageTar, msg: "Permission denied"},
		{name: "a malformed stream, not a broken one", breaks: 1, garble: true, execs: 1, stage: homesnap.StageTar,
			msg: "invalid tar header"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := setup(t, nil)
			write(t, filepath.Join(e.pod.Dir, "notes.txt"), bytes.Repeat([]byte("hello snapshot\n"), 100000))
			write(t, filepath.Join(e.pod.Dir, "cache.bin"), randomBytes(t, 8<<20))
			// The cut falls inside cache.bin's content, whichever order
			// tar takes the files in.
			ex := &breakingExecer{kube: e.kube, breaks: tc.breaks, cut: 4 << 20, err: tc.err, garble: tc.garble}
			key := "snapshots/u/s1/r.tar.gz"
			res, err := homesnap.Capture(context.Background(), ex, e.store, e.request(key))
			assert.Equal(t, tc.execs, ex.execs.Load(), "execs")
			if tc.stage != "" {
				require.Error(t, err)
				assert.Equal(t, tc.stage, homesnap.StageOf(err), "got %v", err)
				assert.Contains(t, err.Error(), tc.msg)
				objects, uploads := e.left(t, key)
				assert.Zero(t, objects, "no archive or manifest is left")
				assert.Zero(t, uploads, "no multipart upload is left")
				return
			}
			require.NoError(t, err)
			m := res.Manifest
			assert.Equal(t, int64(3), m.Entries, "./, notes.txt and cache.bin")
			assert.Equal(t, int64(1500000+8<<20), m.ContentBytes)
			require.Len(t, m.Warnings, tc.breaks)
			assert.Contains(t, m.Warnings[0], "exec stream broke in attempt 1 of")
			require.Len(t, res.Broken, tc.breaks, "the errors, for the log")
			if tc.err != nil {
				assert.Contains(t, res.Broken[0], "connection reset")
				for _, w := range m.Warnings {
					assert.NotContains(t, w, "127.0.0.1", "the owner's metadata names no address")
				}
			}

			body, _, err := e.store.Get(context.Background(), m.Archive, objstore.Pin{ETag: m.ETag})
			require.NoError(t, err)
			raw, err := io.ReadAll(body)
			require.NoError(t, body.Close())
			require.NoError(t, err)
			out := t.TempDir()
			cmd := exec.Command("tar", "-xzf", "-", "-C", out)
			cmd.Stdin = bytes.NewReader(raw)
			msg, err := cmd.CombinedOutput()
			require.NoError(t, err, "%s", msg)
			for _, f := range []string{"notes.txt", "cache.bin"} {
				want, err := os.ReadFile(filepath.Join(e.pod.Dir, f))
				require.NoError(t, err)
				got, err := os.ReadFile(filepath.Join(out, f))
				require.NoError(t, err)
				assert.True(t, bytes.Equal(want, got), "%s stored whole", f)
			}
		})
	}
}
