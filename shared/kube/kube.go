// Package kube finds a StreamSpace session's pod and runs commands in it
// through pods/exec, streaming stdin, stdout and stderr.
//
// A session's pod is found by its labels, never by name: StreamSpace's
// sessions.pod_name and its Session resource's status.podName may hold the
// Deployment's name. Only pods labelled app=streamspace-session are ever
// exec'd into, since an exec grant cannot be narrowed to some pods of a
// namespace and StreamSpace may run its API, or its database, beside the
// sessions (docs/snapshots.md).
package kube

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/remotecommand"
	utilexec "k8s.io/client-go/util/exec"

	"github.com/streamspace-dev/functions/shared/errs"
)

// StreamSpace's facts about session pods (its session controller).
const (
	// SessionLabel holds the session id on a session's pods.
	SessionLabel = "session"
	// AppLabel and AppValue mark a pod as a session pod; no other pod is
	// exec'd into.
	AppLabel = "app"
	AppValue = "streamspace-session"
	// Container is the session container's name.
	Container = "session"
	// DefaultNamespace is where sessions run when neither the session row
	// nor STREAMSPACE_NAMESPACE names a namespace.
	DefaultNamespace = "streamspace"
	// DefaultUID and DefaultGID own the files of /config when the
	// container's env has no PUID or PGID.
	DefaultUID = 1000
	DefaultGID = 1000
)

// Protocol is the pods/exec wire protocol to use.
type Protocol string

// The protocols. Auto tries WebSocket and falls back to SPDY, as kubectl
// does: API servers before 1.30 and some proxies only speak SPDY.
const (
	Auto      Protocol = ""
	WebSocket Protocol = "websocket"
	SPDY      Protocol = "spdy"
)

// RestConfig is the in-cluster config, or, when kubeconfig is not empty
// (the KUBECONFIG variable, for development), the config that file names.
func RestConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("kube: KUBECONFIG %s: %w", kubeconfig, err)
		}
		return cfg, nil
	}
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("kube: in-cluster config (set KUBECONFIG outside a cluster): %w", err)
	}
	return cfg, nil
}

// Client looks up session pods and execs into them.
type Client struct {
	cfg      *rest.Config
	cs       kubernetes.Interface
	protocol Protocol
}

// New returns a client for cfg speaking protocol.
func New(cfg *rest.Config, protocol Protocol) (*Client, error) {
	switch protocol {
	case Auto, WebSocket, SPDY:
	default:
		return nil, fmt.Errorf("kube: protocol %q: want websocket, spdy or empty", protocol)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kube: %w", err)
	}
	return &Client{cfg: cfg, cs: cs, protocol: protocol}, nil
}

// Pod is a session's pod, as found by SessionPod.
type Pod struct {
	Namespace string
	Name      string
	// UID and GID own /config's files (the container's PUID and PGID).
	UID, GID int
	// Node is the node it runs on, for the manifest.
	Node string
}

// Namespace is the namespace of a session whose row says ns: ns, else
// fallback (STREAMSPACE_NAMESPACE), else DefaultNamespace.
func Namespace(ns, fallback string) string {
	switch {
	case ns != "":
		return ns
	case fallback != "":
		return fallback
	}
	return DefaultNamespace
}

// SessionPod finds the Running and Ready pod of session in namespace. A
// session with no such pod (hibernated, starting, gone) is errs.Conflict
// with a message that says so; a pod that is not a session pod is never
// returned.
func (c *Client) SessionPod(ctx context.Context, namespace, session string) (Pod, error) {
	if msgs := validation.IsValidLabelValue(session); len(msgs) > 0 || session == "" {
		// Such a session can carry no label, so it has no pod.
		return Pod{}, errs.E(errs.Conflict, "session %s has no running pod", session)
	}
	sel := labels.Set{SessionLabel: session}.AsSelector().String()
	list, err := c.cs.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return Pod{}, classify(fmt.Sprintf("list pods of session %s", session), err)
	}
	p, err := PickPod(list.Items)
	if err != nil {
		return Pod{}, errs.Wrap(errs.Conflict, err, "session %s has no running pod: %s", session, err)
	}
	return p, nil
}

