// Package s3test runs a real MinIO server for tests: one per test binary,
// started on first use, with a fresh bucket for each test. Run starts one
// outside a test, for the local runner.
//
// Every server has MinIO's built-in single-key KMS, holding one key named
// KMSKeyID with random key material of its own, so server-side encryption
// works as on AWS S3: SSE-S3 (AES256) and SSE-KMS (aws:kms, with KMSKeyID
// or no key id).
package s3test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/streamspace-dev/functions/shared/testbin"
)

// KMSKeyID is the name of the KMS key every server holds: the key id to
// ask for with SSE-KMS (S3_SSE_KMS_KEY_ID). It is also the key SSE-S3 and
// SSE-KMS without a key id use.
const KMSKeyID = "s3test-key"

// KMSKeyARN is how MinIO names KMSKeyID in the answers to writes and
// HeadObject (SSEKMSKeyId).
const KMSKeyARN = "arn:aws:kms:" + KMSKeyID

// Server is a running MinIO.
type Server struct {
	// Endpoint is MinIO's S3 API, http://127.0.0.1:PORT.
	Endpoint string
	// AccessKey and SecretKey are its root credentials.
	AccessKey, SecretKey string
	// Region is the region MinIO answers for.
	Region string

	proc    *testbin.Process
	buckets atomic.Int64
}

var (
	once   sync.Once
	shared *Server
	err    error
)

// Start returns the test binary's MinIO, starting it on first use.
func Start(tb testing.TB) *Server {
	tb.Helper()
	path := testbin.Path(tb, "minio")
	once.Do(func() { shared, err = start(path) })
	if err != nil {
		tb.Fatal(err)
	}
	if shared.proc.Exited() {
		tb.Fatalf("s3test: minio has exited:\n%s", shared.proc.Output())
	}
	return shared
}

// Run starts a MinIO of its own, outside a test: the local runner (make
// run) keeps its snapshots there. Stop ends it.
func Run() (*Server, error) {
	path, err := testbin.Lookup("minio")
	if err != nil {
		return nil, err
	}
	return start(path)
}

// Stop ends a Server that Run started.
func (s *Server) Stop() {
	s.proc.Stop()
}

func start(path string) (*Server, error) {
	dir, err := testbin.TempDir("s3test")
	if err != nil {
		return nil, err
	}
	api, err := testbin.FreePort()
	if err != nil {
		return nil, err
	}
	console, err := testbin.FreePort()
	if err != nil {
		return nil, err
	}
	// The KMS's key material is random for each server; its objects live
	// no longer than the server.
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	s := &Server{
		Endpoint:  fmt.Sprintf("http://127.0.0.1:%d", api),
		AccessKey: "s3test-root",
		SecretKey: "s3test-root-secret",
		Region:    "us-east-1",
	}
	s.proc, err = testbin.Start(path,
		[]string{"server", dir, "--quiet", "--address", fmt.Sprintf("127.0.0.1:%d", api),
			"--console-address", fmt.Sprintf("127.0.0.1:%d", console)},
		"MINIO_ROOT_USER="+s.AccessKey, "MINIO_ROOT_PASSWORD="+s.SecretKey,
		"MINIO_BROWSER=off", "MINIO_UPDATE=off",
		"MINIO_KMS_SECRET_KEY="+KMSKeyID+":"+base64.StdEncoding.EncodeToString(key))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err = s.proc.WaitReady(ctx, func(ctx context.Context) error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.Endpoint+"/minio/health/live", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("health: %s", resp.Status)
		}
		return nil
	})
	if err != nil {
		s.proc.Stop()
		return nil, err
	}
	return s, nil
}

// Env returns the variables that point a function at this server and
// bucket (docs/runtime.md names them).
func (s *Server) Env(bucket string) map[string]string {
	return map[string]string{
		"S3_ENDPOINT":           s.Endpoint,
		"S3_BUCKET":             bucket,
		"S3_REGION":             s.Region,
		"S3_FORCE_PATH_STYLE":   "true",
		"AWS_ACCESS_KEY_ID":     s.AccessKey,
		"AWS_SECRET_ACCESS_KEY": s.SecretKey,
	}
}

// Client returns an S3 client with the root credentials, for a test to
// look at what a function stored.
func (s *Server) Client() *s3.Client {
	return s3.New(s3.Options{
		BaseEndpoint: aws.String(s.Endpoint),
		Region:       s.Region,
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(s.AccessKey, s.SecretKey, ""),
		// The SDK's default CRC32 checksums are not what the functions send;
		// a test client asks for checksums only where S3 requires them too.
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
	})
}

var unsafeBucketChars = regexp.MustCompile(`[^a-z0-9-]+`)

// Bucket creates a fresh, empty bucket named after the test.
func (s *Server) Bucket(tb testing.TB) string {
	tb.Helper()
	base := strings.Trim(unsafeBucketChars.ReplaceAllString(strings.ToLower(tb.Name()), "-"), "-")
	if len(base) > 40 {
		base = base[:40]
	}
	name := fmt.Sprintf("t%d-%s", s.buckets.Add(1), base)
	name = strings.TrimRight(name, "-")
	if err := s.CreateBucket(context.Background(), name); err != nil {
		tb.Fatalf("s3test: %v", err)
	}
	return name
}

// CreateBucket creates the bucket name.
func (s *Server) CreateBucket(ctx context.Context, name string) error {
	// MinIO answers its liveness probe before it has initialised its
	// storage; until then it refuses requests with
	// XMinioServerNotInitialized, which is worth waiting out.
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for {
		_, err := s.Client().CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(name)})
		if err == nil {
			return nil
		}
		if !strings.Contains(err.Error(), "XMinioServerNotInitialized") || ctx.Err() != nil {
			return fmt.Errorf("create bucket %s: %w", name, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}
