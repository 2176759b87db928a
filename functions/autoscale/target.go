package function

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"
	custommetricsv1beta2 "k8s.io/metrics/pkg/apis/custom_metrics/v1beta2"
	metricsclient "k8s.io/metrics/pkg/client/clientset/versioned"

	"github.com/streamspace-dev/functions/shared/errs"
)

// The labels that decide what may be scaled (docs/autoscale.md, Targets).
const (
	// OptInLabel must be "enabled" on every target.
	OptInLabel = "streamspace.io/autoscale"
	OptInValue = "enabled"
	// TemplatePoolLabel marks a template's warm pool: target_type template
	// selects the one object carrying it with the target_id as value.
	TemplatePoolLabel = "streamspace.io/template-pool"
	// SessionLabel (with SessionValue) marks a user's session; scaling one
	// would stop a desktop, so it is never a target.
	SessionLabel = "app"
	SessionValue = "streamspace-session"
)

// kedaScaledObjects is KEDA's ScaledObject resource. No CRD means no KEDA.
var kedaScaledObjects = schema.GroupVersionResource{Group: "keda.sh", Version: "v1alpha1", Resource: "scaledobjects"}

// Refusal is a reason a policy cannot act on its target now: missing, not
// opted in, a session, owned by something else, or scaled by another
// scaler. It is recorded (scaling_events, autoscale.failed) when it starts
// or changes and is never a reason for the broker to retry.
type Refusal struct{ Reason string }

func (r *Refusal) Error() string { return r.Reason }

func refuse(format string, args ...any) *Refusal {
	return &Refusal{Reason: fmt.Sprintf(format, args...)}
}

// Target is a resolved, admissible scale target.
type Target struct {
	// Kind is Deployment or StatefulSet; Name its name.
	Kind, Name string
	// Replicas, Selector and ResourceVersion are from its scale
	// subresource.
	Replicas        int32
	Selector        string
	ResourceVersion string
	scale           *autoscalingv1.Scale
}

// cluster is the function's view of Kubernetes: the namespace it scales in
// and the clients it needs. Every call names its operation, and an error
// that is the API server's (5xx, unreachable, throttled) is errs.Unavailable,
// so the event path answers 5xx and the broker retries.
type cluster struct {
	namespace string
	kube      kubernetes.Interface
	dynamic   dynamic.Interface
	meta      metadata.Interface
	metrics   metricsclient.Interface
	custom    rest.Interface
}

// newCluster builds the clients from cfg; metricsCfg, when not nil, is
// where metrics.k8s.io and custom.metrics.k8s.io are served instead of
// through the API server's aggregation layer.
func newCluster(namespace string, cfg, metricsCfg *rest.Config) (*cluster, error) {
	if metricsCfg == nil {
		metricsCfg = cfg
	}
	// The typed clients speak protobuf, which the API server offers for
	// every built-in kind and which costs a fraction of JSON to decode;
	// a tick reads a scale per policy.
	pcfg := rest.CopyConfig(cfg)
	pcfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	pcfg.ContentType = "application/vnd.kubernetes.protobuf"
	kube, err := kubernetes.NewForConfig(pcfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes dynamic client: %w", err)
	}
	md, err := metadata.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes metadata client: %w", err)
	}
	mc, err := metricsclient.NewForConfig(metricsCfg)
	if err != nil {
		return nil, fmt.Errorf("metrics.k8s.io client: %w", err)
	}
	cc := rest.CopyConfig(metricsCfg)
	cc.APIPath = "/apis"
	cc.GroupVersion = &custommetricsv1beta2.SchemeGroupVersion
	cc.NegotiatedSerializer = scheme.Codecs.WithoutConversion()
	custom, err := rest.RESTClientFor(cc)
	if err != nil {
		return nil, fmt.Errorf("custom.metrics.k8s.io client: %w", err)
	}
	return &cluster{namespace: namespace, kube: kube, dynamic: dyn, meta: md, metrics: mc, custom: custom}, nil
}

// kubeError classifies an API error of operation op: the API server being
// unavailable is errs.Unavailable (retry); anything else is internal.
func kubeError(op string, err error) error {
	if err == nil {
		return nil
	}
	var se apierrors.APIStatus
	if errors.As(err, &se) {
		code := se.Status().Code
		if code >= 500 || code == http.StatusTooManyRequests || code == 0 {
			return errs.Wrap(errs.Unavailable, err, "the Kubernetes API is unavailable (%s); try again", op)
		}
		return fmt.Errorf("%s: %w", op, err)
	}
	// Transport failures (connection refused, timeouts) are worth a retry.
	return errs.Wrap(errs.Unavailable, err, "the Kubernetes API is unavailable (%s); try again", op)
}

