// Package objstore is the S3-compatible object storage the snapshot and
// restore functions keep session archives in: AWS S3, MinIO, or another
// store that speaks the S3 API.
//
// Uploads stream from an io.Reader as a multipart upload whose memory is
// bounded by a few parts, whatever the object's size; a failed upload is
// aborted. Reads can be pinned to an ETag or a version, so an archive that
// was vetted is the archive that is extracted. Checksums are computed and
// validated only when an operation requires them ("WhenRequired"), which
// every S3-compatible store accepts (docs/snapshots.md).
package objstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/feature/s3/transfermanager"
	tmtypes "github.com/aws/aws-sdk-go-v2/feature/s3/transfermanager/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"

	"github.com/streamspace-dev/functions/shared/errs"
)

// Limits of S3 multipart uploads, and the sizes chosen within them.
const (
	// MaxParts is the most parts an upload may have (AWS S3's limit).
	MaxParts = 10000
	// MinPartSize is the smallest part size used: 8 MiB, above S3's 5 MiB
	// minimum for every part but the last.
	MinPartSize = 8 << 20
	// MaxPartSize is S3's largest part, 5 GiB.
	MaxPartSize = 5 << 30
	// partHeadroom keeps the planned part count below MaxParts, so a
	// stream slightly larger than its planned size still fits.
	partHeadroom = 9000
)

// SSE is a server-side encryption mode.
type SSE string

// The server-side encryption modes.
const (
	SSENone SSE = ""
	// SSES3 is encryption with keys S3 manages (AES256).
	SSES3 SSE = "AES256"
	// SSEKMS is encryption with a KMS key: S3_SSE_KMS_KEY_ID, or the
	// store's default one when it is empty (on AWS S3 the managed key
	// aws/s3; MinIO's configured default key).
	SSEKMS SSE = "aws:kms"
)

// Config is the storage's environment. Credentials are the standard AWS
// ones: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (from a Secret), or, when
// those are unset, the SDK's default chain (web identity / IRSA, EKS Pod
// Identity, the instance role). They never come from func.yaml.
type Config struct {
	// Endpoint is the S3 API's URL; empty means AWS S3 for Region. MinIO and
	// other stores need it, usually with ForcePathStyle.
	Endpoint string `env:"S3_ENDPOINT"`
	// Bucket holds the archives. It must be private (docs/snapshots.md).
	Bucket string `env:"S3_BUCKET"`
	// Region is the bucket's region; MinIO accepts any, by default us-east-1.
	Region string `env:"S3_REGION" envDefault:"us-east-1"`
	// ForcePathStyle addresses the bucket as a path (endpoint/bucket/key)
	// instead of a host name (bucket.endpoint/key), as MinIO expects.
	ForcePathStyle bool `env:"S3_FORCE_PATH_STYLE" envDefault:"false"`
	// SSE is the server-side encryption asked for on every write: empty
	// (the bucket's default), AES256 (SSE-S3) or aws:kms (SSE-KMS).
	SSE SSE `env:"S3_SSE"`
	// SSEKMSKeyID is the KMS key of SSE-KMS; empty uses the store's
	// default key (SSEKMS).
	SSEKMSKeyID string `env:"S3_SSE_KMS_KEY_ID"`
	// Concurrency is how many parts of one upload are sent at once. With
	// one part being filled, an upload holds Concurrency+1 part buffers.
	Concurrency int `env:"S3_UPLOAD_CONCURRENCY" envDefault:"2"`
	// AccessKeyID, SecretAccessKey and SessionToken are static credentials;
	// when AccessKeyID is empty the SDK's default chain is used.
	AccessKeyID     string `env:"AWS_ACCESS_KEY_ID"`
	SecretAccessKey string `env:"AWS_SECRET_ACCESS_KEY"`
	SessionToken    string `env:"AWS_SESSION_TOKEN"`
}

// Validate checks the settings that do not need the network, naming the
// variable at fault.
func (c Config) Validate() error {
	var all []error
	if c.Bucket == "" {
		all = append(all, errors.New("S3_BUCKET is required"))
	}
	if c.Endpoint != "" && !strings.HasPrefix(c.Endpoint, "http://") && !strings.HasPrefix(c.Endpoint, "https://") {
		all = append(all, fmt.Errorf("S3_ENDPOINT %q: want an http:// or https:// URL", c.Endpoint))
	}
	switch c.SSE {
	case SSENone, SSES3, SSEKMS:
	default:
		all = append(all, fmt.Errorf("S3_SSE %q: want empty, AES256 or aws:kms", string(c.SSE)))
	}
	if c.SSEKMSKeyID != "" && c.SSE != SSEKMS {
		all = append(all, errors.New("S3_SSE_KMS_KEY_ID is set but S3_SSE is not aws:kms"))
	}
	if c.Concurrency < 1 || c.Concurrency > 16 {
		all = append(all, fmt.Errorf("S3_UPLOAD_CONCURRENCY %d: want 1 to 16", c.Concurrency))
	}
	if (c.AccessKeyID == "") != (c.SecretAccessKey == "") {
		all = append(all, errors.New("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY: set both or neither"))
	}
	return errors.Join(all...)
}

