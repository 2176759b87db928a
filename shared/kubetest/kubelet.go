package kubetest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	remotecommandconsts "k8s.io/apimachinery/pkg/util/remotecommand"
	"k8s.io/client-go/tools/remotecommand"
	streaming "k8s.io/kubelet/pkg/cri/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"
)

// ConfigPath is where a session container mounts the user's home. Commands
// exec'd into a Kubelet's pod see their pod's folder there.
const ConfigPath = "/config"

// Kubelet is a Node whose kubelet endpoint is a TLS server in the test. The
// API server proxies pods/exec for the Node's pods to it, over SPDY, and
// translates WebSocket clients to SPDY itself, as in a cluster. It runs the
// exec'd command as a real process on this machine, with every "/config" in
// its arguments replaced by the pod's folder: real tar, find and chown over
// real files, standing in for the container.
type Kubelet struct {
	// Node is the Node's name.
	Node string

	cluster *Cluster
	server  *httptest.Server

	mu   sync.Mutex
	pods map[string]*Pod // by namespace/name
}

// Pod is a Running and Ready pod on a Kubelet.
type Pod struct {
	Namespace, Name string
	// Dir is the folder standing in for the container's /config.
	Dir string

	kubelet *Kubelet
	mu      sync.Mutex
	execs   map[*exec.Cmd]context.CancelFunc
	broken  bool
	// gate, while set, holds new execs before their command starts;
	// held counts those waiting.
	gate chan struct{}
	held int
}

// Kubelet registers a fresh Node served by a TLS test server that the test
// stops when it ends.
func (c *Cluster) Kubelet(tb testing.TB) *Kubelet {
	tb.Helper()
	k, err := c.RunKubelet()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(k.Stop)
	return k
}

// RunKubelet is Kubelet outside a test: the local runner (make run) serves
// its demo session pod with it. Stop ends its server.
func (c *Cluster) RunKubelet() (*Kubelet, error) {
	k := &Kubelet{Node: c.Name("kubetest-node"), cluster: c, pods: map[string]*Pod{}}
	k.server = httptest.NewTLSServer(http.HandlerFunc(k.serveExec))
	_, portText, err := net.SplitHostPort(k.server.Listener.Addr().String())
	if err != nil {
		k.Stop()
		return nil, err
	}
	port, _ := strconv.Atoi(portText)
	ctx := context.Background()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: k.Node}}
	node, err = c.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		k.Stop()
		return nil, fmt.Errorf("kubetest: create node: %w", err)
	}
	node.Status = corev1.NodeStatus{
		Addresses:       []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "127.0.0.1"}},
		DaemonEndpoints: corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: int32(port)}},
		Conditions:      []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: metav1.Now()}},
	}
	if _, err := c.Client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		k.Stop()
		return nil, fmt.Errorf("kubetest: node status: %w", err)
	}
	return k, nil
}

// Stop ends the Kubelet's server: execs into its pods fail from then on.
func (k *Kubelet) Stop() {
	k.server.Close()
}

// PodSpec says how a test pod looks. Zero values give a StreamSpace session
// pod: labels app=streamspace-session and session=SessionID, one container
// named "session".
type PodSpec struct {
	// SessionID is the session the pod belongs to (label session=).
	SessionID string
	// Labels replace the session labels when set.
	Labels map[string]string
	// Container names the container; default "session".
	Container string
	// Env is the container's environment (PUID, PGID).
	Env map[string]string
	// NotReady leaves the pod Running but not Ready.
	NotReady bool
	// Phase overrides the Running phase.
	Phase corev1.PodPhase
	// Dir is the folder standing in for /config; Pod gives a fresh one when
	// it is empty, AddPod requires it.
	Dir string
}

