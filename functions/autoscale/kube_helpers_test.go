package function_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	custommetricsv1beta2 "k8s.io/metrics/pkg/apis/custom_metrics/v1beta2"
	metricsv1beta1 "k8s.io/metrics/pkg/apis/metrics/v1beta1"
	"sigs.k8s.io/yaml"

	function "github.com/streamspace-dev/functions/functions/autoscale"
	"github.com/streamspace-dev/functions/shared/fntest"
	"github.com/streamspace-dev/functions/shared/kubetest"
)

// kube is one test's Kubernetes: the shared API server, a fresh namespace
// where the function's ServiceAccount has the Role of deploy/, a metrics
// server, and a proxy in front of the API server for the faults a real one
// does not show on demand.
type kube struct {
	t       testing.TB
	cluster *kubetest.Cluster
	ns      string
	metrics *metricsServer
	proxy   *apiProxy
	// env starts the function against all of it.
	env map[string]string
}

// serviceAccount is the function's ServiceAccount, as deploy/ names it.
const serviceAccount = "autoscale"

// newKube prepares a namespace with deploy/functions/autoscale/role.yaml
// bound to the function's ServiceAccount, and the env that makes the
// function reach the API server as that ServiceAccount, through the proxy.
func newKube(t testing.TB) *kube {
	t.Helper()
	c := kubetest.Start(t)
	k := &kube{t: t, cluster: c, ns: c.Namespace(t), metrics: newMetricsServer(t)}
	k.bindRole()
	k.proxy = newAPIProxy(t, c.ServiceAccountConfig(k.ns, serviceAccount))
	k.env = map[string]string{
		"KUBECONFIG":               writeKubeconfig(t, k.proxy.URL),
		"STREAMSPACE_NAMESPACE":    k.ns,
		"AUTOSCALE_METRICS_SERVER": k.metrics.URL,
	}
	return k
}

// bindRole creates deploy/'s Role for the function in the namespace and
// binds it to the ServiceAccount.
func (k *kube) bindRole() {
	k.t.Helper()
	raw, err := os.ReadFile("../../deploy/functions/autoscale/role.yaml")
	require.NoError(k.t, err)
	docs := strings.Split(string(raw), "\n---\n")
	var role rbacv1.Role
	require.NoError(k.t, yaml.UnmarshalStrict([]byte(docs[0]), &role))
	require.Equal(k.t, "Role", role.Kind)
	role.Namespace = k.ns
	ctx := context.Background()
	_, err = k.cluster.Client.RbacV1().Roles(k.ns).Create(ctx, &role, metav1.CreateOptions{})
	require.NoError(k.t, err)
	rb := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: serviceAccount, Namespace: k.ns},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: serviceAccount, Namespace: k.ns}},
	}
	_, err = k.cluster.Client.RbacV1().RoleBindings(k.ns).Create(ctx, rb, metav1.CreateOptions{})
	require.NoError(k.t, err)
}

// writeKubeconfig writes a kubeconfig for server (the proxy, which adds the
// ServiceAccount's credentials) and returns its path.
func writeKubeconfig(t testing.TB, server string) string {
	t.Helper()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["test"] = &clientcmdapi.Cluster{Server: server}
	cfg.AuthInfos["test"] = &clientcmdapi.AuthInfo{}
	cfg.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "test"}
	cfg.CurrentContext = "test"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	require.NoError(t, clientcmd.WriteToFile(*cfg, path))
	return path
}

// target is what a test creates as a scale target.
type target struct {
	name     string
	kind     string // Deployment or StatefulSet
	replicas int32
	labels   map[string]string
	owner    *metav1.OwnerReference
	// cpu is each pod's cpu request; empty means 1.
	cpu string
}

// optedIn are the labels of a target that may be scaled.
func optedIn(extra ...string) map[string]string {
	l := map[string]string{function.OptInLabel: function.OptInValue}
	for i := 0; i+1 < len(extra); i += 2 {
		l[extra[i]] = extra[i+1]
	}
	return l
}

// create creates the target with a selector app=<name>.
func (k *kube) create(tg target) {
	k.t.Helper()
	ctx := context.Background()
	sel := map[string]string{"app": tg.name}
	meta := metav1.ObjectMeta{Name: tg.name, Namespace: k.ns, Labels: tg.labels}
	if tg.owner != nil {
		meta.OwnerReferences = []metav1.OwnerReference{*tg.owner}
	}
	tpl := corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: sel},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "main", Image: "registry.example.com/pool:1"}}},
	}
	var err error
	switch tg.kind {
	case "", "Deployment":
		_, err = k.cluster.Client.AppsV1().Deployments(k.ns).Create(ctx, &appsv1.Deployment{
			ObjectMeta: meta,
			Spec:       appsv1.DeploymentSpec{Replicas: &tg.replicas, Selector: &metav1.LabelSelector{MatchLabels: sel}, Template: tpl},
		}, metav1.CreateOptions{})
	case "StatefulSet":
		_, err = k.cluster.Client.AppsV1().StatefulSets(k.ns).Create(ctx, &appsv1.StatefulSet{
			ObjectMeta: meta,
			Spec:       appsv1.StatefulSetSpec{Replicas: &tg.replicas, Selector: &metav1.LabelSelector{MatchLabels: sel}, Template: tpl, ServiceName: tg.name},
		}, metav1.CreateOptions{})
	default:
		k.t.Fatalf("unknown kind %s", tg.kind)
	}
	require.NoError(k.t, err)
}