// Store is a bucket.
type Store struct {
	client *s3.Client
	bucket string
	cfg    Config
}

// New returns a Store for cfg. It does not contact the store.
func New(ctx context.Context, cfg Config) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("objstore: %w", err)
	}
	opts := []func(*awsconfig.LoadOptions) error{
		awsconfig.WithRegion(cfg.Region),
		// Checksums only where an operation requires them: stores other
		// than AWS S3 (older MinIO, Ceph RGW) refuse the CRC32 trailers the
		// SDK otherwise adds to every upload.
		awsconfig.WithRequestChecksumCalculation(aws.RequestChecksumCalculationWhenRequired),
		awsconfig.WithResponseChecksumValidation(aws.ResponseChecksumValidationWhenRequired),
	}
	if cfg.AccessKeyID != "" {
		opts = append(opts, awsconfig.WithCredentialsProvider(
			credentials.NewStaticCredentialsProvider(cfg.AccessKeyID, cfg.SecretAccessKey, cfg.SessionToken)))
	}
	awsCfg, err := awsconfig.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("objstore: load AWS config: %w", err)
	}
	client := s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
		o.UsePathStyle = cfg.ForcePathStyle
	})
	return &Store{client: client, bucket: cfg.Bucket, cfg: cfg}, nil
}

// Bucket is the store's bucket name.
func (s *Store) Bucket() string { return s.bucket }

// Object is a stored object as a write or a read reported it.
type Object struct {
	Key  string
	ETag string
	// VersionID is set when the bucket is versioned.
	VersionID    string
	Size         int64
	LastModified time.Time
}

// Pin selects the exact object a read must return: by version when
// VersionID is set, and in any case only while its ETag is ETag. A read of
// an object that changed since is errs.Conflict.
type Pin struct {
	ETag      string
	VersionID string
}

// PartSize is the part size for a stream of at most maxBytes: MinPartSize,
// or larger so that maxBytes fits in 9,000 parts (below MaxParts, so a
// stream a little larger than planned still fits), rounded up to a MiB.
// maxBytes <= 0 means unknown and gets MinPartSize.
func PartSize(maxBytes int64) int64 {
	if maxBytes <= 0 {
		return MinPartSize
	}
	size := (maxBytes + partHeadroom - 1) / partHeadroom
	size = (size + (1<<20 - 1)) &^ (1<<20 - 1)
	return min(max(size, MinPartSize), MaxPartSize)
}

// UploadOptions describe an upload.
type UploadOptions struct {
	// ContentType of the object; application/octet-stream when empty.
	ContentType string
	// MaxBytes is the most the stream can hold, to size its parts
	// (PartSize). The upload itself does not enforce it.
	MaxBytes int64
	// Metadata is stored as x-amz-meta-* headers.
	Metadata map[string]string
}

// MemoryBound is the most part memory one upload of a stream of at most
// maxBytes holds: Concurrency parts in flight and one being filled.
func (s *Store) MemoryBound(maxBytes int64) int64 {
	return int64(s.cfg.Concurrency+1) * PartSize(maxBytes)
}

// Upload stores what r yields under key, as a multipart upload when it is
// larger than one part. It reads r once, holding at most MemoryBound bytes.
// On any failure — r returns an error, ctx ends, the store refuses a part —
// the multipart upload is aborted (with a fresh bounded context if ctx has
// ended) and the error returned; nothing is left under key.
func (s *Store) Upload(ctx context.Context, key string, r io.Reader, o UploadOptions) (Object, error) {
	part := PartSize(o.MaxBytes)
	tm := transfermanager.New(s.client, func(t *transfermanager.Options) {
		t.PartSizeBytes = part
		// The first part is read before deciding between one PUT and a
		// multipart upload; at one part it costs no extra buffer.
		t.MultipartUploadThreshold = part
		t.Concurrency = s.cfg.Concurrency
		t.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		// The abort after a failure runs even when ctx was cancelled.
		t.FailTimeout = 30 * time.Second
	})
	ct := o.ContentType
	if ct == "" {
		ct = "application/octet-stream"
	}
	in := &transfermanager.UploadObjectInput{
		Bucket:      aws.String(s.bucket),
		Key:         aws.String(key),
		Body:        r,
		ContentType: aws.String(ct),
		Metadata:    o.Metadata,
	}
	sse, kms := s.sse()
	in.ServerSideEncryption, in.SSEKMSKeyID = tmtypes.ServerSideEncryption(sse), kms
	out, err := tm.UploadObject(ctx, in)
	if err != nil {
		return Object{}, s.classify("upload", key, err)
	}
	obj := Object{Key: key, ETag: aws.ToString(out.ETag), VersionID: aws.ToString(out.VersionID), Size: aws.ToInt64(out.ContentLength)}
	return obj, nil
}

