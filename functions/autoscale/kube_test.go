package function_test

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	authorizationv1 "k8s.io/api/authorization/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/streamspace-dev/functions/events"
	function "github.com/streamspace-dev/functions/functions/autoscale"
	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/fntest"
)

// TestRoleGrantsExactlyWhatTheFunctionNeeds impersonates the function's
// ServiceAccount, bound to deploy/'s Role, and asks the API server what it
// may do: each permission the function uses, and not an update of a
// Deployment itself (only its replica count, through the scale
// subresource). What the API server serves is also done for real.
func TestRoleGrantsExactlyWhatTheFunctionNeeds(t *testing.T) {
	k := newKube(t)
	sa := k.cluster.ServiceAccountConfig(k.ns, serviceAccount)
	client, err := kubernetes.NewForConfig(sa)
	require.NoError(t, err)
	ctx := context.Background()
	k.create(target{name: "pool", replicas: 1, labels: optedIn()})

	tests := []struct {
		name                           string
		group, resource, sub, verb, on string
		want                           bool
	}{
		{"get deployments", "apps", "deployments", "", "get", "pool", true},
		{"list deployments", "apps", "deployments", "", "list", "", true},
		{"get statefulsets", "apps", "statefulsets", "", "get", "pool", true},
		{"list statefulsets", "apps", "statefulsets", "", "list", "", true},
		{"get deployments/scale", "apps", "deployments", "scale", "get", "pool", true},
		{"update deployments/scale", "apps", "deployments", "scale", "update", "pool", true},
		{"get statefulsets/scale", "apps", "statefulsets", "scale", "get", "pool", true},
		{"update statefulsets/scale", "apps", "statefulsets", "scale", "update", "pool", true},
		{"list pods", "", "pods", "", "list", "", true},
		{"list horizontalpodautoscalers", "autoscaling", "horizontalpodautoscalers", "", "list", "", true},
		{"list scaledobjects.keda.sh", "keda.sh", "scaledobjects", "", "list", "", true},
		{"list pods.metrics.k8s.io", "metrics.k8s.io", "pods", "", "list", "", true},
		{"get custom.metrics.k8s.io", "custom.metrics.k8s.io", "pods", "sessions", "get", "*", true},
		{"not update deployments", "apps", "deployments", "", "update", "pool", false},
		{"not patch deployments", "apps", "deployments", "", "patch", "pool", false},
		{"not patch deployments/scale", "apps", "deployments", "scale", "patch", "pool", false},
		{"not delete deployments", "apps", "deployments", "", "delete", "pool", false},
		{"not create pods", "", "pods", "", "create", "", false},
		{"not get secrets", "", "secrets", "", "get", "x", false},
		{"not update horizontalpodautoscalers", "autoscaling", "horizontalpodautoscalers", "", "update", "x", false},
		{"not in another namespace", "apps", "deployments", "scale", "update", "pool", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ns := k.ns
			if tc.name == "not in another namespace" {
				ns = "default"
			}
			review, err := client.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
				Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
					Namespace: ns, Group: tc.group, Resource: tc.resource, Subresource: tc.sub, Verb: tc.verb, Name: tc.on,
				}},
			}, metav1.CreateOptions{})
			require.NoError(t, err)
			assert.Equal(t, tc.want, review.Status.Allowed, "%s: %s", tc.name, review.Status.Reason)
		})
	}

	t.Run("for real: scale through the subresource", func(t *testing.T) {
		s, err := client.AppsV1().Deployments(k.ns).GetScale(ctx, "pool", metav1.GetOptions{})
		require.NoError(t, err)
		s.Spec.Replicas = 2
		_, err = client.AppsV1().Deployments(k.ns).UpdateScale(ctx, "pool", s, metav1.UpdateOptions{})
		require.NoError(t, err)
		assert.Equal(t, int32(2), k.replicas("Deployment", "pool"))
		_, err = client.CoreV1().Pods(k.ns).List(ctx, metav1.ListOptions{})
		require.NoError(t, err)
		_, err = client.AutoscalingV2().HorizontalPodAutoscalers(k.ns).List(ctx, metav1.ListOptions{})
		require.NoError(t, err)
	})
	t.Run("for real: the Deployment itself cannot be changed", func(t *testing.T) {
		d, err := client.AppsV1().Deployments(k.ns).Get(ctx, "pool", metav1.GetOptions{})
		require.NoError(t, err)
		d.Spec.Template.Spec.Containers[0].Image = "attacker.example.com/x:1"
		_, err = client.AppsV1().Deployments(k.ns).Update(ctx, d, metav1.UpdateOptions{})
		assert.True(t, apierrors.IsForbidden(err), "update of a Deployment: %v", err)
	})
}

