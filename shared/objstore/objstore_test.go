package objstore_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/errs"
	"github.com/streamspace-dev/functions/shared/objstore"
	"github.com/streamspace-dev/functions/shared/s3test"
)

const mib = 1 << 20

// newStore returns a Store on a fresh bucket of the test's MinIO, reached
// at endpoint (MinIO itself when empty); mut adjusts its config.
func newStore(t *testing.T, srv *s3test.Server, bucket, endpoint string, mut ...func(*objstore.Config)) *objstore.Store {
	t.Helper()
	if endpoint == "" {
		endpoint = srv.Endpoint
	}
	cfg := objstore.Config{
		Endpoint: endpoint, Bucket: bucket, Region: srv.Region, ForcePathStyle: true, Concurrency: 2,
		AccessKeyID: srv.AccessKey, SecretAccessKey: srv.SecretKey,
	}
	for _, m := range mut {
		m(&cfg)
	}
	st, err := objstore.New(context.Background(), cfg)
	require.NoError(t, err)
	return st
}

// withSSE sets S3_SSE and S3_SSE_KMS_KEY_ID.
func withSSE(sse objstore.SSE, kmsKey string) func(*objstore.Config) {
	return func(c *objstore.Config) { c.SSE, c.SSEKMSKeyID = sse, kmsKey }
}

func random(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return b
}

// pipeOf streams b through a pipe, so the upload cannot seek or know its size.
func pipeOf(b []byte, failAfter int) io.Reader {
	pr, pw := io.Pipe()
	go func() {
		if failAfter > 0 {
			_, _ = pw.Write(b[:failAfter])
			pw.CloseWithError(errors.New("the pod went away"))
			return
		}
		_, _ = pw.Write(b)
		pw.Close()
	}()
	return pr
}

// uploadsLeft lists the unfinished multipart uploads of key. MinIO lists
// uploads only for a prefix that is a whole key, so the test names it.
func uploadsLeft(t *testing.T, srv *s3test.Server, bucket, key string) int {
	t.Helper()
	out, err := srv.Client().ListMultipartUploads(context.Background(), &s3.ListMultipartUploadsInput{Bucket: aws.String(bucket), Prefix: aws.String(key)})
	require.NoError(t, err)
	return len(out.Uploads)
}

func exists(t *testing.T, srv *s3test.Server, bucket, key string) bool {
	t.Helper()
	_, err := srv.Client().HeadObject(context.Background(), &s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	return err == nil
}

func TestUploadAndPinnedGet(t *testing.T) {
	srv := s3test.Start(t)
	tests := []struct {
		name  string
		size  int
		parts bool
	}{
		{name: "empty", size: 0},
		{name: "one request", size: 3 * mib},
		{name: "multipart of three parts", size: 20 * mib, parts: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			bucket := srv.Bucket(t)
			st := newStore(t, srv, bucket, "")
			ctx := context.Background()
			data := random(t, tc.size)
			obj, err := st.Upload(ctx, "a/b.tar.gz", pipeOf(data, 0), objstore.UploadOptions{ContentType: "application/gzip", MaxBytes: 50 * mib})
			require.NoError(t, err)
			assert.NotEmpty(t, obj.ETag)
			if tc.parts {
				assert.Contains(t, obj.ETag, "-3", "a multipart ETag names its part count")
			}

			body, got, err := st.Get(ctx, "a/b.tar.gz", objstore.Pin{ETag: obj.ETag})
			require.NoError(t, err)
			read, err := io.ReadAll(body)
			require.NoError(t, body.Close())
			require.NoError(t, err)
			assert.True(t, bytes.Equal(data, read), "the object holds what was streamed")
			assert.Equal(t, int64(tc.size), got.Size)
			assert.Equal(t, 0, uploadsLeft(t, srv, bucket, "a/b.tar.gz"))
		})
	}
}

// sseRecorder forwards to MinIO and records the server-side encryption
// headers of every request, to show what the store asked for.
func sseRecorder(t *testing.T, endpoint string) (string, func() []string) {
	t.Helper()
	u, err := url.Parse(endpoint)
	require.NoError(t, err)
	proxy := httputil.NewSingleHostReverseProxy(u)
	var mu sync.Mutex
	var seen []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for name, v := range r.Header {
			if strings.HasPrefix(strings.ToLower(name), "x-amz-server-side-encryption") {
				mu.Lock()
				seen = append(seen, r.Method+" "+name+": "+strings.Join(v, ","))
				mu.Unlock()
			}
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(seen)
	}
}

