package kube_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/streamspace-dev/functions/shared/errs"
	"github.com/streamspace-dev/functions/shared/kube"
	"github.com/streamspace-dev/functions/shared/kubetest"
)

// grantExec binds, in namespace, what the snapshot and restore functions'
// Role grants (deploy/functions/snapshot/role.yaml) to the ServiceAccount
// name, and returns a config that acts as it. execVerbs are the verbs on
// pods/exec, by default the Role's get and create: SPDY (a POST) needs
// create, a WebSocket exec (a GET) get and, on kube-apiserver 1.35, create.
func grantExec(t *testing.T, c *kubetest.Cluster, namespace, name string, execVerbs ...string) *rest.Config {
	if len(execVerbs) == 0 {
		execVerbs = []string{"get", "create"}
	}
	t.Helper()
	ctx := context.Background()
	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list"}},
			{APIGroups: []string{""}, Resources: []string{"pods/exec"}, Verbs: execVerbs},
		},
	}
	_, err := c.Client.RbacV1().Roles(namespace).Create(ctx, role, metav1.CreateOptions{})
	require.NoError(t, err)
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: name, Namespace: "functions"}},
	}
	_, err = c.Client.RbacV1().RoleBindings(namespace).Create(ctx, binding, metav1.CreateOptions{})
	require.NoError(t, err)
	cfg := c.ServiceAccountConfig("functions", name)
	waitForRBAC(t, cfg, namespace)
	return cfg
}

// waitForRBAC waits until cfg may list pods in namespace: the API server's
// RBAC cache takes a moment to see a new binding.
func waitForRBAC(t testing.TB, cfg *rest.Config, namespace string) {
	t.Helper()
	cs, err := kubernetes.NewForConfig(cfg)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		_, err := cs.CoreV1().Pods(namespace).List(context.Background(), metav1.ListOptions{})
		return err == nil
	}, 2*time.Minute, 20*time.Millisecond, "the Role takes effect")
}

func client(t *testing.T, cfg *rest.Config, p kube.Protocol) *kube.Client {
	t.Helper()
	k, err := kube.New(cfg, p)
	require.NoError(t, err)
	return k
}

func TestSessionPod(t *testing.T) {
	c := kubetest.Start(t)
	ns := c.Namespace(t)
	kl := c.Kubelet(t)
	kl.Pod(t, ns, kubetest.PodSpec{SessionID: "s1", NotReady: true})
	want := kl.Pod(t, ns, kubetest.PodSpec{SessionID: "s1", Env: map[string]string{"PUID": "1001", "PGID": "1002"}})
	kl.Pod(t, ns, kubetest.PodSpec{Labels: map[string]string{"session": "s2"}})
	kl.Pod(t, ns, kubetest.PodSpec{SessionID: "s3", Phase: corev1.PodPending})
	k := client(t, grantExec(t, c, ns, "snapshot"), kube.Auto)

	tests := []struct {
		name    string
		session string
		want    string
		wantErr string
	}{
		{name: "the running and ready pod", session: "s1", want: want.Name},
		{name: "a pod that is not a session pod is refused", session: "s2", wantErr: "app=streamspace-session"},
		{name: "a pending pod is not used", session: "s3", wantErr: "no pod is running and ready"},
		{name: "a hibernated session has none", session: "s4", wantErr: "hibernated"},
		{name: "an id no label can hold has none", session: strings.Repeat("x", 64), wantErr: "no running pod"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := k.SessionPod(context.Background(), ns, tc.session)
			if tc.wantErr != "" {
				require.Error(t, err)
				assert.Equal(t, errs.Conflict, errs.KindOf(err))
				assert.Contains(t, err.Error(), tc.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, p.Name)
			assert.Equal(t, 1001, p.UID)
			assert.Equal(t, 1002, p.GID)
			assert.Equal(t, kl.Node, p.Node)
		})
	}
}

func TestExec(t *testing.T) {
	c := kubetest.Start(t)
	ns := c.Namespace(t)
	kl := c.Kubelet(t)
	pod := kl.Pod(t, ns, kubetest.PodSpec{SessionID: "s1"})
	payload := make([]byte, 8<<20)
	_, err := rand.Read(payload)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(pod.Dir, "blob"), payload, 0o644))
	cfg := grantExec(t, c, ns, "snapshot", "get", "create")
	createOnly := grantExec(t, c, ns, "restore", "create")

	for _, proto := range []kube.Protocol{kube.WebSocket, kube.SPDY, kube.Auto, "auto-create-only"} {
		var k *kube.Client
		if proto == "auto-create-only" {
			// A Role narrowed to create: WebSocket is refused and the
			// fallback executor takes SPDY.
			k = client(t, createOnly, kube.Auto)
		} else {
			k = client(t, cfg, proto)
		}
		p, err := k.SessionPod(context.Background(), ns, "s1")
		require.NoError(t, err)
		tests := []struct {
			name     string
			cmd      []string
			stdin    []byte
			wantOut  []byte
			wantCode int
			wantErr  string
		}{
			{name: "stdout streams a file", cmd: []string{"cat", "/config/blob"}, wantOut: payload, wantCode: -1},
			{name: "stdin streams in", cmd: []string{"sh", "-c", "cat > /config/copy && cmp /config/copy /config/blob"}, stdin: payload, wantCode: -1},
			{name: "exit status 1 with stderr", cmd: []string{"sh", "-c", "echo 'tar: ./f: file changed as we read it' >&2; exit 1"}, wantCode: 1, wantErr: "file changed as we read it"},
			{name: "exit status 2", cmd: []string{"sh", "-c", "exit 2"}, wantCode: 2, wantErr: "status 2"},
		}
		for _, tc := range tests {
			label := string(proto)
			if proto == kube.Auto {
				label = "auto"
			}
			t.Run(label+"/"+tc.name, func(t *testing.T) {
				var out bytes.Buffer
				s := kube.Streams{Stdout: &out}
				if tc.stdin != nil {
					s.Stdin = bytes.NewReader(tc.stdin)
				}
				err := k.Exec(context.Background(), p, tc.cmd, s)
				assert.Equal(t, tc.wantCode, kube.ExitCode(err), "err %v", err)
				if tc.wantErr != "" {
					require.Error(t, err)
					assert.Contains(t, err.Error(), tc.wantErr)
					return
				}
				require.NoError(t, err)
				if tc.wantOut != nil {
					assert.True(t, bytes.Equal(tc.wantOut, out.Bytes()), "stdout: got %d bytes, want %d", out.Len(), len(tc.wantOut))
				}
			})
		}
	}
}

