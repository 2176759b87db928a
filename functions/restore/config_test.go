package function_test

import (
	"context"
	"errors"
	"maps"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	function "github.com/streamspace-dev/functions/functions/restore"
	"github.com/streamspace-dev/functions/shared/runtime"
)

// TestConfig starts the function with bad configurations: each stops
// start-up, before anything connects, with a message naming the variable.
func TestConfig(t *testing.T) {
	base := map[string]string{
		"DATABASE_URL":                "postgres://nobody@127.0.0.1:1/none",
		"STREAMSPACE_JWT_SECRET_FILE": "/nonexistent",
		"S3_BUCKET":                   "snapshots",
	}
	tests := []struct {
		name          string
		env           map[string]string
		notConfigured bool
		want          string
	}{
		{name: "no bucket: not configured, which the all-in-one leaves out", env: map[string]string{"S3_BUCKET": ""},
			notConfigured: true, want: "S3_BUCKET is required"},
		{name: "an exec protocol", env: map[string]string{"RESTORE_EXEC_PROTOCOL": "telnet"}, want: "RESTORE_EXEC_PROTOCOL"},
		{name: "an entry cap", env: map[string]string{"RESTORE_MAX_ENTRIES": "0"}, want: "RESTORE_MAX_ENTRIES"},
		{name: "a lease too short to renew", env: map[string]string{"RESTORE_LEASE_TTL": "1s"}, want: "RESTORE_LEASE_TTL"},
		{name: "a job timeout", env: map[string]string{"RESTORE_JOB_TIMEOUT": "10s"}, want: "RESTORE_JOB_TIMEOUT"},
		{name: "no job slot", env: map[string]string{"RESTORE_MAX_JOBS": "0"}, want: "RESTORE_MAX_JOBS 0: want at least 1"},
		{name: "an endpoint that is not a URL", env: map[string]string{"S3_ENDPOINT": "minio:9000"}, want: "S3_ENDPOINT"},
		{name: "an unknown encryption mode", env: map[string]string{"S3_SSE": "aes256"}, want: `S3_SSE "aes256"`},
		{name: "a KMS key without SSE-KMS", env: map[string]string{"S3_SSE": "AES256", "S3_SSE_KMS_KEY_ID": "k"},
			want: "S3_SSE_KMS_KEY_ID is set but S3_SSE is not aws:kms"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := maps.Clone(base)
			maps.Copy(env, tc.env)
			err := function.New().Start(context.Background(), env)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
			assert.Equal(t, tc.notConfigured, errors.Is(err, runtime.ErrNotConfigured))
		})
	}
}