// Pod creates a pod on the Node in namespace and sets its status as a
// kubelet would. Its /config is spec.Dir, else a fresh folder the test fills.
func (k *Kubelet) Pod(tb testing.TB, namespace string, spec PodSpec) *Pod {
	tb.Helper()
	if spec.Dir == "" {
		spec.Dir = tb.TempDir()
	}
	p, err := k.AddPod(namespace, spec)
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// AddPod is Pod outside a test: spec.Dir, which must exist, is the pod's
// /config.
func (k *Kubelet) AddPod(namespace string, spec PodSpec) (*Pod, error) {
	if spec.Dir == "" {
		return nil, errors.New("kubetest: AddPod needs spec.Dir")
	}
	labels := spec.Labels
	if labels == nil {
		labels = map[string]string{"app": "streamspace-session", "session": spec.SessionID,
			"user": "kubetest-user", "template": "kubetest-template"}
	}
	container := spec.Container
	if container == "" {
		container = "session"
	}
	var env []corev1.EnvVar
	for name, value := range spec.Env {
		env = append(env, corev1.EnvVar{Name: name, Value: value})
	}
	name := k.cluster.Name("pod")
	if spec.SessionID != "" {
		name = k.cluster.Name("ss-" + strings.ToLower(spec.SessionID))
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName:   k.Node,
			Containers: []corev1.Container{{Name: container, Image: "streamspace/kubetest", Env: env}},
		},
	}
	ctx := context.Background()
	pod, err := k.cluster.Client.CoreV1().Pods(namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("kubetest: create pod: %w", err)
	}
	phase, ready := corev1.PodRunning, corev1.ConditionTrue
	if spec.Phase != "" {
		phase = spec.Phase
	}
	if spec.NotReady {
		ready = corev1.ConditionFalse
	}
	now := metav1.Now()
	pod.Status = corev1.PodStatus{
		Phase:      phase,
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: ready, LastTransitionTime: now}},
		ContainerStatuses: []corev1.ContainerStatus{{Name: container, Ready: ready == corev1.ConditionTrue,
			Image: "streamspace/kubetest", State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}}}},
		PodIP:     "127.0.0.1",
		StartTime: &now,
	}
	if _, err := k.cluster.Client.CoreV1().Pods(namespace).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		return nil, fmt.Errorf("kubetest: pod status: %w", err)
	}
	p := &Pod{Namespace: namespace, Name: name, Dir: spec.Dir, kubelet: k, execs: map[*exec.Cmd]context.CancelFunc{}}
	k.mu.Lock()
	k.pods[namespace+"/"+name] = p
	k.mu.Unlock()
	return p, nil
}

// Break kills the pod's running commands and makes every later exec fail,
// as a pod that disappears mid-stream.
func (p *Pod) Break() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.broken = true
	if p.gate != nil {
		close(p.gate)
		p.gate = nil
	}
	for _, cancel := range p.execs {
		cancel()
	}
}

// Hold makes the pod's execs wait, before their command starts, until
// release is called (or the pod breaks): a job held at a known point for
// as long as the test needs, with no timing. The test's end releases them.
func (p *Pod) Hold(tb testing.TB) (release func()) {
	tb.Helper()
	p.mu.Lock()
	gate := make(chan struct{})
	p.gate = gate
	p.mu.Unlock()
	var once sync.Once
	release = func() {
		once.Do(func() {
			p.mu.Lock()
			if p.gate == gate {
				close(gate)
				p.gate = nil
			}
			p.mu.Unlock()
		})
	}
	tb.Cleanup(release)
	return release
}

// KeepWriting appends a line to the file name of the pod's /config, over
// and over, as a live desktop writes while a snapshot reads it (GNU tar then
// exits 1, "file changed as we read it"), until stop is called; the test's
// end stops it too. The file must exist.
func (p *Pod) KeepWriting(tb testing.TB, name string) (stop func()) {
	tb.Helper()
	f, err := os.OpenFile(filepath.Join(p.Dir, name), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		tb.Fatalf("kubetest: keep writing %s: %v", name, err)
	}
	done, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		defer f.Close()
		line := []byte("the desktop keeps writing\n")
		for {
			select {
			case <-done:
				return
			default:
				if _, err := f.Write(line); err != nil {
					return
				}
			}
		}
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			close(done)
			<-stopped
		})
	}
	tb.Cleanup(stop)
	return stop
}

