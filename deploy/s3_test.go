package deploy

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
)

// snapshotsS3Secret holds the snapshot bucket's keys (docs/deploy.md,
// "Secrets").
const snapshotsS3Secret = "streamspace-snapshots-s3"

// s3Env is one variable a Service reads from snapshotsS3Secret.
type s3Env struct {
	name, key string
	optional  bool
}

// s3Credentials is the env a Service that runs snapshot or restore gets:
// both keys from the Secret, each optional, so without it the AWS SDK's
// default chain (IRSA, EKS Pod Identity) applies.
var s3Credentials = []s3Env{
	{name: "AWS_ACCESS_KEY_ID", key: "access-key-id", optional: true},
	{name: "AWS_SECRET_ACCESS_KEY", key: "secret-access-key", optional: true},
}

// s3EnvOf lists what s reads from snapshotsS3Secret.
func s3EnvOf(s *servingv1.Service) []s3Env {
	var out []s3Env
	for _, c := range s.Spec.Template.Spec.Containers {
		for _, e := range c.Env {
			if e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil || e.ValueFrom.SecretKeyRef.Name != snapshotsS3Secret {
				continue
			}
			ref := e.ValueFrom.SecretKeyRef
			out = append(out, s3Env{name: e.Name, key: ref.Key, optional: ref.Optional != nil && *ref.Optional})
		}
	}
	return out
}

// TestSnapshotStorageCredentials: in every overlay, each Service that runs
// snapshot or restore (their own, or the all-in-one, which runs both) reads
// the bucket's keys from the Secret streamspace-snapshots-s3 exactly as the
// per-function Services do, and no other Service reads that Secret.
func TestSnapshotStorageCredentials(t *testing.T) {
	for _, ov := range overlays {
		t.Run(ov.name, func(t *testing.T) {
			b := loadOverlay(t, ov)
			deployed := deployedFunctions(t, b)
			runsStorage := map[string]bool{}
			for _, fn := range []string{"snapshot", "restore"} {
				sub, ok := deployed[fn]
				require.True(t, ok, "%s is deployed", fn)
				runsStorage[sub.service] = true
			}
			for _, s := range all[*servingv1.Service](b) {
				if runsStorage[s.Name] {
					assert.ElementsMatch(t, s3Credentials, s3EnvOf(s), "Service %s runs snapshot or restore: the bucket's keys from %s", s.Name, snapshotsS3Secret)
					continue
				}
				assert.Empty(t, s3EnvOf(s), "Service %s runs neither snapshot nor restore", s.Name)
			}
		})
	}
}