// replicas reads kind/name's replica count through its scale subresource,
// as the admin.
func (k *kube) replicas(kind, name string) int32 {
	k.t.Helper()
	ctx := context.Background()
	if kind == "StatefulSet" {
		s, err := k.cluster.Client.AppsV1().StatefulSets(k.ns).GetScale(ctx, name, metav1.GetOptions{})
		require.NoError(k.t, err)
		return s.Spec.Replicas
	}
	s, err := k.cluster.Client.AppsV1().Deployments(k.ns).GetScale(ctx, name, metav1.GetOptions{})
	require.NoError(k.t, err)
	return s.Spec.Replicas
}

// setReplicas sets a Deployment's replicas as another writer would.
func (k *kube) setReplicas(name string, n int32) {
	k.t.Helper()
	ctx := context.Background()
	s, err := k.cluster.Client.AppsV1().Deployments(k.ns).GetScale(ctx, name, metav1.GetOptions{})
	require.NoError(k.t, err)
	s.Spec.Replicas = n
	_, err = k.cluster.Client.AppsV1().Deployments(k.ns).UpdateScale(ctx, name, s, metav1.UpdateOptions{})
	require.NoError(k.t, err)
}

// podState is how a test pod looks to the replica calculation.
type podState struct {
	name    string
	ready   bool
	pending bool
	// started is how long ago the pod started (default an hour).
	started time.Duration
	cpu     string // request, default "1"
}

// pod creates a running pod of the target app=<app> and sets its status as
// a kubelet would (there is none).
func (k *kube) pod(app string, p podState) {
	k.t.Helper()
	ctx := context.Background()
	cpu := p.cpu
	if cpu == "" {
		cpu = "1"
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: p.name, Namespace: k.ns, Labels: map[string]string{"app": app}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "main", Image: "registry.example.com/pool:1",
			Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
				corev1.ResourceCPU: resource.MustParse(cpu), corev1.ResourceMemory: resource.MustParse("1Gi"),
			}},
		}}},
	}
	created, err := k.cluster.Client.CoreV1().Pods(k.ns).Create(ctx, pod, metav1.CreateOptions{})
	require.NoError(k.t, err)
	started := p.started
	if started == 0 {
		started = time.Hour
	}
	start := metav1.NewTime(time.Now().Add(-started))
	ready := corev1.ConditionFalse
	if p.ready {
		ready = corev1.ConditionTrue
	}
	created.Status = corev1.PodStatus{
		Phase:      corev1.PodRunning,
		StartTime:  &start,
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: ready, LastTransitionTime: start}},
	}
	if p.pending {
		created.Status = corev1.PodStatus{Phase: corev1.PodPending}
	}
	_, err = k.cluster.Client.CoreV1().Pods(k.ns).UpdateStatus(ctx, created, metav1.UpdateOptions{})
	require.NoError(k.t, err)
}

// metricsServer serves metrics.k8s.io/v1beta1 PodMetrics and
// custom.metrics.k8s.io/v1beta2 pods metrics from what the test sets, in
// those APIs' own JSON (their Go types). The metrics APIs are aggregated
// APIs that the test API server cannot route to a loopback address, so the
// function's metrics clients are pointed here directly.
type metricsServer struct {
	*httptest.Server
	mu     sync.Mutex
	pods   map[string]podMetric // by namespace/name
	custom map[string]int64     // metric/namespace/name → milli-value
	fail   atomic.Bool
	calls  atomic.Int64
}

type podMetric struct {
	labels map[string]string
	cpu    string
	memory string
}

func newMetricsServer(t testing.TB) *metricsServer {
	m := &metricsServer{pods: map[string]podMetric{}, custom: map[string]int64{}}
	m.Server = httptest.NewServer(http.HandlerFunc(m.serve))
	t.Cleanup(m.Close)
	return m
}

// setCPU gives the pod ns/name (labels app=<app>) a cpu usage sample.
func (m *metricsServer) setCPU(ns, app, name, cpu string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.pods[ns+"/"+name] = podMetric{labels: map[string]string{"app": app}, cpu: cpu, memory: "100Mi"}
}

func (m *metricsServer) setCustom(metric, ns, name string, milli int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.custom[metric+"/"+ns+"/"+name] = milli
}

