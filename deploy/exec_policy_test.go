package deploy

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/remotecommand"
	utilexec "k8s.io/client-go/util/exec"

	restore "github.com/streamspace-dev/functions/functions/restore"
	"github.com/streamspace-dev/functions/shared/homesnap"
	"github.com/streamspace-dev/functions/shared/kubetest"
)

// execAs runs cmd in container of pod through pods/exec as cfg, over SPDY
// or WebSocket, and returns the error.
func execAs(t *testing.T, cfg *rest.Config, ns, pod, container string, cmd []string, websocket bool) error {
	t.Helper()
	cs, err := kubernetes.NewForConfig(cfg)
	require.NoError(t, err)
	req := cs.CoreV1().RESTClient().Post().Resource("pods").Namespace(ns).Name(pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{Container: container, Command: cmd, Stdout: true, Stderr: true}, scheme.ParameterCodec)
	var ex remotecommand.Executor
	if websocket {
		ex, err = remotecommand.NewWebSocketExecutor(cfg, "GET", req.URL().String())
	} else {
		ex, err = remotecommand.NewSPDYExecutor(cfg, "POST", req.URL())
	}
	require.NoError(t, err)
	var out, errOut bytes.Buffer
	return ex.StreamWithContext(context.Background(), remotecommand.StreamOptions{Stdout: &out, Stderr: &errOut})
}