// Snapshot is what an evaluation round reads of the namespace once, for
// all its policies: the targets of the other autoscalers (HPAs and KEDA
// ScaledObjects) and the opted-in Deployments and StatefulSets, by
// "Kind/name". With it, evaluating a deployment or statefulset target
// costs one call (its scale) instead of four.
type Snapshot struct {
	Scalers map[string]string
	OptedIn map[string]metav1.ObjectMeta
}

// snapshot lists the namespace's HPAs, ScaledObjects and opted-in
// Deployments and StatefulSets.
func (c *cluster) snapshot(ctx context.Context) (Snapshot, error) {
	snap := Snapshot{OptedIn: map[string]metav1.ObjectMeta{}}
	var err error
	if snap.Scalers, err = c.scalers(ctx); err != nil {
		return snap, err
	}
	// Metadata only: a thousand Deployments' specs would cost megabytes to
	// decode for nothing.
	opted := metav1.ListOptions{LabelSelector: labels.Set{OptInLabel: OptInValue}.String()}
	for kind, gvr := range map[string]schema.GroupVersionResource{
		"Deployment":  {Group: "apps", Version: "v1", Resource: "deployments"},
		"StatefulSet": {Group: "apps", Version: "v1", Resource: "statefulsets"},
	} {
		list, err := c.meta.Resource(gvr).Namespace(c.namespace).List(ctx, opted)
		if err != nil {
			return snap, kubeError("list "+gvr.Resource, err)
		}
		for _, o := range list.Items {
			snap.OptedIn[kind+"/"+o.Name] = o.ObjectMeta
		}
	}
	return snap, nil
}

// scalers lists the namespace's HPAs and ScaledObjects: the targets other
// autoscalers own.
func (c *cluster) scalers(ctx context.Context) (map[string]string, error) {
	out := map[string]string{}
	hpas, err := c.kube.AutoscalingV2().HorizontalPodAutoscalers(c.namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, kubeError("list horizontalpodautoscalers", err)
	}
	for _, h := range hpas.Items {
		ref := h.Spec.ScaleTargetRef
		if group(ref.APIVersion) == "apps" {
			out[ref.Kind+"/"+ref.Name] = fmt.Sprintf("HorizontalPodAutoscaler %s", h.Name)
		}
	}
	sos, err := c.dynamic.Resource(kedaScaledObjects).Namespace(c.namespace).List(ctx, metav1.ListOptions{})
	switch {
	case apierrors.IsNotFound(err):
		// No ScaledObject CRD: KEDA is not installed.
	case err != nil:
		return nil, kubeError("list scaledobjects.keda.sh", err)
	default:
		for _, so := range sos.Items {
			kind, _, _ := unstructured.NestedString(so.Object, "spec", "scaleTargetRef", "kind")
			name, _, _ := unstructured.NestedString(so.Object, "spec", "scaleTargetRef", "name")
			api, _, _ := unstructured.NestedString(so.Object, "spec", "scaleTargetRef", "apiVersion")
			if kind == "" {
				kind = "Deployment" // KEDA's default
			}
			if api == "" || group(api) == "apps" {
				out[kind+"/"+name] = fmt.Sprintf("KEDA ScaledObject %s", so.GetName())
			}
		}
	}
	return out, nil
}

func group(apiVersion string) string {
	g, _, ok := strings.Cut(apiVersion, "/")
	if !ok {
		return ""
	}
	return g
}

// resolve finds the policy's target and checks that it may be scaled: it
// exists (exactly one, for a template), is not a session, is opted in, is
// owned by nothing but a Deployment or StatefulSet of the namespace, and no
// other scaler in scalers owns it. It then reads the scale subresource.
func (c *cluster) resolve(ctx context.Context, p Policy, snap Snapshot) (Target, error) {
	meta, kind, err := c.find(ctx, p, snap)
	if err != nil {
		return Target{}, err
	}
	where := fmt.Sprintf("%s %s in namespace %s", kind, meta.Name, c.namespace)
	if meta.Labels[SessionLabel] == SessionValue {
		return Target{}, refuse("%s is labelled %s=%s: a user's session is never scaled", where, SessionLabel, SessionValue)
	}
	if meta.Labels[OptInLabel] != OptInValue {
		return Target{}, refuse("%s does not carry the label %s: %q, so it has not opted in to autoscaling", where, OptInLabel, OptInValue)
	}
	for _, o := range meta.OwnerReferences {
		if group(o.APIVersion) == "serving.knative.dev" {
			return Target{}, refuse("%s is owned by Knative %s %s, which scales it itself", where, o.Kind, o.Name)
		}
		if group(o.APIVersion) != "apps" || (o.Kind != "Deployment" && o.Kind != "StatefulSet") {
			return Target{}, refuse("%s is owned by %s %s; only objects owned by nothing or by a Deployment or StatefulSet of the namespace are scaled", where, o.Kind, o.Name)
		}
	}
	if other, ok := snap.Scalers[kind+"/"+meta.Name]; ok {
		return Target{}, refuse("%s is scaled by %s; two scalers on one target would fight", where, other)
	}
	return c.readScale(ctx, kind, meta.Name)
}

