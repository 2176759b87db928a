package main

import (
	"fmt"
	"os"
	"path/filepath"
)

// Defaults for the members that use object storage and the Kubernetes API
// (restore), when the environment names none: MinIO's default local address
// and a local cluster's default API address (kind, k3d and minikube's docker
// driver serve 127.0.0.1:6443 or forward it there).
const (
	localS3Endpoint = "http://127.0.0.1:9000"
	localS3Bucket   = "streamspace-snapshots"
	localKubeServer = "https://127.0.0.1:6443"
)

// membersEnv returns what the members need to start that environ does not
// set: a bucket and a kubeconfig (the user's ~/.kube/config when there is
// one, else one naming localKubeServer, written to dir). Without those
// servers running, the routes still answer, and a restore job fails cleanly
// at its first storage or pod call, saying which.
func membersEnv(environ map[string]string, dir string) (map[string]string, error) {
	out := map[string]string{}
	if environ["S3_BUCKET"] == "" {
		out["S3_BUCKET"] = localS3Bucket
		if environ["S3_ENDPOINT"] == "" {
			out["S3_ENDPOINT"] = localS3Endpoint
			out["S3_FORCE_PATH_STYLE"] = "true"
		}
	}
	if environ["KUBECONFIG"] != "" || environ["KUBERNETES_SERVICE_HOST"] != "" {
		return out, nil
	}
	if home := environ["HOME"]; home != "" {
		if p := filepath.Join(home, ".kube", "config"); fileExists(p) {
			out["KUBECONFIG"] = p
			return out, nil
		}
	}
	p := filepath.Join(dir, "streamspace-local-kubeconfig")
	doc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: local, cluster: {server: %q, insecure-skip-tls-verify: true}}]
users: [{name: local, user: {}}]
contexts: [{name: local, context: {cluster: local, user: local}}]
current-context: local
`, localKubeServer)
	if err := os.WriteFile(p, []byte(doc), 0o600); err != nil {
		return nil, fmt.Errorf("local kubeconfig: %w", err)
	}
	out["KUBECONFIG"] = p
	return out, nil
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}