// TestExecPolicyOnTheAPIServer applies the overlay's
// ValidatingAdmissionPolicy and its binding to a real kube-apiserver and
// execs, as the snapshot function's ServiceAccount, into pods of a test
// kubelet. It shows what such a policy can hold for pods/exec: the API
// server does apply it to the CONNECT, but its object is the
// PodExecOptions (container, command), never the pod, so the pod's labels
// cannot be checked there (the function checks them, shared/kube). Every
// command the functions build is admitted (so the policy and the code
// cannot drift apart), and any other argv is denied.
func TestExecPolicyOnTheAPIServer(t *testing.T) {
	b := loadOverlay(t, overlayNamed(t, "functions"))
	policies := all[*admissionregistrationv1.ValidatingAdmissionPolicy](b)
	bindings := all[*admissionregistrationv1.ValidatingAdmissionPolicyBinding](b)
	require.Len(t, policies, 1)
	require.Len(t, bindings, 1)

	c := kubetest.Start(t)
	ctx := context.Background()
	ns := c.Namespace(t)
	kl := c.Kubelet(t)
	session := kl.Pod(t, ns, kubetest.PodSpec{SessionID: "s1"})
	api := kl.Pod(t, ns, kubetest.PodSpec{Labels: map[string]string{"app": "streamspace-api"}, Container: "api"})
	// The snapshot Role, bound to the function's ServiceAccount and to
	// another one the policy does not name.
	// Its rules grant get and create on pods/exec, so both protocols are
	// authorized and only the policy refuses.
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: "exec", Namespace: ns}, Rules: kubeAccess["snapshot"]}
	_, err := c.Client.RbacV1().Roles(ns).Create(ctx, role, metav1.CreateOptions{})
	require.NoError(t, err)
	_, err = c.Client.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "exec", Namespace: ns},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "exec"},
		Subjects: []rbacv1.Subject{
			{Kind: "ServiceAccount", Name: "snapshot", Namespace: namespace},
			{Kind: "ServiceAccount", Name: "operator", Namespace: namespace},
		},
	}, metav1.CreateOptions{})
	require.NoError(t, err)

	for _, sa := range []string{"snapshot", "operator"} {
		cs, err := kubernetes.NewForConfig(c.ServiceAccountConfig(namespace, sa))
		require.NoError(t, err)
		require.Eventually(t, func() bool {
			_, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
			return err == nil
		}, 2*time.Minute, 20*time.Millisecond, "the Role takes effect for %s", sa)
	}

	policy, binding := policies[0].DeepCopy(), bindings[0].DeepCopy()
	_, err = c.Client.AdmissionregistrationV1().ValidatingAdmissionPolicies().Create(ctx, policy, metav1.CreateOptions{})
	require.NoError(t, err)
	_, err = c.Client.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Create(ctx, binding, metav1.CreateOptions{})
	require.NoError(t, err)
	t.Cleanup(func() {
		_ = c.Client.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Delete(ctx, binding.Name, metav1.DeleteOptions{})
		_ = c.Client.AdmissionregistrationV1().ValidatingAdmissionPolicies().Delete(ctx, policy.Name, metav1.DeleteOptions{})
	})

	fn := c.ServiceAccountConfig(namespace, "snapshot")
	other := c.ServiceAccountConfig(namespace, "operator")
	shell := []string{"sh", "-c", "true"}
	// The API server loads a new policy within a second or so.
	require.Eventually(t, func() bool {
		err := execAs(t, fn, ns, session.Name, "session", shell, false)
		return err != nil && strings.Contains(err.Error(), "ValidatingAdmissionPolicy")
	}, 2*time.Minute, 100*time.Millisecond, "the policy takes effect")

	// Every command the functions run, as their code builds it: the policy
	// must admit each, or a snapshot or restore fails in the cluster.
	type row struct {
		name      string
		cfg       *rest.Config
		pod       string
		container string
		cmd       []string
		denied    string
	}
	var tests []row
	// The chown's owner is the pod's PUID:PGID, up to the largest uid_t.
	built := append([][]string{homesnap.Command}, restore.Commands(1000, 1000)...)
	built = append(built, restore.Commands(0, 4294967295)...)
	seen := map[string]bool{}
	for _, cmd := range built {
		name := "the functions' " + strings.Join(cmd, " ")
		if !seen[name] {
			seen[name] = true
			tests = append(tests, row{name: name, cfg: fn, pod: session.Name, container: "session", cmd: cmd})
		}
	}
	const onlyOwn = "only their own tar, find and chown commands on /config"
	tests = append(tests, []row{
		{name: "a shell in a session pod", cfg: fn, pod: session.Name, container: "session", cmd: shell, denied: onlyOwn},
		{name: "sh -c id", cfg: fn, pod: session.Name, container: "session", cmd: []string{"sh", "-c", "id"}, denied: onlyOwn},
		{name: "find running a shell", cfg: fn, pod: session.Name, container: "session",
			cmd: []string{"find", "/config", "-exec", "sh", "-c", "id", ";"}, denied: onlyOwn},
		{name: "find with -exec after the functions' arguments", cfg: fn, pod: session.Name, container: "session",
			cmd: []string{"find", "/config", "-xdev", "-print0", "-exec", "sh", "-c", "id", ";"}, denied: onlyOwn},
		{name: "tar piping entries to a shell", cfg: fn, pod: session.Name, container: "session",
			cmd: []string{"tar", "--to-command=sh", "-xf", "-"}, denied: onlyOwn},
		{name: "tar running a checkpoint action", cfg: fn, pod: session.Name, container: "session",
			cmd: []string{"tar", "-cf", "-", "-C", "/config", ".", "--checkpoint=1", "--checkpoint-action=exec=sh"}, denied: onlyOwn},
		{name: "tar extracting into /", cfg: fn, pod: session.Name, container: "session", cmd: []string{"tar", "-xf", "-", "-C", "/"}, denied: onlyOwn},
		{name: "tar archiving /etc", cfg: fn, pod: session.Name, container: "session", cmd: []string{"tar", "-cf", "-", "-C", "/etc", "."}, denied: onlyOwn},
		{name: "chown of /etc/passwd", cfg: fn, pod: session.Name, container: "session", cmd: []string{"chown", "0:0", "/etc/passwd"}, denied: onlyOwn},
		{name: "chown -R of /", cfg: fn, pod: session.Name, container: "session", cmd: []string{"chown", "-R", "1000:1000", "/"}, denied: onlyOwn},
		{name: "chown to a name", cfg: fn, pod: session.Name, container: "session", cmd: []string{"chown", "-R", "root:root", "/config"}, denied: onlyOwn},
		{name: "chown with an extra path", cfg: fn, pod: session.Name, container: "session",
			cmd: []string{"chown", "-R", "1000:1000", "/config", "/etc"}, denied: onlyOwn},
		{name: "find deleting /", cfg: fn, pod: session.Name, container: "session",
			cmd: []string{"find", "/", "-xdev", "-mindepth", "1", "-delete"}, denied: onlyOwn},
		{name: "no command", cfg: fn, pod: session.Name, container: "session", cmd: nil, denied: onlyOwn},
		{name: "tar in the API's pod", cfg: fn, pod: api.Name, container: "api", cmd: homesnap.Command, denied: `container "session"`},
		{name: "another ServiceAccount is not held by it", cfg: other, pod: api.Name, container: "api", cmd: shell},
	}...)
	for _, tc := range tests {
		for _, websocket := range []bool{false, true} {
			proto := "spdy"
			if websocket {
				proto = "websocket"
			}
			t.Run(proto+"/"+tc.name, func(t *testing.T) {
				err := execAs(t, tc.cfg, ns, tc.pod, tc.container, tc.cmd, websocket)
				if tc.denied == "" {
					// Admitted: the command ran. It may exit non-zero here
					// (tar -xf - with no input), never be refused.
					var exit utilexec.ExitError
					assert.True(t, err == nil || errors.As(err, &exit), "admitted and run: %v", err)
					return
				}
				require.Error(t, err)
				assert.Contains(t, err.Error(), "ValidatingAdmissionPolicy")
				assert.Contains(t, err.Error(), tc.denied)
			})
		}
	}
}
