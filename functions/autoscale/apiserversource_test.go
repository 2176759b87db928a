package function_test

import (
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/kelseyhightower/envconfig"
	"github.com/stretchr/testify/require"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"knative.dev/eventing/pkg/adapter/apiserver"
	kubeclient "knative.dev/pkg/client/injection/kube/client"
	"knative.dev/pkg/injection/clients/dynamicclient"

	"github.com/streamspace-dev/functions/events"
	"github.com/streamspace-dev/functions/shared/authn"
)

var sessionsGVR = schema.GroupVersionResource{Group: "stream.space", Version: "v1alpha1", Resource: "sessions"}

// TestApiServerSourceAdapter runs Knative's own ApiServerSource adapter
// (knative.dev/eventing/pkg/adapter/apiserver, what
// cmd/apiserver_receive_adapter runs) against the real API server, as the
// ServiceAccount of deploy/base/sessions-source.yaml with that file's Role,
// watching StreamSpace's Sessions and sending to the function. As deployed,
// the adapter and its ServiceAccount are in the functions' namespace and the
// Role in the sessions' namespace. A Session
// created and deleted scales the warm pool of its template up and back down.
func TestApiServerSourceAdapter(t *testing.T) {
	k := newKube(t)
	h, _ := startWith(t, k, nil, nil)
	admin := h.Token("root", authn.Admin)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	installSessionCRD(t, k)
	const sourceSA = "autoscale-sessions-source"
	bindSourceRole(t, k, sourceSA)

	k.create(target{name: "ff-warm", replicas: 0, labels: optedIn("streamspace.io/template-pool", "firefox")})
	create(t, h, admin, with(policy("ff", "x"), "target_type", "template", "target_id", "firefox", "min_replicas", 0,
		"target_metric_value", 5, "scale_down_policy", map[string]any{"stabilization_seconds": 0}))

	// The adapter, configured as Knative's ApiServerSource reconciler
	// configures it for deploy/'s source.
	cfg := k.cluster.ServiceAccountConfig(events.FunctionsNamespace, sourceSA)
	kc, err := kubernetes.NewForConfig(cfg)
	require.NoError(t, err)
	dc, err := dynamic.NewForConfig(cfg)
	require.NoError(t, err)
	sourceConfig, err := json.Marshal(apiserver.Config{
		Namespaces: []string{k.ns},
		Resources:  []apiserver.ResourceWatch{{GVR: sessionsGVR}},
		EventMode:  "Resource",
	})
	require.NoError(t, err)
	t.Setenv("NAME", "autoscale-sessions")
	t.Setenv("NAMESPACE", events.FunctionsNamespace)
	t.Setenv("K_SINK", h.URL)
	t.Setenv("K_SOURCE_CONFIG", string(sourceConfig))
	env := apiserver.NewEnvConfig()
	require.NoError(t, envconfig.Process("", env))
	ce, err := cloudevents.NewClientHTTP(cloudevents.WithTarget(h.URL))
	require.NoError(t, err)
	actx := context.WithValue(ctx, kubeclient.Key{}, kubernetes.Interface(kc))
	actx = context.WithValue(actx, dynamicclient.Key{}, dynamic.Interface(dc))
	actx = context.WithValue(actx, apiserver.Key{}, cfg.Host)
	adapter := apiserver.NewAdapter(actx, env, ce)
	done := make(chan error, 1)
	go func() { done <- adapter.Start(actx) }()
	defer func() {
		cancel()
		require.NoError(t, <-done)
	}()

	sessions(t, h, "firefox", k.ns, 1)
	admin2, err := dynamic.NewForConfig(k.cluster.Config)
	require.NoError(t, err)
	session := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "stream.space/v1alpha1", "kind": "Session",
		"metadata": map[string]any{"name": "alice-firefox-1", "namespace": k.ns},
		"spec":     map[string]any{"user": "alice", "template": "firefox", "state": "running"},
	}}
	_, err = admin2.Resource(sessionsGVR).Namespace(k.ns).Create(ctx, session, metav1.CreateOptions{})
	require.NoError(t, err)
	require.Eventually(t, func() bool { return k.replicas("Deployment", "ff-warm") == 1 }, wait, 20*time.Millisecond,
		"the Session's add event did not scale the pool from 0 to 1")
	// The row commits after the scale is written.
	require.Eventually(t, func() bool {
		return h.Count(`select count(*) from scaling_events where trigger = 'event' and previous_replicas = 0 and new_replicas = 1`) == 1
	}, wait, 20*time.Millisecond, "the scale-up is not recorded")

	exec(t, h, `delete from sessions where template_name = 'firefox'`)
	require.NoError(t, admin2.Resource(sessionsGVR).Namespace(k.ns).Delete(ctx, "alice-firefox-1", metav1.DeleteOptions{}))
	require.Eventually(t, func() bool { return k.replicas("Deployment", "ff-warm") == 0 }, wait, 20*time.Millisecond,
		"the Session's delete event did not scale the pool back to 0")
	require.Eventually(t, func() bool {
		return h.Count(`select count(*) from scaling_events where trigger = 'event' and previous_replicas = 1 and new_replicas = 0`) == 1
	}, wait, 20*time.Millisecond, "the scale-down is not recorded")
}

// installSessionCRD installs a CustomResourceDefinition for StreamSpace's
// Sessions (group stream.space, v1alpha1, namespaced; the schema kept open
// beyond what the function reads).
func installSessionCRD(t *testing.T, k *kube) {
	t.Helper()
	installCRD(t, k, "stream.space", apiextensionsv1.CustomResourceDefinitionNames{
		Plural: "sessions", Singular: "session", Kind: "Session", ListKind: "SessionList"})
}

// bindSourceRole creates the Role of deploy/base/sessions-source.yaml in
// the test's namespace, the sessions' one, and binds it to the
// ServiceAccount sa of the functions' namespace.
func bindSourceRole(t *testing.T, k *kube, sa string) {
	t.Helper()
	raw, err := os.ReadFile("../../deploy/base/sessions-source.yaml")
	require.NoError(t, err)
	var role *rbacv1.Role
	for _, doc := range strings.Split(string(raw), "\n---\n") {
		var r rbacv1.Role
		if yaml.Unmarshal([]byte(doc), &r) == nil && r.Kind == "Role" {
			role = &r
		}
	}
	require.NotNil(t, role, "no Role in sessions-source.yaml")
	role.Namespace = k.ns
	ctx := context.Background()
	_, err = k.cluster.Client.RbacV1().Roles(k.ns).Create(ctx, role, metav1.CreateOptions{})
	require.NoError(t, err)
	_, err = k.cluster.Client.RbacV1().RoleBindings(k.ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: sa, Namespace: k.ns},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: sa, Namespace: events.FunctionsNamespace}},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
}