// TestServerSideEncryption writes with each S3_SSE mode, through a
// multipart upload (a snapshot's archive) and a single put (its manifest):
// MinIO, with its built-in KMS, stores each object encrypted as asked and
// reads it back unchanged.
func TestServerSideEncryption(t *testing.T) {
	srv := s3test.Start(t)
	tests := []struct {
		name    string
		sse     objstore.SSE
		kmsKey  string
		want    types.ServerSideEncryption
		wantKey string
	}{
		{name: "without S3_SSE nothing is requested", sse: objstore.SSENone},
		{name: "SSE-S3", sse: objstore.SSES3, want: types.ServerSideEncryptionAes256},
		{name: "SSE-KMS with a key id", sse: objstore.SSEKMS, kmsKey: s3test.KMSKeyID,
			want: types.ServerSideEncryptionAwsKms, wantKey: s3test.KMSKeyARN},
		{name: "SSE-KMS with the store's default key", sse: objstore.SSEKMS,
			want: types.ServerSideEncryptionAwsKms, wantKey: s3test.KMSKeyARN},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			bucket := srv.Bucket(t)
			endpoint, requested := sseRecorder(t, srv.Endpoint)
			st := newStore(t, srv, bucket, endpoint, withSSE(tc.sse, tc.kmsKey))
			ctx := context.Background()
			archive := random(t, 20*mib)
			manifest := []byte(`{"sha256":"x"}`)
			up, err := st.Upload(ctx, "a.tar.gz", pipeOf(archive, 0), objstore.UploadOptions{MaxBytes: 50 * mib})
			require.NoError(t, err)
			assert.Contains(t, up.ETag, "-3", "the archive went as a multipart upload")
			put, err := st.Put(ctx, "a.json", manifest, "application/json")
			require.NoError(t, err)

			for _, o := range []struct {
				obj  objstore.Object
				data []byte
			}{{up, archive}, {put, manifest}} {
				head, err := srv.Client().HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String(o.obj.Key)})
				require.NoError(t, err)
				assert.Equal(t, tc.want, head.ServerSideEncryption, "%s is stored encrypted as asked", o.obj.Key)
				assert.Equal(t, tc.wantKey, aws.ToString(head.SSEKMSKeyId), "%s's KMS key", o.obj.Key)

				body, _, err := st.Get(ctx, o.obj.Key, objstore.Pin{ETag: o.obj.ETag})
				require.NoError(t, err)
				read, err := io.ReadAll(body)
				require.NoError(t, body.Close())
				require.NoError(t, err)
				assert.True(t, bytes.Equal(o.data, read), "%s reads back unchanged", o.obj.Key)
			}
			assert.Equal(t, 0, uploadsLeft(t, srv, bucket, "a.tar.gz"))

			headers := requested()
			if tc.sse == objstore.SSENone {
				assert.Empty(t, headers, "no encryption header was sent")
				return
			}
			// The upload's create and the put ask for it; parts do not.
			want := []string{"POST X-Amz-Server-Side-Encryption: " + string(tc.sse), "PUT X-Amz-Server-Side-Encryption: " + string(tc.sse)}
			if tc.kmsKey != "" {
				want = append(want, "POST X-Amz-Server-Side-Encryption-Aws-Kms-Key-Id: "+tc.kmsKey,
					"PUT X-Amz-Server-Side-Encryption-Aws-Kms-Key-Id: "+tc.kmsKey)
			}
			assert.ElementsMatch(t, want, headers)
		})
	}
}

func TestGetErrors(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	st := newStore(t, srv, bucket, "")
	ctx := context.Background()
	first, err := st.Put(ctx, "k", []byte("one"), "text/plain")
	require.NoError(t, err)
	_, err = st.Put(ctx, "k", []byte("two"), "text/plain")
	require.NoError(t, err)

	tests := []struct {
		name string
		key  string
		pin  objstore.Pin
		kind errs.Kind
	}{
		{name: "missing object", key: "nope", kind: errs.NotFound},
		{name: "changed since pinned", key: "k", pin: objstore.Pin{ETag: first.ETag}, kind: errs.Conflict},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := st.Get(ctx, tc.key, tc.pin)
			require.Error(t, err)
			assert.Equal(t, tc.kind, errs.KindOf(err), "got %v", err)
		})
	}
}