// PickPod chooses among the pods carrying a session's label: those that
// are session pods (app=streamspace-session), Running, Ready and not being
// deleted, the newest first (a rollout may briefly show two).
func PickPod(pods []corev1.Pod) (Pod, error) {
	var ok []corev1.Pod
	foreign := 0
	for _, p := range pods {
		if p.Labels[AppLabel] != AppValue {
			foreign++
			continue
		}
		if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning || !ready(p) {
			continue
		}
		ok = append(ok, p)
	}
	if len(ok) == 0 {
		if foreign > 0 && foreign == len(pods) {
			return Pod{}, fmt.Errorf("%d pod(s) carry its label but none is labelled %s=%s", foreign, AppLabel, AppValue)
		}
		if len(pods) == 0 {
			return Pod{}, errors.New("no pod (the session may be hibernated)")
		}
		return Pod{}, errors.New("no pod is running and ready")
	}
	sort.SliceStable(ok, func(i, j int) bool {
		return ok[j].CreationTimestamp.Before(&ok[i].CreationTimestamp)
	})
	p := ok[0]
	uid, gid := Owner(p)
	return Pod{Namespace: p.Namespace, Name: p.Name, UID: uid, GID: gid, Node: p.Spec.NodeName}, nil
}

func ready(p corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// Owner reads PUID and PGID from the session container's env (literal
// values only), each defaulting to 1000.
func Owner(p corev1.Pod) (uid, gid int) {
	uid, gid = DefaultUID, DefaultGID
	for _, c := range p.Spec.Containers {
		if c.Name != Container {
			continue
		}
		for _, e := range c.Env {
			n, err := strconv.Atoi(e.Value)
			if err != nil || n < 0 || e.ValueFrom != nil {
				continue
			}
			switch e.Name {
			case "PUID":
				uid = n
			case "PGID":
				gid = n
			}
		}
	}
	return uid, gid
}

// ExitError is a command that ran and exited with a non-zero status.
type ExitError struct {
	Code int
	// Stderr is the last few KiB of what the command wrote to stderr.
	Stderr string
}

func (e *ExitError) Error() string {
	msg := strings.TrimSpace(e.Stderr)
	if msg == "" {
		return fmt.Sprintf("command exited with status %d", e.Code)
	}
	return fmt.Sprintf("command exited with status %d: %s", e.Code, msg)
}

// ExitCode is err's exit status when err is (or wraps) an ExitError, and
// -1 otherwise.
func ExitCode(err error) int {
	var e *ExitError
	if errors.As(err, &e) {
		return e.Code
	}
	return -1
}

// Attempts is how many times in all a command whose exec stream broke
// (StreamBroke) is run. Kubernetes' exec path can reset a stream as it
// ends, losing its last bytes and sometimes its exit status
// (docs/snapshots.md, "Exec streams can be cut short"). Whether it does
// depends on where a 5 s heartbeat falls against the stream's end, so a new
// attempt usually passes.
const Attempts = 3

// StreamBroke reports whether err, the failure of an exec or of reading its
// output, is the exec's stream breaking rather than the command or the pod
// failing: no exit status came back from the command (the connection was
// reset, or the output was found cut short), ctx has not ended, and the pod
// was neither missing nor refused (errs.NotFound, errs.Forbidden). Only such
// a failure may be met by running the command again, and only a command
// that is safe to run twice; a command's own non-zero exit never. Pass only
// an exec's own failure: no other error carries an exit status either.
func StreamBroke(ctx context.Context, err error) bool {
	if err == nil || ctx.Err() != nil || ExitCode(err) >= 0 {
		return false
	}
	k := errs.KindOf(err)
	return k != errs.NotFound && k != errs.Forbidden
}

// Streams are an exec's standard streams; a nil one is not opened.
type Streams struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
}

// stderrTail is how much of stderr an ExitError keeps.
const stderrTail = 4 << 10

