package function_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/stretchr/testify/require"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/streamspace-dev/functions/events"
	function "github.com/streamspace-dev/functions/functions/snapshot"
	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/fntest"
	"github.com/streamspace-dev/functions/shared/homesnap"
	"github.com/streamspace-dev/functions/shared/kubetest"
	"github.com/streamspace-dev/functions/shared/s3test"
)

// world is the snapshot function with every real part around it:
// PostgreSQL with StreamSpace's schema, MinIO, and an API server whose test
// kubelet runs the session pods' commands.
type world struct {
	h       *fntest.Harness
	cluster *kubetest.Cluster
	kubelet *kubetest.Kubelet
	ns      string
	srv     *s3test.Server
	bucket  string
}

// opts adjust a world before its function starts.
type opts struct {
	env map[string]string
	// endpoint, when set, replaces the S3 endpoint the function uses.
	endpoint func(minio string) string
}

// seedUsersSQL and seedSessionsSQL seed users and sessions: alice owns s-1
// (running) and s-2 (hibernated), bob owns s-b; $1 is the sessions'
// namespace.
const seedUsersSQL = `
	insert into users (id, username, email, role) values
		('alice', 'alice', 'alice@example.com', 'user'),
		('bob', 'bob', 'bob@example.com', 'user'),
		('root', 'root', 'root@example.com', 'admin')`

const seedSessionsSQL = `
	insert into sessions (id, user_id, template_name, state, namespace) values
		('s-1', 'alice', 'firefox', 'running', $1),
		('s-2', 'alice', 'firefox', 'hibernated', $1),
		('s-b', 'bob', 'firefox', 'running', $1)`

func newWorld(t *testing.T, o opts) *world {
	t.Helper()
	w := &world{cluster: kubetest.Start(t), srv: s3test.Start(t)}
	w.ns = w.cluster.Namespace(t)
	w.kubelet = w.cluster.Kubelet(t)
	w.bucket = w.srv.Bucket(t)
	w.grant(t)

	env := w.srv.Env(w.bucket)
	if o.endpoint != nil {
		env["S3_ENDPOINT"] = o.endpoint(w.srv.Endpoint)
	}
	env["KUBECONFIG"] = w.kubeconfig(t)
	env["STREAMSPACE_NAMESPACE"] = w.ns
	env["SNAPSHOT_PROGRESS_INTERVAL"] = "20ms"
	env["SNAPSHOT_LEASE_TTL"] = "3s"
	for k, v := range o.env {
		env[k] = v
	}
	w.h = fntest.Start(t, function.New(), env)
	_, err := w.h.Pool.Exec(context.Background(), seedUsersSQL)
	require.NoError(t, err)
	_, err = w.h.Pool.Exec(context.Background(), seedSessionsSQL, w.ns)
	require.NoError(t, err)
	return w
}

// grant gives the ServiceAccount functions/snapshot the Role the deploy
// grants in the sessions' namespace (deploy/functions/snapshot/role.yaml):
// with get and create on pods/exec the function execs over WebSocket.
func (w *world) grant(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	_, err := w.cluster.Client.RbacV1().Roles(w.ns).Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "snapshot", Namespace: w.ns},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list"}},
			{APIGroups: []string{""}, Resources: []string{"pods/exec"}, Verbs: []string{"get", "create"}},
		},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	_, err = w.cluster.Client.RbacV1().RoleBindings(w.ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "snapshot", Namespace: w.ns},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "snapshot"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "snapshot", Namespace: "functions"}},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	// The API server's RBAC cache takes a moment to see a new binding.
	cs, err := kubernetes.NewForConfig(w.cluster.ServiceAccountConfig("functions", "snapshot"))
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		_, err := cs.CoreV1().Pods(w.ns).List(ctx, metav1.ListOptions{})
		return err == nil
	}, 2*time.Minute, 20*time.Millisecond, "the Role takes effect")
}

// kubeconfig writes a kubeconfig that reaches the API server as the
// function's ServiceAccount.
func (w *world) kubeconfig(t *testing.T) string {
	t.Helper()
	rc := w.cluster.ServiceAccountConfig("functions", "snapshot")
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["test"] = &clientcmdapi.Cluster{Server: rc.Host, InsecureSkipTLSVerify: true}
	cfg.AuthInfos["test"] = &clientcmdapi.AuthInfo{Token: rc.BearerToken, Impersonate: rc.Impersonate.UserName, ImpersonateGroups: rc.Impersonate.Groups}
	cfg.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "test"}
	cfg.CurrentContext = "test"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	require.NoError(t, clientcmd.WriteToFile(*cfg, path))
	return path
}