// Put stores a small object (a manifest) in one request.
func (s *Store) Put(ctx context.Context, key string, body []byte, contentType string) (Object, error) {
	in := &s3.PutObjectInput{
		Bucket:        aws.String(s.bucket),
		Key:           aws.String(key),
		Body:          bytes.NewReader(body),
		ContentLength: aws.Int64(int64(len(body))),
		ContentType:   aws.String(contentType),
	}
	sse, kms := s.sse()
	in.ServerSideEncryption, in.SSEKMSKeyId = sse, kms
	out, err := s.client.PutObject(ctx, in)
	if err != nil {
		return Object{}, s.classify("put", key, err)
	}
	return Object{Key: key, ETag: aws.ToString(out.ETag), VersionID: aws.ToString(out.VersionId), Size: int64(len(body))}, nil
}

func (s *Store) sse() (types.ServerSideEncryption, *string) {
	var kms *string
	if s.cfg.SSE == SSEKMS && s.cfg.SSEKMSKeyID != "" {
		kms = aws.String(s.cfg.SSEKMSKeyID)
	}
	return types.ServerSideEncryption(s.cfg.SSE), kms
}

// Get opens key for reading, pinned by pin when it is not zero. The caller
// closes the body. A missing object is errs.NotFound; one whose ETag no
// longer matches is errs.Conflict.
func (s *Store) Get(ctx context.Context, key string, pin Pin) (io.ReadCloser, Object, error) {
	in := &s3.GetObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(key)}
	if pin.ETag != "" {
		in.IfMatch = aws.String(pin.ETag)
	}
	if pin.VersionID != "" {
		in.VersionId = aws.String(pin.VersionID)
	}
	out, err := s.client.GetObject(ctx, in)
	if err != nil {
		return nil, Object{}, s.classify("get", key, err)
	}
	obj := Object{
		Key: key, ETag: aws.ToString(out.ETag), VersionID: aws.ToString(out.VersionId),
		Size: aws.ToInt64(out.ContentLength), LastModified: aws.ToTime(out.LastModified),
	}
	return out.Body, obj, nil
}

// Head reports key's ETag, version and size.
func (s *Store) Head(ctx context.Context, key string) (Object, error) {
	out, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(key)})
	if err != nil {
		return Object{}, s.classify("head", key, err)
	}
	return Object{
		Key: key, ETag: aws.ToString(out.ETag), VersionID: aws.ToString(out.VersionId),
		Size: aws.ToInt64(out.ContentLength), LastModified: aws.ToTime(out.LastModified),
	}, nil
}

// Delete removes keys, up to 1,000 per request. A key that does not exist
// is not an error.
func (s *Store) Delete(ctx context.Context, keys ...string) error {
	for len(keys) > 0 {
		n := min(len(keys), 1000)
		ids := make([]types.ObjectIdentifier, n)
		for i, k := range keys[:n] {
			ids[i] = types.ObjectIdentifier{Key: aws.String(k)}
		}
		out, err := s.client.DeleteObjects(ctx, &s3.DeleteObjectsInput{
			Bucket: aws.String(s.bucket),
			Delete: &types.Delete{Objects: ids, Quiet: aws.Bool(true)},
		})
		if err != nil {
			return s.classify("delete", keys[0], err)
		}
		if len(out.Errors) > 0 {
			e := out.Errors[0]
			return errs.E(errs.Unavailable, "objstore: delete %s: %s %s", aws.ToString(e.Key), aws.ToString(e.Code), aws.ToString(e.Message))
		}
		keys = keys[n:]
	}
	return nil
}

