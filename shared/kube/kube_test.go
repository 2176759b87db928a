package kube_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/streamspace-dev/functions/shared/errs"
	"github.com/streamspace-dev/functions/shared/kube"
)

func pod(name string, age time.Duration, mut ...func(*corev1.Pod)) corev1.Pod {
	p := corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: "ns",
			Labels:            map[string]string{"session": "s1", "app": "streamspace-session"},
			CreationTimestamp: metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Add(-age)),
		},
		Spec: corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "session"}}},
		Status: corev1.PodStatus{
			Phase:      corev1.PodRunning,
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
		},
	}
	for _, m := range mut {
		m(&p)
	}
	return p
}

func notReady(p *corev1.Pod) { p.Status.Conditions[0].Status = corev1.ConditionFalse }
func pending(p *corev1.Pod)  { p.Status.Phase = corev1.PodPending }
func noApp(p *corev1.Pod)    { delete(p.Labels, "app") }
func deleting(p *corev1.Pod) { now := metav1.Now(); p.DeletionTimestamp = &now }
func env(kv ...string) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		for i := 0; i < len(kv); i += 2 {
			p.Spec.Containers[0].Env = append(p.Spec.Containers[0].Env, corev1.EnvVar{Name: kv[i], Value: kv[i+1]})
		}
	}
}

func TestPickPod(t *testing.T) {
	tests := []struct {
		name    string
		pods    []corev1.Pod
		want    string
		wantErr string
	}{
		{name: "none", wantErr: "hibernated"},
		{name: "one ready", pods: []corev1.Pod{pod("a", time.Hour)}, want: "a"},
		{name: "ready beats not ready", pods: []corev1.Pod{pod("a", time.Minute, notReady), pod("b", time.Hour)}, want: "b"},
		{name: "pending skipped", pods: []corev1.Pod{pod("a", time.Minute, pending)}, wantErr: "running and ready"},
		{name: "terminating skipped", pods: []corev1.Pod{pod("a", time.Minute, deleting), pod("b", time.Hour)}, want: "b"},
		{name: "newest of two ready", pods: []corev1.Pod{pod("old", time.Hour), pod("new", time.Minute)}, want: "new"},
		{name: "pod without app label refused", pods: []corev1.Pod{pod("api", time.Minute, noApp)}, wantErr: "app=streamspace-session"},
		{name: "foreign pod never chosen", pods: []corev1.Pod{pod("api", time.Minute, noApp), pod("s", time.Hour)}, want: "s"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := kube.PickPod(tc.pods)
			if tc.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got.Name)
			assert.Equal(t, "ns", got.Namespace)
		})
	}
}

func TestOwner(t *testing.T) {
	tests := []struct {
		name     string
		pod      corev1.Pod
		uid, gid int
	}{
		{name: "defaults", pod: pod("a", 0), uid: 1000, gid: 1000},
		{name: "from env", pod: pod("a", 0, env("PUID", "1001", "PGID", "100")), uid: 1001, gid: 100},
		{name: "garbage ignored", pod: pod("a", 0, env("PUID", "x", "PGID", "-4")), uid: 1000, gid: 1000},
		{name: "other container ignored", pod: func() corev1.Pod {
			p := pod("a", 0)
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "sidecar", Env: []corev1.EnvVar{{Name: "PUID", Value: "5"}}})
			return p
		}(), uid: 1000, gid: 1000},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			uid, gid := kube.Owner(tc.pod)
			assert.Equal(t, tc.uid, uid)
			assert.Equal(t, tc.gid, gid)
		})
	}
}

func TestNamespace(t *testing.T) {
	tests := []struct{ name, row, fallback, want string }{
		{name: "row wins", row: "a", fallback: "b", want: "a"},
		{name: "fallback", fallback: "b", want: "b"},
		{name: "default", want: "streamspace"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, kube.Namespace(tc.row, tc.fallback))
		})
	}
}

func TestExitError(t *testing.T) {
	tests := []struct {
		name string
		err  error
		code int
		msg  string
	}{
		{name: "with stderr", err: &kube.ExitError{Code: 1, Stderr: "tar: ./a: file changed as we read it\n"}, code: 1, msg: "status 1: tar: ./a: file changed"},
		{name: "no stderr", err: &kube.ExitError{Code: 2}, code: 2, msg: "status 2"},
		{name: "not an exit", err: assert.AnError, code: -1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.code, kube.ExitCode(tc.err))
			if tc.msg != "" {
				assert.True(t, strings.Contains(tc.err.Error(), tc.msg), "got %q, want it to contain %q", tc.err.Error(), tc.msg)
			}
		})
	}
}

func TestStreamBroke(t *testing.T) {
	reset := errs.Wrap(errs.Unavailable, errors.New("error reading from error stream: read message: read tcp 127.0.0.1:52694->127.0.0.1:37355: read: connection reset by peer"),
		"exec in pod p failed")
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	tests := []struct {
		name string
		ctx  context.Context
		err  error
		want bool
	}{
		{name: "no error", err: nil},
		{name: "a connection reset", err: reset, want: true},
		{name: "a reset, wrapped by its caller", err: fmt.Errorf("list /config: %w", reset), want: true},
		{name: "output found cut short after a success status", err: errors.New("the listing was cut short: list does not end with NUL"), want: true},
		{name: "the command's own exit status", err: &kube.ExitError{Code: 2, Stderr: "tar: Unexpected EOF in archive"}},
		{name: "the command's exit status, wrapped", err: fmt.Errorf("chown /config: %w", &kube.ExitError{Code: 1})},
		{name: "the pod is gone", err: errs.E(errs.NotFound, "kube: get pod p: not found")},
		{name: "the exec is refused", err: errs.E(errs.Forbidden, "kube: get pod p: refused")},
		{name: "the context ended", ctx: ended, err: reset},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := tc.ctx
			if ctx == nil {
				ctx = context.Background()
			}
			assert.Equal(t, tc.want, kube.StreamBroke(ctx, tc.err))
		})
	}
}