// evaluate posts …/evaluate for policy id and returns the result.
func evaluate(t *testing.T, h *fntest.Harness, token string, id int64, dry bool) function.EvaluateResult {
	t.Helper()
	status, raw := h.Do(http.MethodPost, policyPath(id, fmt.Sprintf("/evaluate?dryRun=%t", dry)), token, nil)
	require.Equal(t, http.StatusOK, status, "%s", raw)
	return decodeAs[function.EvaluateResult](t, raw)
}

// sessions adds n active sessions of template in namespace.
func sessions(t *testing.T, h *fntest.Harness, template, namespace string, n int) {
	t.Helper()
	exec(t, h, `insert into users (id, username, email) values ('u-sessions', 'u-sessions', 'u@example.com') on conflict do nothing`)
	exec(t, h, `insert into sessions (id, user_id, template_name, state, namespace)
		select $1 || '-' || g || '-' || floor(random() * 1e9)::text, 'u-sessions', $1, 'running', $2 from generate_series(1, $3::int) g`, template, namespace, n)
}

func TestScalesDeploymentsAndStatefulSets(t *testing.T) {
	k := newKube(t)
	h, _ := startWith(t, k, nil, nil)
	admin := h.Token("root", authn.Admin)
	tests := []struct {
		name, kind string
		body       map[string]any
	}{
		{"deployment", "Deployment", with(policy("deployment", "web-pool"), "metadata", map[string]any{"template": "web"})},
		{"statefulset", "StatefulSet", with(policy("statefulset", "db-pool"), "target_type", "statefulset", "metadata", map[string]any{"template": "db"})},
		{"template warm pool", "Deployment", with(policy("template", "ignored"), "target_type", "template", "target_id", "firefox")},
	}
	sessions(t, h, "web", k.ns, 35)
	sessions(t, h, "db", k.ns, 25)
	sessions(t, h, "firefox", k.ns, 41)
	k.create(target{name: "web-pool", replicas: 1, labels: optedIn()})
	k.create(target{name: "db-pool", kind: "StatefulSet", replicas: 1, labels: optedIn()})
	k.create(target{name: "ff-warm", replicas: 1, labels: optedIn("streamspace.io/template-pool", "firefox")})
	want := map[string]int32{"deployment": 4, "statefulset": 3, "template warm pool": 5}
	names := map[string]string{"deployment": "web-pool", "statefulset": "db-pool", "template warm pool": "ff-warm"}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := create(t, h, admin, tc.body)
			before := tableDump(t, h)
			dry := evaluate(t, h, admin, p.ID, true)
			assert.True(t, dry.DryRun)
			assert.False(t, dry.Applied)
			assert.Equal(t, function.ScaleUp, dry.Decision.Action, dry.Message)
			assert.Equal(t, want[tc.name], dry.Decision.Desired, dry.Message)
			assert.Contains(t, dry.Message, "dry run, nothing written")
			assert.Equal(t, int32(1), k.replicas(tc.kind, names[tc.name]), "a dry run scales nothing")
			assert.Equal(t, before, tableDump(t, h), "a dry run writes nothing")

			res := evaluate(t, h, admin, p.ID, false)
			assert.True(t, res.Applied, res.Message)
			assert.Equal(t, tc.kind+"/"+names[tc.name], res.Target)
			assert.Equal(t, want[tc.name], k.replicas(tc.kind, names[tc.name]))
			assert.Positive(t, res.EventID)
			assert.Equal(t, 1, h.Count(`select count(*) from scaling_events where id = $1 and policy_id = $2 and action = 'scale_up'
				and previous_replicas = 1 and new_replicas = $3 and trigger = 'metric' and status = 'completed' and reason like '%active sessions%'
				and decision_id is not null`, res.EventID, p.ID, want[tc.name]))

			again := evaluate(t, h, admin, p.ID, false)
			assert.Equal(t, function.NoChange, again.Decision.Action, again.Message)
			assert.False(t, again.Applied)
			assert.Zero(t, again.EventID)
			assert.Equal(t, 1, h.Count(`select count(*) from scaling_events where policy_id = $1`, p.ID), "no change, no row")
		})
	}
	t.Run("events", func(t *testing.T) {
		got := sent(t, h, events.AutoscaleScaled, len(tests))
		for _, e := range got {
			d, err := events.Decode[events.AutoscaleScaledData](e)
			require.NoError(t, err)
			assert.Equal(t, k.ns, d.Namespace)
			assert.Equal(t, int32(1), d.FromReplicas)
			assert.Contains(t, names, map[string]string{"web-pool": "deployment", "db-pool": "statefulset", "ff-warm": "template warm pool"}[d.Deployment])
			assert.Equal(t, want[map[string]string{"web-pool": "deployment", "db-pool": "statefulset", "ff-warm": "template warm pool"}[d.Deployment]], d.ToReplicas)
			assert.NotEmpty(t, d.Reason)
		}
	})
}