func (m *metricsServer) serve(w http.ResponseWriter, r *http.Request) {
	m.calls.Add(1)
	if m.fail.Load() {
		http.Error(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","message":"metrics unavailable","code":503}`, http.StatusServiceUnavailable)
		return
	}
	sel, err := labels.Parse(r.URL.Query().Get("labelSelector"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	m.mu.Lock()
	defer m.mu.Unlock()
	now := metav1.NewTime(time.Now().Add(-5 * time.Second))
	switch {
	// /apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods
	case len(parts) == 6 && parts[1] == "metrics.k8s.io" && parts[2] == "v1beta1" && parts[5] == "pods":
		ns := parts[4]
		list := metricsv1beta1.PodMetricsList{TypeMeta: metav1.TypeMeta{Kind: "PodMetricsList", APIVersion: "metrics.k8s.io/v1beta1"}}
		for key, pm := range m.pods {
			pns, name, _ := strings.Cut(key, "/")
			if pns != ns || !sel.Matches(labels.Set(pm.labels)) {
				continue
			}
			list.Items = append(list.Items, metricsv1beta1.PodMetrics{
				ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: pm.labels},
				Timestamp:  now, Window: metav1.Duration{Duration: 30 * time.Second},
				Containers: []metricsv1beta1.ContainerMetrics{{Name: "main", Usage: corev1.ResourceList{
					corev1.ResourceCPU: resource.MustParse(pm.cpu), corev1.ResourceMemory: resource.MustParse(pm.memory),
				}}},
			})
		}
		writeJSON(w, list)
	// /apis/custom.metrics.k8s.io/v1beta2/namespaces/{ns}/pods/*/{metric}
	case len(parts) == 8 && parts[1] == "custom.metrics.k8s.io" && parts[2] == "v1beta2" && parts[5] == "pods" && parts[6] == "*":
		ns, metric := parts[4], parts[7]
		list := custommetricsv1beta2.MetricValueList{TypeMeta: metav1.TypeMeta{Kind: "MetricValueList", APIVersion: "custom.metrics.k8s.io/v1beta2"}}
		for key, v := range m.custom {
			km, rest, _ := strings.Cut(key, "/")
			kns, name, _ := strings.Cut(rest, "/")
			if km != metric || kns != ns {
				continue
			}
			list.Items = append(list.Items, custommetricsv1beta2.MetricValue{
				DescribedObject: corev1.ObjectReference{Kind: "Pod", APIVersion: "/v1", Namespace: ns, Name: name},
				Metric:          custommetricsv1beta2.MetricIdentifier{Name: metric},
				Timestamp:       now, Value: *resource.NewMilliQuantity(v, resource.DecimalSI),
			})
		}
		writeJSON(w, list)
	default:
		http.NotFound(w, r)
	}
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// apiProxy stands between the function and the API server. It adds the
// ServiceAccount's credentials (the function's kubeconfig has none) and
// passes every request through unchanged, unless the test asks for a fault
// a real API server does not show on demand: answering 500, added latency,
// or a concurrent change of a scale target between the function's read and
// its write (the conflict itself is the API server's own).
type apiProxy struct {
	*httptest.Server
	// fail500, when set, answers every request 500.
	fail500 atomic.Bool
	// latency is added to every request.
	latency atomic.Int64
	// afterScaleRead runs after a GET of a scale subresource has been
	// answered by the API server and before the answer reaches the
	// function.
	mu             sync.Mutex
	afterScaleRead func()
	calls          atomic.Int64
}

func newAPIProxy(t testing.TB, cfg *rest.Config) *apiProxy {
	t.Helper()
	rt, err := rest.TransportFor(cfg)
	require.NoError(t, err)
	u, err := url.Parse(cfg.Host)
	require.NoError(t, err)
	p := &apiProxy{}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.Transport = rt
	rp.ModifyResponse = func(resp *http.Response) error {
		if resp.Request.Method == http.MethodGet && strings.HasSuffix(resp.Request.URL.Path, "/scale") {
			p.mu.Lock()
			hook := p.afterScaleRead
			p.mu.Unlock()
			if hook != nil {
				hook()
			}
		}
		return nil
	}
	p.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.calls.Add(1)
		if d := time.Duration(p.latency.Load()); d > 0 {
			time.Sleep(d) // the added network latency the benchmark asks for
		}
		if p.fail500.Load() {
			http.Error(w, `{"kind":"Status","apiVersion":"v1","status":"Failure","message":"etcdserver: request timed out","reason":"InternalError","code":500}`, http.StatusInternalServerError)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(p.Close)
	return p
}

func (p *apiProxy) onScaleRead(hook func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.afterScaleRead = hook
}

// startWith starts the function against k, with its clock at c.
func startWith(t testing.TB, k *kube, c *clock, env map[string]string) (*fntest.Harness, *function.Function) {
	t.Helper()
	all := map[string]string{}
	for key, v := range k.env {
		all[key] = v
	}
	for key, v := range env {
		all[key] = v
	}
	f := function.New()
	if c != nil {
		c.set(f)
	}
	h := fntest.Start(t, f, all)
	t.Cleanup(func() { waitOutboxEmpty(t, h) })
	return h, f
}