// refusingProxy forwards to MinIO but answers 403 AccessDenied to every
// part after the first, as a store whose policy or quota changes mid-upload.
func refusingProxy(t *testing.T, endpoint string) (string, *atomic.Int32) {
	t.Helper()
	u, err := url.Parse(endpoint)
	require.NoError(t, err)
	proxy := httputil.NewSingleHostReverseProxy(u)
	var refused atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if r.Method == http.MethodPut && q.Get("partNumber") != "" && q.Get("partNumber") != "1" {
			refused.Add(1)
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(http.StatusForbidden)
			_, _ = io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>Access Denied.</Message></Error>`)
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, &refused
}

func TestFailedUploadLeavesNothing(t *testing.T) {
	srv := s3test.Start(t)
	tests := []struct {
		name string
		// run uploads 30 MiB and returns the upload's error.
		run func(t *testing.T, bucket string) error
	}{
		{name: "the stream fails mid-upload", run: func(t *testing.T, bucket string) error {
			st := newStore(t, srv, bucket, "")
			_, err := st.Upload(context.Background(), "k.tar.gz", pipeOf(random(t, 30*mib), 20*mib), objstore.UploadOptions{MaxBytes: 50 * mib})
			return err
		}},
		{name: "the store refuses a part", run: func(t *testing.T, bucket string) error {
			endpoint, refused := refusingProxy(t, srv.Endpoint)
			st := newStore(t, srv, bucket, endpoint)
			_, err := st.Upload(context.Background(), "k.tar.gz", pipeOf(random(t, 30*mib), 0), objstore.UploadOptions{MaxBytes: 50 * mib})
			assert.Positive(t, refused.Load(), "the proxy refused a part")
			return err
		}},
		{name: "the KMS key is unknown", run: func(t *testing.T, bucket string) error {
			st := newStore(t, srv, bucket, "", withSSE(objstore.SSEKMS, "no-such-key"))
			_, err := st.Upload(context.Background(), "k.tar.gz", pipeOf(random(t, 30*mib), 0), objstore.UploadOptions{MaxBytes: 50 * mib})
			if assert.Error(t, err) {
				assert.Contains(t, err.Error(), "S3_SSE_KMS_KEY_ID", "the error names the setting to fix")
				assert.Contains(t, err.Error(), "kms:KeyNotFound", "the error carries the store's answer")
				assert.Equal(t, errs.Internal, errs.KindOf(err), "a retry does not help")
			}
			_, putErr := st.Put(context.Background(), "k.json", []byte("{}"), "application/json")
			require.Error(t, putErr)
			assert.Contains(t, putErr.Error(), "S3_SSE_KMS_KEY_ID", "a small put fails the same way")
			assert.False(t, exists(t, srv, bucket, "k.json"))
			return err
		}},
		{name: "the context ends mid-upload", run: func(t *testing.T, bucket string) error {
			st := newStore(t, srv, bucket, "")
			ctx, cancel := context.WithCancel(context.Background())
			pr, pw := io.Pipe()
			go func() {
				_, _ = pw.Write(random(t, 17*mib))
				cancel()
				_, _ = pw.Write(random(t, mib))
				pw.Close()
			}()
			_, err := st.Upload(ctx, "k.tar.gz", pr, objstore.UploadOptions{MaxBytes: 50 * mib})
			pr.CloseWithError(context.Canceled)
			return err
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			bucket := srv.Bucket(t)
			err := tc.run(t, bucket)
			require.Error(t, err)
			assert.Equal(t, 0, uploadsLeft(t, srv, bucket, "k.tar.gz"), "the multipart upload was aborted")
			assert.False(t, exists(t, srv, bucket, "k.tar.gz"), "no object was stored")
		})
	}
}

func TestAbortUploads(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	st := newStore(t, srv, bucket, "")
	ctx := context.Background()
	c := srv.Client()
	// An upload a job started before its instance died, and one of another key.
	for _, key := range []string{"snapshots/u/s/x.tar.gz", "snapshots/u/s/y.tar.gz"} {
		out, err := c.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: aws.String(bucket), Key: aws.String(key)})
		require.NoError(t, err)
		_, err = c.UploadPart(ctx, &s3.UploadPartInput{Bucket: aws.String(bucket), Key: aws.String(key), UploadId: out.UploadId,
			PartNumber: aws.Int32(1), Body: bytes.NewReader(random(t, 5*mib))})
		require.NoError(t, err)
	}
	for _, key := range []string{"snapshots/u/s/x.tar.gz", "snapshots/u/s/y.tar.gz"} {
		ups, err := st.Uploads(ctx, key)
		require.NoError(t, err)
		assert.Len(t, ups, 1, "%s has its upload", key)
	}

	n, err := st.AbortUploads(ctx, "snapshots/u/s/x.tar.gz")
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	assert.Equal(t, 0, uploadsLeft(t, srv, bucket, "snapshots/u/s/x.tar.gz"))
	assert.Equal(t, 1, uploadsLeft(t, srv, bucket, "snapshots/u/s/y.tar.gz"), "another key's upload is left alone")
}

func TestListAndDelete(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	st := newStore(t, srv, bucket, "")
	ctx := context.Background()
	for _, k := range []string{"p/a", "p/b", "p/c", "q/d"} {
		_, err := st.Put(ctx, k, []byte(k), "text/plain")
		require.NoError(t, err)
	}
	list := func() []string {
		var keys []string
		require.NoError(t, st.List(ctx, "p/", func(o objstore.Object) error {
			keys = append(keys, o.Key)
			return nil
		}))
		return keys
	}
	assert.Equal(t, []string{"p/a", "p/b", "p/c"}, list())
	require.NoError(t, st.Delete(ctx, "p/a", "p/c", "p/missing"))
	assert.Equal(t, []string{"p/b"}, list())
	assert.True(t, exists(t, srv, bucket, "q/d"))
}
