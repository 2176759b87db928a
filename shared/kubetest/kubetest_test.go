package kubetest_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"
	utilexec "k8s.io/utils/exec"

	"github.com/streamspace-dev/functions/shared/kubetest"
)

// execRole lets a ServiceAccount exec into pods of one namespace.
func execRole(t *testing.T, c *kubetest.Cluster, ns, sa string) {
	t.Helper()
	ctx := context.Background()
	_, err := c.Client.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "exec"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list"}},
			// SPDY clients POST (create); WebSocket clients GET (get).
			{APIGroups: []string{""}, Resources: []string{"pods/exec"}, Verbs: []string{"create", "get"}},
		},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	_, err = c.Client.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "exec"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "exec"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: sa, Namespace: "functions"}},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
}

func executor(t *testing.T, cfg *rest.Config, protocol string, pod *kubetest.Pod, cmd ...string) remotecommand.Executor {
	t.Helper()
	client, err := kubernetes.NewForConfig(cfg)
	require.NoError(t, err)
	req := client.CoreV1().RESTClient().Post().Resource("pods").Namespace(pod.Namespace).Name(pod.Name).
		SubResource("exec").VersionedParams(&corev1.PodExecOptions{
		Container: "session", Command: cmd, Stdin: true, Stdout: true, Stderr: true,
	}, scheme.ParameterCodec)
	var exec remotecommand.Executor
	switch protocol {
	case "spdy":
		exec, err = remotecommand.NewSPDYExecutor(cfg, http.MethodPost, req.URL())
	case "websocket":
		exec, err = remotecommand.NewWebSocketExecutor(cfg, http.MethodGet, req.URL().String())
	}
	require.NoError(t, err)
	return exec
}

func TestExec(t *testing.T) {
	c := kubetest.Start(t)
	kubelet := c.Kubelet(t)
	ns := c.Namespace(t)
	execRole(t, c, ns, "snapshot")
	allowed := c.ServiceAccountConfig("functions", "snapshot")
	denied := c.ServiceAccountConfig("functions", "tags")

	tests := []struct {
		name     string
		protocol string
		cfg      *rest.Config
		cmd      []string
		stdin    string
		wantOut  string
		wantExit int
		wantDeny bool
	}{
		// SPDY output is checked by shared/kube's tests; here SPDY only
		// shows RBAC, since an SPDY connection's close resets its streams
		// and can race the last frames (docs/snapshots.md).
		{name: "websocket runs tar over the pod's /config", protocol: "websocket", cfg: allowed,
			cmd: []string{"tar", "-cf", "-", "-C", "/config", "."}, wantOut: "tar"},
		{name: "stdin reaches the command", protocol: "websocket", cfg: allowed,
			cmd: []string{"cat"}, stdin: "hello from stdin", wantOut: "hello from stdin"},
		{name: "a non-zero exit comes back with its code", protocol: "websocket", cfg: allowed,
			cmd: []string{"sh", "-c", "exit 3"}, wantExit: 3},
		{name: "RBAC refuses a ServiceAccount without the Role", protocol: "spdy", cfg: denied,
			cmd: []string{"true"}, wantDeny: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pod := kubelet.Pod(t, ns, kubetest.PodSpec{SessionID: "s1"})
			require.NoError(t, os.WriteFile(filepath.Join(pod.Dir, "notes.txt"), []byte("my notes"), 0o644))
			var out, errOut bytes.Buffer
			err := executor(t, tc.cfg, tc.protocol, pod, tc.cmd...).StreamWithContext(context.Background(),
				remotecommand.StreamOptions{Stdin: bytes.NewBufferString(tc.stdin), Stdout: &out, Stderr: &errOut})
			switch {
			case tc.wantDeny:
				require.Error(t, err)
				assert.Contains(t, err.Error(), "forbidden")
			case tc.wantExit != 0:
				var exitErr utilexec.ExitError
				require.ErrorAs(t, err, &exitErr)
				assert.Equal(t, tc.wantExit, exitErr.ExitStatus())
			case tc.wantOut == "tar":
				require.NoError(t, err, errOut.String())
				names := map[string]string{}
				r := tar.NewReader(&out)
				for {
					h, err := r.Next()
					if errors.Is(err, io.EOF) {
						break
					}
					require.NoError(t, err)
					body, err := io.ReadAll(r)
					require.NoError(t, err)
					names[h.Name] = string(body)
				}
				assert.Equal(t, "my notes", names["./notes.txt"])
			default:
				require.NoError(t, err, errOut.String())
				assert.Equal(t, tc.wantOut, out.String())
			}
		})
	}
}