func TestRefusesWhatItMustNotScale(t *testing.T) {
	k := newKube(t)
	h, _ := startWith(t, k, nil, nil)
	admin := h.Token("root", authn.Admin)
	ctx := context.Background()
	sessions(t, h, "app", k.ns, 30)

	k.create(target{name: "not-opted-in", replicas: 1, labels: map[string]string{"team": "x"}})
	k.create(target{name: "a-session", replicas: 1, labels: optedIn("app", "streamspace-session", "template", "app")})
	k.create(target{name: "knative-rev", replicas: 1, labels: optedIn(), owner: &metav1.OwnerReference{
		APIVersion: "serving.knative.dev/v1", Kind: "Revision", Name: "api-00001", UID: "u-1"}})
	k.create(target{name: "owned-by-other", replicas: 1, labels: optedIn(), owner: &metav1.OwnerReference{
		APIVersion: "example.com/v1", Kind: "Operator", Name: "op", UID: "u-2"}})
	k.create(target{name: "hpa-owned", replicas: 1, labels: optedIn()})
	k.create(target{name: "keda-owned", replicas: 1, labels: optedIn()})
	k.create(target{name: "twin-a", replicas: 1, labels: optedIn("streamspace.io/template-pool", "twins")})
	k.create(target{name: "twin-b", kind: "StatefulSet", replicas: 1, labels: optedIn("streamspace.io/template-pool", "twins")})
	minReplicas := int32(1)
	_, err := k.cluster.Client.AutoscalingV2().HorizontalPodAutoscalers(k.ns).Create(ctx, &autoscalingv2.HorizontalPodAutoscaler{
		ObjectMeta: metav1.ObjectMeta{Name: "hpa", Namespace: k.ns},
		Spec: autoscalingv2.HorizontalPodAutoscalerSpec{
			ScaleTargetRef: autoscalingv2.CrossVersionObjectReference{APIVersion: "apps/v1", Kind: "Deployment", Name: "hpa-owned"},
			MinReplicas:    &minReplicas, MaxReplicas: 5,
		},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	installKEDA(t, k)
	so := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
		"metadata": map[string]any{"name": "so", "namespace": k.ns},
		"spec":     map[string]any{"scaleTargetRef": map[string]any{"name": "keda-owned"}},
	}}
	dyn, err := dynamic.NewForConfig(k.cluster.Config)
	require.NoError(t, err)
	_, err = dyn.Resource(schema.GroupVersionResource{Group: "keda.sh", Version: "v1alpha1", Resource: "scaledobjects"}).Namespace(k.ns).Create(ctx, so, metav1.CreateOptions{})
	require.NoError(t, err)

	tests := []struct {
		name, targetType, targetID, want string
	}{
		{"missing deployment", "deployment", "nothing-here", "Deployment nothing-here not found"},
		{"missing statefulset", "statefulset", "not-opted-in", "StatefulSet not-opted-in not found"},
		{"not opted in", "deployment", "not-opted-in", `does not carry the label streamspace.io/autoscale: "enabled"`},
		{"a session", "deployment", "a-session", "a user's session is never scaled"},
		{"owned by a Knative Revision", "deployment", "knative-rev", "owned by Knative Revision api-00001"},
		{"owned by something else", "deployment", "owned-by-other", "owned by Operator op"},
		{"scaled by an HPA", "deployment", "hpa-owned", "scaled by HorizontalPodAutoscaler hpa"},
		{"scaled by KEDA", "deployment", "keda-owned", "scaled by KEDA ScaledObject so"},
		{"no warm pool", "template", "nobody", "no Deployment or StatefulSet labelled streamspace.io/template-pool=nobody"},
		{"two warm pools", "template", "twins", "2 objects labelled streamspace.io/template-pool=twins"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := create(t, h, admin, with(policy(tc.name, "x"), "target_type", tc.targetType, "target_id", tc.targetID, "metadata", map[string]any{"template": "app"}))
			res := evaluate(t, h, admin, p.ID, false)
			assert.Contains(t, res.Refusal, tc.want)
			assert.Equal(t, function.Refused, res.Decision.Action)
			assert.False(t, res.Applied)
			assert.Positive(t, res.EventID, "a refusal that starts is recorded")
			assert.Equal(t, 1, h.Count(`select count(*) from scaling_events where policy_id = $1 and status = 'failed' and error_message like '%' || $2 || '%'`, p.ID, tc.want))
			status, raw := h.Do(http.MethodGet, policyPath(p.ID, ""), admin, nil)
			require.Equal(t, http.StatusOK, status)
			assert.Contains(t, decodeAs[function.Policy](t, raw).Conflict, tc.want, "the policy shows the conflict")

			again := evaluate(t, h, admin, p.ID, false)
			assert.Contains(t, again.Refusal, tc.want)
			assert.Zero(t, again.EventID, "the same refusal is not recorded twice")
			assert.Equal(t, 1, h.Count(`select count(*) from scaling_events where policy_id = $1`, p.ID))
		})
	}
	for _, name := range []string{"not-opted-in", "a-session", "knative-rev", "owned-by-other", "hpa-owned", "keda-owned", "twin-a"} {
		assert.Equal(t, int32(1), k.replicas("Deployment", name), "%s was scaled", name)
	}
	assert.Equal(t, int32(1), k.replicas("StatefulSet", "twin-b"))
	sent(t, h, events.AutoscaleFailed, len(tests))
	assert.Zero(t, countType(h, events.AutoscaleScaled))

	t.Run("a refusal that ends clears the conflict", func(t *testing.T) {
		p := create(t, h, admin, with(policy("fixed later", "late"), "metadata", map[string]any{"template": "app"}))
		res := evaluate(t, h, admin, p.ID, false)
		require.Contains(t, res.Refusal, "not found")
		k.create(target{name: "late", replicas: 1, labels: optedIn()})
		res = evaluate(t, h, admin, p.ID, false)
		assert.Empty(t, res.Refusal)
		assert.True(t, res.Applied, res.Message)
		status, raw := h.Do(http.MethodGet, policyPath(p.ID, ""), admin, nil)
		require.Equal(t, http.StatusOK, status)
		assert.Empty(t, decodeAs[function.Policy](t, raw).Conflict)
	})
}

