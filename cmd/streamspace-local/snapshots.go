package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/streamspace-dev/functions/shared/kubetest"
	"github.com/streamspace-dev/functions/shared/s3test"
)

// demoBucket is the bucket the local MinIO keeps the snapshots in.
const demoBucket = "streamspace-local"

// demoConfigFiles are the demo session's home: what a snapshot takes and a
// restore puts back.
var demoConfigFiles = map[string]string{
	"README.txt":                   "The home of the demo session demo-1, served by the local run.\n",
	"Documents/notes.md":           "# Notes\n\nChange me, then restore a snapshot to get this back.\n",
	".config/streamspace/app.json": `{"theme":"dark","autosave":true}` + "\n",
}

// localSnapshots is what the snapshot and restore functions run against
// locally: MinIO for the archives, and a pod for the demo session whose
// /config is a folder on this machine, served by kubetest's exec harness
// (real tar, find and chown over real files) through the local API server.
type localSnapshots struct {
	// Env points the function at the bucket (S3_*, AWS_*); empty when
	// snapshots are off.
	Env map[string]string
	// Dir is the demo session's /config.
	Dir string
	// Status is the banner's line: on, and where, or off, and why.
	Status  string
	minio   *s3test.Server
	kubelet *kubetest.Kubelet
}

// startSnapshots starts MinIO with a bucket, unless S3_BUCKET names one,
// and registers a Node serving the demo session's pod in namespace on the
// local API server, its /config a fresh folder under dir with a few demo
// files. Without the local API server or a built MinIO, snapshots are off and
// Status says why and how to build what is missing.
func startSnapshots(ctx context.Context, environ map[string]string, k *localKube, namespace, dir string) (_ *localSnapshots, err error) {
	if k == nil || k.cluster == nil {
		why := "LOCAL_KUBE=false"
		if k != nil {
			why = k.Status
		}
		return &localSnapshots{Status: fmt.Sprintf("off: the demo session's pod needs the local kube-apiserver (autoscale %s; `scripts/tools etcd kube-apiserver minio` builds what the local run needs)", why)}, nil
	}
	ls := &localSnapshots{}
	defer func() {
		if err != nil {
			ls.Stop()
		}
	}()
	bucket := environ["S3_BUCKET"]
	where := fmt.Sprintf("the bucket S3_BUCKET names (%s)", bucket)
	if bucket == "" {
		if ls.minio, err = s3test.Run(); err != nil {
			return &localSnapshots{Status: fmt.Sprintf("off: no S3_BUCKET and no local MinIO (%v)", err)}, nil
		}
		if err := ls.minio.CreateBucket(ctx, demoBucket); err != nil {
			return nil, fmt.Errorf("local minio: %w", err)
		}
		ls.Env = ls.minio.Env(demoBucket)
		where = fmt.Sprintf("MinIO %s, bucket %s", ls.minio.Endpoint, demoBucket)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if ls.Dir, err = os.MkdirTemp(dir, demoSession+"-config-"); err != nil {
		return nil, err
	}
	for name, content := range demoConfigFiles {
		path := filepath.Join(ls.Dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return nil, err
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			return nil, err
		}
	}
	if ls.kubelet, err = k.cluster.RunKubelet(); err != nil {
		return nil, fmt.Errorf("local kubelet: %w", err)
	}
	// The session's user is this machine's: a restore chowns to PUID and
	// PGID as in a linuxserver.io container, which only root could do for
	// another user here.
	pod, err := ls.kubelet.AddPod(namespace, kubetest.PodSpec{
		Labels: map[string]string{"app": "streamspace-session", "session": demoSession, "user": demoOwner, "template": poolTemplate},
		Env:    map[string]string{"PUID": strconv.Itoa(os.Getuid()), "PGID": strconv.Itoa(os.Getgid())},
		Dir:    ls.Dir,
	})
	if err != nil {
		return nil, fmt.Errorf("local kubelet: %w", err)
	}
	ls.Status = fmt.Sprintf("on: %s; session %s is pod %s/%s on node %s, its /config is %s",
		where, demoSession, pod.Namespace, pod.Name, ls.kubelet.Node, ls.Dir)
	return ls, nil
}

// Stop ends the demo pod's node server and MinIO, and removes the demo
// /config.
func (s *localSnapshots) Stop() {
	if s == nil {
		return
	}
	if s.kubelet != nil {
		s.kubelet.Stop()
	}
	if s.minio != nil {
		s.minio.Stop()
	}
	if s.Dir != "" {
		os.RemoveAll(s.Dir)
	}
}