func TestPodBreak(t *testing.T) {
	c := kubetest.Start(t)
	kubelet := c.Kubelet(t)
	ns := c.Namespace(t)
	execRole(t, c, ns, "snapshot")
	cfg := c.ServiceAccountConfig("functions", "snapshot")

	tests := []struct {
		name   string
		delete bool
	}{
		{name: "a broken pod ends the stream"},
		{name: "a deleted pod ends the stream and is gone from the API", delete: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pod := kubelet.Pod(t, ns, kubetest.PodSpec{SessionID: "s2"})
			stdin, feed := io.Pipe()
			done := make(chan error, 1)
			go func() {
				done <- executor(t, cfg, "spdy", pod, "cat").StreamWithContext(context.Background(),
					remotecommand.StreamOptions{Stdin: stdin, Stdout: io.Discard, Stderr: io.Discard})
			}()
			_, err := feed.Write([]byte("some bytes"))
			require.NoError(t, err)
			require.Eventually(t, func() bool { return pod.Running() == 1 }, testTimeout, pollInterval)
			if tc.delete {
				pod.Delete(t)
			} else {
				pod.Break()
			}
			// The stream ends. Its error may not reach the client: the
			// kubelet closes the connection right after writing the killed
			// command's status, which can then be lost, and the stream reads
			// as a success (docs/snapshots.md, "Exec streams can be cut
			// short"); callers check what they received.
			<-done
			feed.Close()
			assert.Zero(t, pod.Running(), "the command was ended")
			_, err = c.Client.CoreV1().Pods(ns).Get(context.Background(), pod.Name, metav1.GetOptions{})
			assert.Equal(t, tc.delete, apierrors.IsNotFound(err))
		})
	}
}

// TestPodHold: a held exec waits, before its command starts, until the
// test releases it, or fails when the pod breaks.
func TestPodHold(t *testing.T) {
	c := kubetest.Start(t)
	kubelet := c.Kubelet(t)
	ns := c.Namespace(t)
	execRole(t, c, ns, "snapshot")
	cfg := c.ServiceAccountConfig("functions", "snapshot")

	tests := []struct {
		name string
		brk  bool
	}{
		{name: "released, the command runs"},
		{name: "a broken pod ends the held exec before its command runs", brk: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pod := kubelet.Pod(t, ns, kubetest.PodSpec{SessionID: "s3"})
			release := pod.Hold(t)
			var out bytes.Buffer
			done := make(chan error, 1)
			go func() {
				done <- executor(t, cfg, "websocket", pod, "echo", "ran").StreamWithContext(context.Background(),
					remotecommand.StreamOptions{Stdin: bytes.NewBufferString(""), Stdout: &out, Stderr: io.Discard})
			}()
			require.Eventually(t, func() bool { return pod.Held() == 1 }, testTimeout, pollInterval)
			assert.Zero(t, pod.Running(), "held before its command starts")
			select {
			case err := <-done:
				t.Fatalf("a held exec ended: %v", err)
			default:
			}
			if tc.brk {
				pod.Break()
			} else {
				release()
			}
			err := <-done
			assert.Zero(t, pod.Held())
			if tc.brk {
				// Its error may not reach the client (TestPodBreak says why).
				assert.Empty(t, out.String(), "the command never ran")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, "ran\n", out.String())
		})
	}
}

// TestNamespace makes a namespace from any test name, whatever characters
// a table row's name holds.
func TestNamespace(t *testing.T) {
	c := kubetest.Start(t)
	tests := []struct{ name string }{
		{name: "plain"},
		{name: "a row, with a comma"},
		{name: `quotes "and" 'more' & symbols: 100%`},
		{name: "ÜNICODE_and_UPPER case"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ns := c.Namespace(t)
			got, err := c.Client.CoreV1().Namespaces().Get(context.Background(), ns, metav1.GetOptions{})
			require.NoError(t, err)
			assert.Equal(t, ns, got.Name)
			assert.LessOrEqual(t, len(ns), 63)
		})
	}
}