// find reads the target object's metadata: by name for deployment and
// statefulset targets (from the snapshot when it is opted in; otherwise
// read, to say why it is refused), by the template-pool label for a
// template (always listed, since a second pool that is not opted in is a
// conflict too).
func (c *cluster) find(ctx context.Context, p Policy, snap Snapshot) (metav1.ObjectMeta, string, error) {
	switch p.TargetType {
	case TargetDeployment, TargetStatefulSet:
		kind := "Deployment"
		if p.TargetType == TargetStatefulSet {
			kind = "StatefulSet"
		}
		if meta, ok := snap.OptedIn[kind+"/"+p.TargetID]; ok {
			return meta, kind, nil
		}
	}
	switch p.TargetType {
	case TargetDeployment:
		d, err := c.kube.AppsV1().Deployments(c.namespace).Get(ctx, p.TargetID, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return metav1.ObjectMeta{}, "", refuse("Deployment %s not found in namespace %s", p.TargetID, c.namespace)
		}
		if err != nil {
			return metav1.ObjectMeta{}, "", kubeError("get deployment", err)
		}
		return d.ObjectMeta, "Deployment", nil
	case TargetStatefulSet:
		s, err := c.kube.AppsV1().StatefulSets(c.namespace).Get(ctx, p.TargetID, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return metav1.ObjectMeta{}, "", refuse("StatefulSet %s not found in namespace %s", p.TargetID, c.namespace)
		}
		if err != nil {
			return metav1.ObjectMeta{}, "", kubeError("get statefulset", err)
		}
		return s.ObjectMeta, "StatefulSet", nil
	case TargetTemplate:
		sel := labels.Set{TemplatePoolLabel: p.TargetID}.String()
		ds, err := c.kube.AppsV1().Deployments(c.namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
		if err != nil {
			return metav1.ObjectMeta{}, "", kubeError("list deployments", err)
		}
		ss, err := c.kube.AppsV1().StatefulSets(c.namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
		if err != nil {
			return metav1.ObjectMeta{}, "", kubeError("list statefulsets", err)
		}
		var found []string
		var meta metav1.ObjectMeta
		var kind string
		for _, d := range ds.Items {
			found, meta, kind = append(found, "Deployment "+d.Name), d.ObjectMeta, "Deployment"
		}
		for _, s := range ss.Items {
			found, meta, kind = append(found, "StatefulSet "+s.Name), s.ObjectMeta, "StatefulSet"
		}
		switch len(found) {
		case 0:
			return meta, "", refuse("no Deployment or StatefulSet labelled %s in namespace %s", sel, c.namespace)
		case 1:
			return meta, kind, nil
		}
		slices.Sort(found)
		return meta, "", refuse("%d objects labelled %s in namespace %s (%s); a template's warm pool must be exactly one", len(found), sel, c.namespace, strings.Join(found, ", "))
	}
	return metav1.ObjectMeta{}, "", refuse("unknown target_type %q", p.TargetType)
}

// readScale reads the scale subresource of kind/name.
func (c *cluster) readScale(ctx context.Context, kind, name string) (Target, error) {
	var s *autoscalingv1.Scale
	var err error
	if kind == "StatefulSet" {
		s, err = c.kube.AppsV1().StatefulSets(c.namespace).GetScale(ctx, name, metav1.GetOptions{})
	} else {
		s, err = c.kube.AppsV1().Deployments(c.namespace).GetScale(ctx, name, metav1.GetOptions{})
	}
	if apierrors.IsNotFound(err) {
		return Target{}, refuse("%s %s not found in namespace %s", kind, name, c.namespace)
	}
	if err != nil {
		return Target{}, kubeError("get "+strings.ToLower(kind)+"s/scale", err)
	}
	return Target{Kind: kind, Name: name, Replicas: s.Spec.Replicas, Selector: s.Status.Selector, ResourceVersion: s.ResourceVersion, scale: s}, nil
}

// errConflict is a write refused because the target changed since it was
// read (a stale resourceVersion).
var errConflict = errors.New("the target changed since it was read")

// writeScale sets t's replicas to n through the scale subresource, carrying
// the resourceVersion read, so a concurrent change is a conflict
// (errConflict) rather than overwritten.
func (c *cluster) writeScale(ctx context.Context, t Target, n int32) error {
	s := t.scale.DeepCopy()
	s.Spec.Replicas = n
	var err error
	if t.Kind == "StatefulSet" {
		_, err = c.kube.AppsV1().StatefulSets(c.namespace).UpdateScale(ctx, t.Name, s, metav1.UpdateOptions{})
	} else {
		_, err = c.kube.AppsV1().Deployments(c.namespace).UpdateScale(ctx, t.Name, s, metav1.UpdateOptions{})
	}
	if apierrors.IsConflict(err) {
		return errConflict
	}
	if apierrors.IsNotFound(err) {
		return refuse("%s %s was deleted while it was being scaled", t.Kind, t.Name)
	}
	return kubeError("update "+strings.ToLower(t.Kind)+"s/scale", err)
}

// podSamples reads the target's pods and, for cpu and memory, their usage
// from metrics.k8s.io, or for custom the pods metric from
// custom.metrics.k8s.io.
func (c *cluster) podSamples(ctx context.Context, t Target, metric MetricType, metricName string) ([]PodSample, error) {
	if t.Selector == "" {
		return nil, refuse("%s %s has no selector in its scale subresource", t.Kind, t.Name)
	}
	pods, err := c.kube.CoreV1().Pods(c.namespace).List(ctx, metav1.ListOptions{LabelSelector: t.Selector})
	if err != nil {
		return nil, kubeError("list pods", err)
	}
	samples := make([]PodSample, 0, len(pods.Items))
	index := make(map[string]int, len(pods.Items))
	res := corev1.ResourceCPU
	if metric == MetricMemory {
		res = corev1.ResourceMemory
	}
	for _, p := range pods.Items {
		s := PodSample{Name: p.Name, Phase: PodPhase(p.Status.Phase), Deleting: p.DeletionTimestamp != nil}
		if p.Status.StartTime != nil {
			s.Started = p.Status.StartTime.Time
		}
		for _, cond := range p.Status.Conditions {
			if cond.Type == corev1.PodReady {
				s.Ready = cond.Status == corev1.ConditionTrue
				s.ReadyKnown = p.Status.StartTime != nil
				s.ReadyChanged = cond.LastTransitionTime.Time
			}
		}
		s.Request, s.HasRequest = podRequest(&p, res)
		index[p.Name] = len(samples)
		samples = append(samples, s)
	}
	switch metric {
	case MetricCPU, MetricMemory:
		list, err := c.metrics.MetricsV1beta1().PodMetricses(c.namespace).List(ctx, metav1.ListOptions{LabelSelector: t.Selector})
		if err != nil {
			return nil, kubeError("list pods.metrics.k8s.io", err)
		}
		for _, pm := range list.Items {
			i, ok := index[pm.Name]
			if !ok {
				continue
			}
			var sum int64
			for _, ct := range pm.Containers {
				q := ct.Usage[res]
				sum += quantity(q, res)
			}
			samples[i].Usage, samples[i].HasUsage = sum, true
			samples[i].UsageAt, samples[i].Window = pm.Timestamp.Time, pm.Window.Duration
		}
	case MetricCustom:
		raw, err := c.custom.Get().Namespace(c.namespace).Resource("pods").Name("*").SubResource(metricName).
			Param("labelSelector", t.Selector).Do(ctx).Raw()
		if err != nil {
			return nil, kubeError("get custom.metrics.k8s.io pods/"+metricName, err)
		}
		var list custommetricsv1beta2.MetricValueList
		if err := json.Unmarshal(raw, &list); err != nil {
			return nil, fmt.Errorf("decode custom metric %s: %w", metricName, err)
		}
		for _, v := range list.Items {
			i, ok := index[v.DescribedObject.Name]
			if !ok {
				continue
			}
			samples[i].Usage, samples[i].HasUsage = v.Value.MilliValue(), true
			samples[i].UsageAt = v.Timestamp.Time
			if v.WindowSeconds != nil {
				samples[i].Window = time.Duration(*v.WindowSeconds) * time.Second
			}
		}
	}
	return samples, nil
}

// podRequest sums the pod's containers' requests for res, restartable init
// containers (sidecars) included, as the HPA does (calculateRequests); ok
// is false when a container has none.
func podRequest(p *corev1.Pod, res corev1.ResourceName) (int64, bool) {
	containers := slices.Clone(p.Spec.Containers)
	for _, c := range p.Spec.InitContainers {
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			containers = append(containers, c)
		}
	}
	var sum int64
	for _, c := range containers {
		q, ok := c.Resources.Requests[res]
		if !ok {
			return 0, false
		}
		sum += quantity(q, res)
	}
	return sum, len(containers) > 0
}

// quantity is millicores for cpu and bytes for memory.
func quantity(q resource.Quantity, res corev1.ResourceName) int64 {
	if res == corev1.ResourceCPU {
		return q.MilliValue()
	}
	return q.Value()
}
