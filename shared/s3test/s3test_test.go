package s3test_test

import (
	"context"
	"io"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/s3test"
)

func TestServer(t *testing.T) {
	tests := []struct {
		name string
		key  string
		body string
	}{
		{name: "an object round-trips", key: "a/b.txt", body: "hello"},
		{name: "an empty object round-trips", key: "empty", body: ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := s3test.Start(t)
			bucket := s.Bucket(t)
			client := s.Client()
			ctx := context.Background()
			_, err := client.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(tc.key),
				Body: strings.NewReader(tc.body)})
			require.NoError(t, err)
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