// Held returns how many execs wait on a Hold.
func (p *Pod) Held() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.held
}

// Running returns how many commands are running in the pod.
func (p *Pod) Running() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.execs)
}

// Delete breaks the pod and deletes it from the API server.
func (p *Pod) Delete(tb testing.TB) {
	tb.Helper()
	p.Break()
	err := p.kubelet.cluster.Client.CoreV1().Pods(p.Namespace).Delete(context.Background(), p.Name,
		metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
	if err != nil {
		tb.Fatalf("kubetest: delete pod: %v", err)
	}
}

// serveExec is the kubelet's /exec/{namespace}/{pod}/{container} endpoint.
func (k *Kubelet) serveExec(w http.ResponseWriter, r *http.Request) {
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/"), "/")
	if len(parts) != 4 || parts[0] != "exec" {
		http.NotFound(w, r)
		return
	}
	opts, err := streaming.NewOptions(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	streaming.ServeExec(w, r, k, parts[1]+"/"+parts[2], "", parts[3], r.URL.Query()["command"], opts,
		4*time.Hour, time.Minute, remotecommandconsts.SupportedStreamingProtocols)
}

// ExecInContainer runs cmd for ServeExec.
func (k *Kubelet) ExecInContainer(ctx context.Context, name string, _ types.UID, _ string, cmd []string,
	in io.Reader, out, errOut io.WriteCloser, _ bool, _ <-chan remotecommand.TerminalSize, _ time.Duration) error {
	k.mu.Lock()
	pod := k.pods[name]
	k.mu.Unlock()
	if pod == nil {
		return errors.New("kubetest: no such pod " + name)
	}
	if len(cmd) == 0 {
		return errors.New("kubetest: no command")
	}
	args := make([]string, len(cmd))
	for i, arg := range cmd {
		args[i] = strings.ReplaceAll(arg, ConfigPath, pod.Dir)
	}
	// Not the request's context: after the upgrade the connection is
	// hijacked, and net/http may cancel that context while the stream is
	// still in use, killing the command mid-stream. Break ends a command;
	// so does the end of its stdin or a write to a closed stream.
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	c := exec.CommandContext(ctx, args[0], args[1:]...)
	c.Dir = pod.Dir
	c.Env = os.Environ()
	c.Stdout, c.Stderr = out, errOut
	// The command's stdin is fed by a goroutine of ours rather than by
	// exec.Cmd's, which Wait would wait for: a client that never closes its
	// stdin would keep a killed command's Wait from returning. Ours ends when
	// ServeExec closes the stream after the command has exited.
	var stdin io.WriteCloser
	if in != nil {
		var err error
		if stdin, err = c.StdinPipe(); err != nil {
			return err
		}
	}
	pod.mu.Lock()
	if gate := pod.gate; gate != nil {
		pod.held++
		pod.mu.Unlock()
		<-gate
		pod.mu.Lock()
		pod.held--
	}
	if pod.broken {
		pod.mu.Unlock()
		return errors.New("kubetest: pod " + name + " is gone")
	}
	pod.execs[c] = cancel
	pod.mu.Unlock()
	defer func() {
		pod.mu.Lock()
		delete(pod.execs, c)
		pod.mu.Unlock()
	}()
	if err := c.Start(); err != nil {
		return err
	}
	if stdin != nil {
		go func() {
			_, _ = io.Copy(stdin, in)
			stdin.Close()
		}()
	}
	err := c.Wait()
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) && ctx.Err() == nil {
		return utilexec.ExitErrorWrapper{ExitError: exitErr}
	}
	return err
}