func TestWebSocketNeedsGet(t *testing.T) {
	c := kubetest.Start(t)
	ns := c.Namespace(t)
	kl := c.Kubelet(t)
	kl.Pod(t, ns, kubetest.PodSpec{SessionID: "s1"})
	k := client(t, grantExec(t, c, ns, "restore", "create"), kube.WebSocket)
	p, err := k.SessionPod(context.Background(), ns, "s1")
	require.NoError(t, err)
	err = k.Exec(context.Background(), p, []string{"true"}, kube.Streams{})
	require.Error(t, err, "a WebSocket exec is a GET: create alone does not allow it")
	assert.Contains(t, err.Error(), `cannot get resource "pods/exec"`)
}

func TestExecRefusals(t *testing.T) {
	c := kubetest.Start(t)
	ns := c.Namespace(t)
	kl := c.Kubelet(t)
	session := kl.Pod(t, ns, kubetest.PodSpec{SessionID: "s1"})
	other := kl.Pod(t, ns, kubetest.PodSpec{Labels: map[string]string{"app": "streamspace-api"}})
	granted := grantExec(t, c, ns, "snapshot")
	noExec := grantExec(t, c, ns, "reader", "watch")

	tests := []struct {
		name string
		cfg  *rest.Config
		pod  kube.Pod
		kind errs.Kind
		msg  string
	}{
		{name: "a pod without app=streamspace-session", cfg: granted, pod: kube.Pod{Namespace: ns, Name: other.Name}, kind: errs.Forbidden, msg: "not a session pod"},
		{name: "a ServiceAccount with no Role", cfg: c.ServiceAccountConfig("functions", "nobody"), pod: kube.Pod{Namespace: ns, Name: session.Name}, kind: errs.Forbidden},
		{name: "a pod that does not exist", cfg: granted, pod: kube.Pod{Namespace: ns, Name: "gone"}, kind: errs.NotFound},
		{name: "a ServiceAccount that may read pods but not exec", cfg: noExec, pod: kube.Pod{Namespace: ns, Name: session.Name},
			kind: errs.Forbidden, msg: `"pods/exec"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := client(t, tc.cfg, kube.Auto).Exec(context.Background(), tc.pod, []string{"true"}, kube.Streams{})
			require.Error(t, err)
			assert.Equal(t, tc.kind, errs.KindOf(err), "got %v", err)
			assert.Contains(t, err.Error(), tc.msg)
			assert.False(t, kube.StreamBroke(context.Background(), err), "a refusal is not a broken stream: no retry")
		})
	}
}

func TestExecPodDisappears(t *testing.T) {
	c := kubetest.Start(t)
	ns := c.Namespace(t)
	kl := c.Kubelet(t)
	pod := kl.Pod(t, ns, kubetest.PodSpec{SessionID: "s1"})
	k := client(t, grantExec(t, c, ns, "snapshot"), kube.Auto)
	p, err := k.SessionPod(context.Background(), ns, "s1")
	require.NoError(t, err)

	// A command that streams until it is killed.
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- k.Exec(context.Background(), p, []string{"cat", "/dev/zero"}, kube.Streams{Stdout: pw})
	}()
	buf := make([]byte, 1<<20)
	_, err = io.ReadFull(pr, buf)
	require.NoError(t, err, "the stream flows before the pod goes")
	go func() { _, _ = io.Copy(io.Discard, pr) }()
	pod.Delete(t)
	select {
	case err := <-done:
		require.Error(t, err)
		assert.NotEqual(t, 0, kube.ExitCode(err))
	case <-time.After(2 * time.Minute):
		t.Fatal("exec did not end after its pod was deleted")
	}
	// What a retry of that exec meets: the pod is gone, which is no broken
	// stream, so nothing is run again.
	err = k.Exec(context.Background(), p, []string{"true"}, kube.Streams{})
	require.Error(t, err)
	assert.Equal(t, errs.NotFound, errs.KindOf(err), "got %v", err)
	assert.False(t, kube.StreamBroke(context.Background(), err))
}
