package s3test_test

import (
	"context"
	"io"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/s3test"
)

func TestServer(t *testing.T) {
	tests := []struct {
		name string
		key  string
		body string
		// sse and kmsKey ask for server-side encryption with the
		// server's built-in KMS; wantKey is the key HeadObject reports.
		sse     types.ServerSideEncryption
		kmsKey  string
		wantKey string
	}{
		{name: "an object round-trips", key: "a/b.txt", body: "hello"},
		{name: "an empty object round-trips", key: "empty", body: ""},
		{name: "an SSE-S3 object round-trips", key: "sse-s3", body: "secret", sse: types.ServerSideEncryptionAes256},
		{name: "an SSE-KMS object with the KMS key round-trips", key: "sse-kms", body: "secret",
			sse: types.ServerSideEncryptionAwsKms, kmsKey: s3test.KMSKeyID, wantKey: s3test.KMSKeyARN},
		{name: "an SSE-KMS object with no key id gets the KMS key", key: "sse-kms-default", body: "secret",
			sse: types.ServerSideEncryptionAwsKms, wantKey: s3test.KMSKeyARN},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := s3test.Start(t)
			bucket := s.Bucket(t)
			client := s.Client()
			ctx := context.Background()
			in := &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(tc.key),
				Body: strings.NewReader(tc.body), ServerSideEncryption: tc.sse}
			if tc.kmsKey != "" {
				in.SSEKMSKeyId = aws.String(tc.kmsKey)
			}
			_, err := client.PutObject(ctx, in)
			require.NoError(t, err)
			head, err := client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String(tc.key)})
			require.NoError(t, err)
			assert.Equal(t, tc.sse, head.ServerSideEncryption)
			assert.Equal(t, tc.wantKey, aws.ToString(head.SSEKMSKeyId))
			out, err := client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(tc.key)})
			require.NoError(t, err)
			defer out.Body.Close()
			got, err := io.ReadAll(out.Body)
			require.NoError(t, err)
			assert.Equal(t, tc.body, string(got))
			assert.Equal(t, bucket, s.Env(bucket)["S3_BUCKET"])
		})
	}
}

func TestBucketsAreFresh(t *testing.T) {
	s := s3test.Start(t)
	tests := []struct{ name string }{{name: "first"}, {name: "second"}}
	seen := map[string]bool{}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			bucket := s.Bucket(t)
			assert.False(t, seen[bucket], "bucket %s handed out twice", bucket)
			seen[bucket] = true
			list, err := s.Client().ListObjectsV2(context.Background(), &s3.ListObjectsV2Input{Bucket: aws.String(bucket)})
			require.NoError(t, err)
			assert.Empty(t, list.Contents)
		})
	}
}