// List calls fn for every object whose key starts with prefix, in key
// order, a page at a time; fn's error stops the listing and is returned.
func (s *Store) List(ctx context.Context, prefix string, fn func(Object) error) error {
	p := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{Bucket: aws.String(s.bucket), Prefix: aws.String(prefix)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return s.classify("list", prefix, err)
		}
		for _, o := range page.Contents {
			obj := Object{Key: aws.ToString(o.Key), ETag: aws.ToString(o.ETag), Size: aws.ToInt64(o.Size), LastModified: aws.ToTime(o.LastModified)}
			if err := fn(obj); err != nil {
				return err
			}
		}
	}
	return nil
}

// Upload is a multipart upload that was started and neither completed nor
// aborted.
type Upload struct {
	Key       string
	UploadID  string
	Initiated time.Time
}

// Uploads lists the unfinished multipart uploads under prefix. MinIO lists
// only the uploads of a prefix that is a whole key; AWS S3 lists any.
func (s *Store) Uploads(ctx context.Context, prefix string) ([]Upload, error) {
	var all []Upload
	in := &s3.ListMultipartUploadsInput{Bucket: aws.String(s.bucket), Prefix: aws.String(prefix)}
	for {
		out, err := s.client.ListMultipartUploads(ctx, in)
		if err != nil {
			return nil, s.classify("list uploads", prefix, err)
		}
		for _, u := range out.Uploads {
			all = append(all, Upload{Key: aws.ToString(u.Key), UploadID: aws.ToString(u.UploadId), Initiated: aws.ToTime(u.Initiated)})
		}
		if !aws.ToBool(out.IsTruncated) {
			return all, nil
		}
		in.KeyMarker, in.UploadIdMarker = out.NextKeyMarker, out.NextUploadIdMarker
	}
}

// AbortUploads aborts every unfinished multipart upload of exactly key —
// what a job that died mid-upload left behind — and returns how many.
func (s *Store) AbortUploads(ctx context.Context, key string) (int, error) {
	ups, err := s.Uploads(ctx, key)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, u := range ups {
		if u.Key != key {
			continue
		}
		_, err := s.client.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{
			Bucket: aws.String(s.bucket), Key: aws.String(key), UploadId: aws.String(u.UploadID),
		})
		if err != nil && errs.KindOf(s.classify("abort", key, err)) != errs.NotFound {
			return n, s.classify("abort upload", key, err)
		}
		n++
	}
	return n, nil
}

// classify maps the store's answers to error kinds: a missing object or
// upload is NotFound, a failed precondition (the object changed) Conflict,
// refused credentials or a refused KMS key Internal (an operator must fix
// them; no retry helps soon), everything else Unavailable, so the work is
// retried.
func (s *Store) classify(op, key string, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("objstore: %s %s: %w", op, key, err)
	}
	kind := errs.Unavailable
	var nf *types.NoSuchKey
	var nu *types.NoSuchUpload
	var ae smithy.APIError
	var re interface{ HTTPStatusCode() int }
	switch {
	// MinIO answers an unknown KMS key with 404: it is checked before the
	// status codes, or it would pass for a missing object.
	case errors.As(err, &ae) && isKMSError(ae.ErrorCode()):
		return errs.Wrap(errs.Internal, err,
			"object storage: %s %s failed: the store's KMS refused the encryption key (check S3_SSE_KMS_KEY_ID and the key's policy)", op, key)
	case errors.As(err, &nf), errors.As(err, &nu):
		kind = errs.NotFound
	case errors.As(err, &ae) && (ae.ErrorCode() == "NotFound" || ae.ErrorCode() == "NoSuchKey"):
		kind = errs.NotFound
	case errors.As(err, &ae) && ae.ErrorCode() == "PreconditionFailed":
		kind = errs.Conflict
	case errors.As(err, &re) && re.HTTPStatusCode() == http.StatusPreconditionFailed:
		kind = errs.Conflict
	case errors.As(err, &re) && re.HTTPStatusCode() == http.StatusNotFound:
		kind = errs.NotFound
	case errors.As(err, &ae) && (ae.ErrorCode() == "AccessDenied" || ae.ErrorCode() == "InvalidAccessKeyId" || ae.ErrorCode() == "SignatureDoesNotMatch"):
		kind = errs.Internal
	}
	return errs.Wrap(kind, err, "object storage: %s %s failed", op, key)
}

// isKMSError says whether code is a KMS failure the store passed on: MinIO
// answers kms:KeyNotFound and the like, AWS S3 KMS.NotFoundException,
// KMS.DisabledException and the like.
func isKMSError(code string) bool {
	return strings.HasPrefix(code, "kms:") || strings.HasPrefix(code, "KMS.")
}
