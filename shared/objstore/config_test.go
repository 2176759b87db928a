package objstore_test

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/streamspace-dev/functions/shared/objstore"
)

func TestPartSize(t *testing.T) {
	const mib, gib = int64(1 << 20), int64(1 << 30)
	tests := []struct {
		name string
		max  int64
		want int64
	}{
		{name: "unknown", max: 0, want: 8 * mib},
		{name: "small home", max: 10 * gib, want: 8 * mib},
		{name: "100 GiB", max: 100 * gib, want: 12 * mib},
		{name: "1 TiB", max: 1024 * gib, want: 117 * mib},
		{name: "beyond S3", max: 1 << 50, want: 5 * gib},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := objstore.PartSize(tc.max)
			assert.Equal(t, tc.want, got, "got %d MiB, want %d MiB", got/mib, tc.want/mib)
			if tc.max > 0 && got < objstore.MaxPartSize {
				assert.Less(t, tc.max/got, int64(objstore.MaxParts), "a stream of the planned size fits in 10,000 parts")
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	ok := objstore.Config{Bucket: "b", Region: "us-east-1", Concurrency: 2}
	tests := []struct {
		name    string
		mut     func(*objstore.Config)
		wantErr string
	}{
		{name: "minimal", mut: func(*objstore.Config) {}},
		{name: "minio", mut: func(c *objstore.Config) {
			c.Endpoint, c.ForcePathStyle, c.AccessKeyID, c.SecretAccessKey = "http://127.0.0.1:9000", true, "k", "s"
		}},
		{name: "kms", mut: func(c *objstore.Config) { c.SSE, c.SSEKMSKeyID = objstore.SSEKMS, "arn:aws:kms:k" }},
		{name: "no bucket", mut: func(c *objstore.Config) { c.Bucket = "" }, wantErr: "S3_BUCKET"},
		{name: "bad endpoint", mut: func(c *objstore.Config) { c.Endpoint = "minio:9000" }, wantErr: "S3_ENDPOINT"},
		{name: "bad sse", mut: func(c *objstore.Config) { c.SSE = "rot13" }, wantErr: "S3_SSE"},
		{name: "kms key without kms", mut: func(c *objstore.Config) { c.SSEKMSKeyID = "k" }, wantErr: "S3_SSE_KMS_KEY_ID"},
		{name: "half credentials", mut: func(c *objstore.Config) { c.AccessKeyID = "k" }, wantErr: "AWS_SECRET_ACCESS_KEY"},
		{name: "concurrency", mut: func(c *objstore.Config) { c.Concurrency = 0 }, wantErr: "S3_UPLOAD_CONCURRENCY"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.mut(&c)
			err := c.Validate()
			if tc.wantErr == "" {
				assert.NoError(t, err)
				return
			}
			if assert.Error(t, err) {
				assert.Contains(t, err.Error(), tc.wantErr)
			}
		})
	}
}