// pod starts session's pod and returns it; its Dir is the /config the test fills.
func (w *world) pod(t *testing.T, session string) *kubetest.Pod {
	t.Helper()
	return w.kubelet.Pod(t, w.ns, kubetest.PodSpec{SessionID: session})
}

func (w *world) alice() string { return w.h.Token("alice", authn.User) }

// create POSTs a snapshot of session as alice and returns its id.
func (w *world) create(t *testing.T, session string) string {
	t.Helper()
	status, body := w.h.Do(http.MethodPost, "/api/v1/sessions/"+session+"/snapshots", w.alice(), map[string]any{"name": "before upgrade"})
	require.Equal(t, http.StatusCreated, status, "%s", body)
	var res struct {
		SnapshotID string `json:"snapshotId"`
	}
	require.NoError(t, json.Unmarshal(body, &res))
	return res.SnapshotID
}

// requested is the snapshot.requested event the function queued for id.
func (w *world) requested(t *testing.T, id string) cloudevents.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		for _, e := range w.h.Sink.WaitFor(ctx, events.SnapshotRequested, time.Minute) {
			var d events.SnapshotRequestedData
			require.NoError(t, e.DataAs(&d))
			if d.SnapshotID == id {
				return e
			}
		}
	}
	t.Fatalf("no snapshot.requested for %s", id)
	return cloudevents.Event{}
}

// snapshot reads snapshot id of session as alice.
func (w *world) snapshot(t *testing.T, session, id string) function.Snapshot {
	t.Helper()
	status, body := w.h.Do(http.MethodGet, "/api/v1/sessions/"+session+"/snapshots/"+id, w.alice(), nil)
	require.Equal(t, http.StatusOK, status, "%s", body)
	var s function.Snapshot
	require.NoError(t, json.Unmarshal(body, &s))
	return s
}

// objects reports which of snapshot s's archive and manifest exist, and
// the unfinished multipart uploads of its archive.
func (w *world) objects(t *testing.T, archive string) (archiveExists, manifestExists bool, uploads int) {
	t.Helper()
	ctx := context.Background()
	c := w.srv.Client()
	head := func(k string) bool {
		_, err := c.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(w.bucket), Key: aws.String(k)})
		return err == nil
	}
	out, err := c.ListMultipartUploads(ctx, &s3.ListMultipartUploadsInput{Bucket: aws.String(w.bucket), Prefix: aws.String(archive)})
	require.NoError(t, err)
	return head(archive), head(homesnap.ManifestKey(archive)), len(out.Uploads)
}

// eventsFor returns the events of type typ the sink got about snapshot id.
func (w *world) eventsFor(typ, id string) []cloudevents.Event {
	var out []cloudevents.Event
	for _, e := range w.h.Sink.Events() {
		if e.Type() != typ {
			continue
		}
		var d struct {
			SnapshotID string `json:"snapshotId"`
		}
		if e.DataAs(&d) == nil && d.SnapshotID == id {
			out = append(out, e)
		}
	}
	return out
}

// refusingProxy forwards to MinIO and answers 403 to every upload part
// after the first: a store that refuses mid-upload.
func refusingProxy(t *testing.T) func(string) string {
	return func(endpoint string) string {
		u, err := url.Parse(endpoint)
		require.NoError(t, err)
		proxy := httputil.NewSingleHostReverseProxy(u)
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			q := r.URL.Query()
			if r.Method == http.MethodPut && q.Get("partNumber") != "" && q.Get("partNumber") != "1" {
				w.WriteHeader(http.StatusForbidden)
				fmt.Fprint(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>Access Denied.</Message></Error>`)
				return
			}
			proxy.ServeHTTP(w, r)
		}))
		t.Cleanup(srv.Close)
		return srv.URL
	}
}

func write(t *testing.T, path string, data []byte) {
	t.Helper()
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	require.NoError(t, os.WriteFile(path, data, 0o644))
}

// sparse writes a file of n zero bytes that takes no disk space.
func sparse(t *testing.T, path string, n int64) {
	t.Helper()
	f, err := os.Create(path)
	require.NoError(t, err)
	require.NoError(t, f.Truncate(n))
	require.NoError(t, f.Close())
}