// Exec runs cmd in pod's session container. It first re-reads the pod and
// refuses one that is not a session pod. It returns when the command exits
// or ctx ends; a non-zero exit is an *ExitError.
func (c *Client) Exec(ctx context.Context, pod Pod, cmd []string, s Streams) error {
	live, err := c.cs.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
	if err != nil {
		return classify("get pod "+pod.Name, err)
	}
	if live.Labels[AppLabel] != AppValue {
		return errs.E(errs.Forbidden, "pod %s/%s is not a session pod (%s=%s): refusing to exec", pod.Namespace, pod.Name, AppLabel, AppValue)
	}
	req := c.cs.CoreV1().RESTClient().Post().
		Resource("pods").Namespace(pod.Namespace).Name(pod.Name).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{
			Container: Container,
			Command:   cmd,
			Stdin:     s.Stdin != nil,
			Stdout:    s.Stdout != nil,
			Stderr:    true,
		}, scheme.ParameterCodec)
	ex, err := c.executor(req.URL().String())
	if err != nil {
		return fmt.Errorf("kube: exec in %s: %w", pod.Name, err)
	}
	tail := &tailBuffer{max: stderrTail}
	var stderr io.Writer = tail
	if s.Stderr != nil {
		stderr = io.MultiWriter(s.Stderr, tail)
	}
	err = ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdin: s.Stdin, Stdout: s.Stdout, Stderr: stderr})
	var ce utilexec.ExitError
	if errors.As(err, &ce) && ce.Exited() {
		return &ExitError{Code: ce.ExitStatus(), Stderr: tail.String()}
	}
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("kube: exec in %s: %w", pod.Name, context.Cause(ctx))
		}
		if refused(err) {
			// The API server answered the exec itself with an error (RBAC,
			// the admission policy, a pod gone): the command never ran.
			if apierrors.IsNotFound(err) {
				return errs.Wrap(errs.NotFound, err, "exec in pod %s: not found", pod.Name)
			}
			return errs.Wrap(errs.Forbidden, err, "exec in pod %s refused", pod.Name)
		}
		return errs.Wrap(errs.Unavailable, err, "exec in pod %s failed", pod.Name)
	}
	return nil
}

// refused says whether err is the API server's answer to a request with a
// status of 4xx.
func refused(err error) bool {
	var status apierrors.APIStatus
	if !errors.As(err, &status) {
		return false
	}
	code := status.Status().Code
	return code >= 400 && code < 500
}

func (c *Client) executor(u string) (remotecommand.Executor, error) {
	parsed, err := http.NewRequest(http.MethodPost, u, nil)
	if err != nil {
		return nil, err
	}
	spdy := func() (remotecommand.Executor, error) {
		return remotecommand.NewSPDYExecutor(c.cfg, "POST", parsed.URL)
	}
	ws := func() (remotecommand.Executor, error) { return remotecommand.NewWebSocketExecutor(c.cfg, "GET", u) }
	switch c.protocol {
	case SPDY:
		return spdy()
	case WebSocket:
		return ws()
	}
	w, err := ws()
	if err != nil {
		return nil, err
	}
	s, err := spdy()
	if err != nil {
		return nil, err
	}
	return remotecommand.NewFallbackExecutor(w, s, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})
}

// classify maps API errors to kinds: a missing pod is NotFound, a refusal
// (RBAC, the admission policy) Forbidden, the rest Unavailable.
func classify(op string, err error) error {
	switch {
	case apierrors.IsNotFound(err):
		return errs.Wrap(errs.NotFound, err, "kube: %s: not found", op)
	case apierrors.IsForbidden(err), apierrors.IsUnauthorized(err):
		return errs.Wrap(errs.Forbidden, err, "kube: %s: refused", op)
	}
	return errs.Wrap(errs.Unavailable, err, "kube: %s failed", op)
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf bytes.Buffer
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := len(p)
	if len(p) > t.max {
		p = p[len(p)-t.max:]
	}
	t.buf.Write(p)
	if over := t.buf.Len() - t.max; over > 0 {
		t.buf.Next(over)
	}
	return n, nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.buf.String()
}