// installKEDA installs a ScaledObject CRD with KEDA's group, version and
// names (the schema kept open: the function reads only scaleTargetRef).
func installKEDA(t *testing.T, k *kube) {
	t.Helper()
	installCRD(t, k, "keda.sh", apiextensionsv1.CustomResourceDefinitionNames{
		Plural: "scaledobjects", Singular: "scaledobject", Kind: "ScaledObject", ListKind: "ScaledObjectList",
		ShortNames: []string{"so"}})
}

// installCRD installs a namespaced v1alpha1 CustomResourceDefinition of
// group with names and an open schema, and waits until it is established.
func installCRD(t *testing.T, k *kube, group string, names apiextensionsv1.CustomResourceDefinitionNames) {
	t.Helper()
	ctx := context.Background()
	ext, err := apiextensionsclient.NewForConfig(k.cluster.Config)
	require.NoError(t, err)
	preserve := true
	crd := &apiextensionsv1.CustomResourceDefinition{
		ObjectMeta: metav1.ObjectMeta{Name: names.Plural + "." + group},
		Spec: apiextensionsv1.CustomResourceDefinitionSpec{
			Group: group, Scope: apiextensionsv1.NamespaceScoped, Names: names,
			Versions: []apiextensionsv1.CustomResourceDefinitionVersion{{
				Name: "v1alpha1", Served: true, Storage: true,
				Schema: &apiextensionsv1.CustomResourceValidation{OpenAPIV3Schema: &apiextensionsv1.JSONSchemaProps{
					Type: "object", XPreserveUnknownFields: &preserve,
				}},
			}},
		},
	}
	_, err = ext.ApiextensionsV1().CustomResourceDefinitions().Create(ctx, crd, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		require.NoError(t, err)
	}
	require.Eventually(t, func() bool {
		c, err := ext.ApiextensionsV1().CustomResourceDefinitions().Get(ctx, crd.Name, metav1.GetOptions{})
		if err != nil {
			return false
		}
		for _, cond := range c.Status.Conditions {
			if cond.Type == apiextensionsv1.Established && cond.Status == apiextensionsv1.ConditionTrue {
				return true
			}
		}
		return false
	}, wait, 50*time.Millisecond, "the CRD %s is not established", crd.Name)
}
