package deploy

import (
	"context"
	"net/http"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"github.com/streamspace-dev/functions/shared/kube"
	"github.com/streamspace-dev/functions/shared/kubetest"
)

// TestNamespaces: the functions have a namespace of their own. In the
// sessions' namespace, which their exec grant reaches, an overlay puts only
// the Roles and RoleBindings that grant that access, each binding only
// ServiceAccounts of the functions' namespace; every Secret a function, the
// migration Job or PgBouncer reads is read in the functions' namespace; and
// the exec policy names the exec-granted ServiceAccounts there.
func TestNamespaces(t *testing.T) {
	require.NotEqual(t, namespace, sessionsNamespace)
	for _, ov := range overlays {
		t.Run(ov.name, func(t *testing.T) {
			b := loadOverlay(t, ov)
			sas := map[string]bool{}
			for _, sa := range all[*corev1.ServiceAccount](b) {
				sas[sa.Namespace+"/"+sa.Name] = true
			}

			t.Run("only access in the sessions' namespace", func(t *testing.T) {
				n := 0
				for _, o := range b.objects {
					if o.namespace != sessionsNamespace {
						continue
					}
					n++
					switch o.obj.(type) {
					case *rbacv1.Role, *rbacv1.RoleBinding:
					default:
						assert.Fail(t, "a function object in the sessions' namespace", "%s: only the Roles and RoleBindings that reach into it belong there", o)
					}
				}
				require.NotZero(t, n, "no Role reaches into the sessions' namespace (autoscale, snapshot and restore need one)")
				for _, r := range all[*rbacv1.Role](b) {
					assert.Equal(t, sessionsNamespace, r.Namespace, "Role %s: the functions need no access to their own namespace", r.Name)
				}
			})

			t.Run("bindings name the functions' ServiceAccounts", func(t *testing.T) {
				bound := map[string]bool{}
				for _, rb := range all[*rbacv1.RoleBinding](b) {
					where := "RoleBinding " + rb.Namespace + "/" + rb.Name
					assert.Equal(t, sessionsNamespace, rb.Namespace, where)
					assert.Equal(t, "Role", rb.RoleRef.Kind, "%s: binds a Role of its namespace, never a ClusterRole", where)
					bound[rb.Namespace+"/"+rb.RoleRef.Name] = true
					require.NotEmpty(t, rb.Subjects, where)
					for _, s := range rb.Subjects {
						// An empty namespace would mean the RoleBinding's own:
						// a ServiceAccount of the sessions' namespace.
						assert.Equal(t, rbacv1.ServiceAccountKind, s.Kind, "%s: subject %s", where, s.Name)
						assert.Equal(t, namespace, s.Namespace, "%s: subject %s must name the functions' namespace", where, s.Name)
						assert.True(t, sas[namespace+"/"+s.Name], "%s: ServiceAccount %s/%s is not in the overlay", where, namespace, s.Name)
					}
				}
				for _, r := range all[*rbacv1.Role](b) {
					assert.True(t, bound[r.Namespace+"/"+r.Name], "Role %s/%s is bound by no RoleBinding", r.Namespace, r.Name)
				}
			})

			t.Run("secrets are read in the functions' namespace", func(t *testing.T) {
				type reader struct {
					where, namespace string
					spec             corev1.PodSpec
				}
				var readers []reader
				for _, s := range all[*servingv1.Service](b) {
					readers = append(readers, reader{"Knative Service " + s.Name, s.Namespace, s.Spec.Template.Spec.PodSpec})
				}
				for _, j := range all[*batchv1.Job](b) {
					readers = append(readers, reader{"Job " + j.Name, j.Namespace, j.Spec.Template.Spec})
				}
				for _, d := range all[*appsv1.Deployment](b) {
					readers = append(readers, reader{"Deployment " + d.Name, d.Namespace, d.Spec.Template.Spec})
				}
				var secrets []string
				for _, r := range readers {
					names := secretRefs(r.spec)
					if len(names) == 0 {
						continue
					}
					// A pod reads Secrets of its own namespace only.
					assert.Equal(t, namespace, r.namespace, "%s reads Secrets %v", r.where, names)
					secrets = append(secrets, names...)
				}
				// The control: the database URL and StreamSpace's JWT key.
				assert.Contains(t, secrets, databaseSecret)
				assert.Contains(t, secrets, jwtSecretName)
			})

			t.Run("the exec policy names the exec-granted ServiceAccounts", func(t *testing.T) {
				policies := all[*admissionregistrationv1.ValidatingAdmissionPolicy](b)
				require.Len(t, policies, 1)
				var named []string
				for _, c := range policies[0].Spec.MatchConditions {
					for _, m := range regexp.MustCompile(`'system:serviceaccount:([^:']+):([^:']+)'`).FindAllStringSubmatch(c.Expression, -1) {
						assert.Equal(t, namespace, m[1], "the policy names %s, not a ServiceAccount of the functions' namespace", m[0])
						named = append(named, m[2])
					}
				}
				roles := map[string]*rbacv1.Role{}
				for _, r := range all[*rbacv1.Role](b) {
					roles[r.Namespace+"/"+r.Name] = r
				}
				var execing []string
				for _, rb := range all[*rbacv1.RoleBinding](b) {
					r := roles[rb.Namespace+"/"+rb.RoleRef.Name]
					if r == nil || !grantsExec(r.Rules) {
						continue
					}
					for _, s := range rb.Subjects {
						execing = append(execing, s.Name)
					}
				}
				require.NotEmpty(t, execing, "no ServiceAccount may exec")
				for _, sa := range execing {
					assert.Contains(t, named, sa, "ServiceAccount %s may exec but the policy does not hold it", sa)
				}
			})
		})
	}
}

// secretRefs lists the Secrets a pod reads: env, envFrom, volumes (direct
// and projected) and image pull Secrets.
func secretRefs(spec corev1.PodSpec) []string {
	var out []string
	for _, c := range slices.Concat(spec.InitContainers, spec.Containers) {
		for _, e := range c.Env {
			if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
				out = append(out, e.ValueFrom.SecretKeyRef.Name)
			}
		}
		for _, e := range c.EnvFrom {
			if e.SecretRef != nil {
				out = append(out, e.SecretRef.Name)
			}
		}
	}
	for _, v := range spec.Volumes {
		if v.Secret != nil {
			out = append(out, v.Secret.SecretName)
		}
		if v.Projected != nil {
			for _, s := range v.Projected.Sources {
				if s.Secret != nil {
					out = append(out, s.Secret.Name)
				}
			}
		}
	}
	for _, s := range spec.ImagePullSecrets {
		out = append(out, s.Name)
	}
	sort.Strings(out)
	return slices.Compact(out)
}

// grantsExec says whether rules grant any verb on pods/exec.
func grantsExec(rules []rbacv1.PolicyRule) bool {
	for _, r := range rules {
		if slices.Contains(r.APIGroups, "") && (slices.Contains(r.Resources, "pods/exec") || slices.Contains(r.Resources, "*")) {
			return true
		}
	}
	return false
}

// applySessionsAccess creates, on a real API server, the Roles and
// RoleBindings the overlays put in the sessions' namespace, in the
// namespace sessions instead, with their subjects in the namespace functions
// instead of the functions' namespace. What the rendered manifests grant is
// then what the API server authorizes.
func applySessionsAccess(t *testing.T, c *kubetest.Cluster, sessions, functions string, overlayNames ...string) {
	t.Helper()
	ctx := context.Background()
	created := map[string]bool{}
	for _, name := range overlayNames {
		b := loadOverlay(t, overlayNamed(t, name))
		for _, r := range all[*rbacv1.Role](b) {
			require.Equal(t, sessionsNamespace, r.Namespace)
			if created["Role/"+r.Name] {
				continue
			}
			created["Role/"+r.Name] = true
			r = r.DeepCopy()
			r.Namespace = sessions
			_, err := c.Client.RbacV1().Roles(sessions).Create(ctx, r, metav1.CreateOptions{})
			require.NoError(t, err)
		}
		for _, rb := range all[*rbacv1.RoleBinding](b) {
			require.Equal(t, sessionsNamespace, rb.Namespace)
			if created["RoleBinding/"+rb.Name] {
				continue
			}
			created["RoleBinding/"+rb.Name] = true
			rb = rb.DeepCopy()
			rb.Namespace = sessions
			for i := range rb.Subjects {
				require.Equal(t, namespace, rb.Subjects[i].Namespace)
				rb.Subjects[i].Namespace = functions
			}
			_, err := c.Client.RbacV1().RoleBindings(sessions).Create(ctx, rb, metav1.CreateOptions{})
			require.NoError(t, err)
		}
	}
}

// waitForAccess waits until cfg may list pods in ns: the API server's RBAC
// cache sees a new binding a moment later.
func waitForAccess(t *testing.T, cfg *rest.Config, ns string) {
	t.Helper()
	cs, err := kubernetes.NewForConfig(cfg)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		_, err := cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{Limit: 1})
		return err == nil
	}, 2*time.Minute, 20*time.Millisecond, "the Role takes effect")
}

// TestSessionsAccessOnTheAPIServer applies the rendered Roles and
// RoleBindings of the sessions' namespace to a real kube-apiserver, with
// the ServiceAccounts in a separate functions namespace as deployed, and
// acts as each ServiceAccount by impersonation: snapshot and restore (and
// the all-in-one's) find and exec into session pods, over WebSocket and
// SPDY, and can do nothing in the functions' namespace, where their
// Secrets are: no Secret there or in the sessions' namespace, no exec, not
// even a pod list.
func TestSessionsAccessOnTheAPIServer(t *testing.T) {
	c := kubetest.Start(t)
	ctx := context.Background()
	sessions, functions := c.Namespace(t), c.Namespace(t)
	applySessionsAccess(t, c, sessions, functions, "functions", "all-in-one")
	kl := c.Kubelet(t)
	session := kl.Pod(t, sessions, kubetest.PodSpec{SessionID: "s1"})
	// A pod of the functions' namespace, standing in for a function's.
	own := kl.Pod(t, functions, kubetest.PodSpec{Labels: map[string]string{"app.kubernetes.io/component": "function"}, Container: "function"})
	for _, ns := range []string{sessions, functions} {
		_, err := c.Client.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: jwtSecretName, Namespace: ns},
			StringData: map[string]string{jwtSecretKey: "not-for-the-functions"},
		}, metav1.CreateOptions{})
		require.NoError(t, err)
	}

	type check struct {
		name    string
		do      func(cfg *rest.Config) error
		allowed bool
	}
	getSecret := func(ns string) func(cfg *rest.Config) error {
		return func(cfg *rest.Config) error {
			cs, err := kubernetes.NewForConfig(cfg)
			require.NoError(t, err)
			_, err = cs.CoreV1().Secrets(ns).Get(ctx, jwtSecretName, metav1.GetOptions{})
			return err
		}
	}
	listSecrets := func(ns string) func(cfg *rest.Config) error {
		return func(cfg *rest.Config) error {
			cs, err := kubernetes.NewForConfig(cfg)
			require.NoError(t, err)
			_, err = cs.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{})
			return err
		}
	}
	listPods := func(ns string) func(cfg *rest.Config) error {
		return func(cfg *rest.Config) error {
			cs, err := kubernetes.NewForConfig(cfg)
			require.NoError(t, err)
			_, err = cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
			return err
		}
	}
	execIn := func(p *kubetest.Pod, container string, websocket bool) func(cfg *rest.Config) error {
		return func(cfg *rest.Config) error {
			return execAs(t, cfg, p.Namespace, p.Name, container, []string{"true"}, websocket)
		}
	}
	execChecks := []check{
		{name: "list pods in the sessions' namespace", do: listPods(sessions), allowed: true},
		{name: "exec over websocket in a session pod", do: execIn(session, "session", true), allowed: true},
		{name: "exec over spdy in a session pod", do: execIn(session, "session", false), allowed: true},
		{name: "get a Secret in the sessions' namespace", do: getSecret(sessions)},
		{name: "list Secrets in the sessions' namespace", do: listSecrets(sessions)},
		{name: "get a Secret in the functions' namespace", do: getSecret(functions)},
		{name: "list Secrets in the functions' namespace", do: listSecrets(functions)},
		{name: "list pods in the functions' namespace", do: listPods(functions)},
		{name: "exec over websocket in the functions' namespace", do: execIn(own, "function", true)},
		{name: "exec over spdy in the functions' namespace", do: execIn(own, "function", false)},
	}
	// autoscale lists pods in the sessions' namespace but never execs.
	autoscaleChecks := []check{
		{name: "list pods in the sessions' namespace", do: listPods(sessions), allowed: true},
		{name: "exec over websocket in a session pod", do: execIn(session, "session", true)},
		{name: "exec over spdy in a session pod", do: execIn(session, "session", false)},
		{name: "get a Secret in the sessions' namespace", do: getSecret(sessions)},
		{name: "get a Secret in the functions' namespace", do: getSecret(functions)},
	}
	accounts := []struct {
		sa     string
		checks []check
	}{
		{"snapshot", execChecks},
		{"restore", execChecks},
		{allInOne, execChecks},
		{"autoscale", autoscaleChecks},
	}
	for _, a := range accounts {
		cfg := c.ServiceAccountConfig(functions, a.sa)
		waitForAccess(t, cfg, sessions)
		for _, tc := range a.checks {
			t.Run(a.sa+"/"+tc.name, func(t *testing.T) {
				err := tc.do(cfg)
				if tc.allowed {
					assert.NoError(t, err)
					return
				}
				require.Error(t, err)
				if _, isStatus := err.(apierrors.APIStatus); isStatus {
					assert.True(t, apierrors.IsForbidden(err), "%v", err)
				} else {
					assert.Contains(t, err.Error(), "forbidden")
				}
			})
		}
	}
	// The same ServiceAccount names in the sessions' namespace are not the
	// functions': the bindings name the functions' namespace explicitly.
	t.Run("a same-named ServiceAccount of the sessions' namespace", func(t *testing.T) {
		err := listPods(sessions)(c.ServiceAccountConfig(sessions, "snapshot"))
		require.Error(t, err)
		assert.True(t, apierrors.IsForbidden(err), "%v", err)
	})
}

// execRecorder records the method of every pods/exec request a client
// sends: GET is a WebSocket exec, POST an SPDY one.
type execRecorder struct {
	mu      sync.Mutex
	methods []string
}

func (r *execRecorder) wrap(cfg *rest.Config) *rest.Config {
	cfg = rest.CopyConfig(cfg)
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(req *http.Request) (*http.Response, error) {
			if strings.HasSuffix(req.URL.Path, "/exec") {
				r.mu.Lock()
				r.methods = append(r.methods, req.Method)
				r.mu.Unlock()
			}
			return rt.RoundTrip(req)
		})
	})
	return cfg
}

func (r *execRecorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.methods
	r.methods = nil
	return out
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }

// TestExecVerbs: which verbs on pods/exec each exec protocol needs on
// kube-apiserver 1.35, and which protocol the functions' exec client
// (shared/kube, client-go's WebSocket-then-SPDY fallback) takes under the
// deployed Role. A WebSocket exec is a GET and needs get; 1.35 also checks
// create on it, so get alone execs nothing. SPDY, a POST, needs create
// alone. So the Role's get adds no power over its create, and with both the
// functions exec over WebSocket, whose end cannot lose frames as SPDY's can
// (docs/snapshots.md).
func TestExecVerbs(t *testing.T) {
	c := kubetest.Start(t)
	ctx := context.Background()
	sessions, functions := c.Namespace(t), c.Namespace(t)
	applySessionsAccess(t, c, sessions, functions, "functions")
	session := c.Kubelet(t).Pod(t, sessions, kubetest.PodSpec{SessionID: "s1"})

	// ServiceAccounts with pods get, list and the given pods/exec verbs.
	grant := func(sa string, verbs ...string) *rest.Config {
		_, err := c.Client.RbacV1().Roles(sessions).Create(ctx, &rbacv1.Role{
			ObjectMeta: metav1.ObjectMeta{Name: sa, Namespace: sessions},
			Rules: []rbacv1.PolicyRule{
				{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list"}},
				{APIGroups: []string{""}, Resources: []string{"pods/exec"}, Verbs: verbs},
			},
		}, metav1.CreateOptions{})
		require.NoError(t, err)
		_, err = c.Client.RbacV1().RoleBindings(sessions).Create(ctx, &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: sa, Namespace: sessions},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: sa},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: sa, Namespace: functions}},
		}, metav1.CreateOptions{})
		require.NoError(t, err)
		cfg := c.ServiceAccountConfig(functions, sa)
		waitForAccess(t, cfg, sessions)
		return cfg
	}
	getOnly := grant("get-only", "get")
	createOnly := grant("create-only", "create")
	deployed := c.ServiceAccountConfig(functions, "snapshot") // the rendered Role
	waitForAccess(t, deployed, sessions)

	t.Run("get alone is granted get", func(t *testing.T) {
		cs, err := kubernetes.NewForConfig(getOnly)
		require.NoError(t, err)
		for verb, want := range map[string]bool{"get": true, "create": false} {
			r, err := cs.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
				Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
					Namespace: sessions, Verb: verb, Resource: "pods", Subresource: "exec", Name: session.Name,
				}},
			}, metav1.CreateOptions{})
			require.NoError(t, err)
			assert.Equal(t, want, r.Status.Allowed, "%s on pods/exec", verb)
		}
	})

	t.Run("each protocol", func(t *testing.T) {
		tests := []struct {
			name      string
			cfg       *rest.Config
			websocket bool
			// refused is what the API server's refusal says, empty when
			// the exec runs.
			refused string
		}{
			// Refused although get is granted (the control below): the
			// upgrade is checked against create as well.
			{name: "websocket with get alone", cfg: getOnly, websocket: true, refused: "is forbidden"},
			{name: "spdy with get alone", cfg: getOnly, refused: "forbidden"},
			{name: "websocket with create alone", cfg: createOnly, websocket: true, refused: `cannot get resource "pods/exec"`},
			{name: "spdy with create alone", cfg: createOnly},
			{name: "websocket with the deployed role", cfg: deployed, websocket: true},
			{name: "spdy with the deployed role", cfg: deployed},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				err := execAs(t, tc.cfg, sessions, session.Name, "session", []string{"true"}, tc.websocket)
				if tc.refused == "" {
					assert.NoError(t, err)
					return
				}
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.refused)
			})
		}
	})

	t.Run("the functions' client", func(t *testing.T) {
		tests := []struct {
			name    string
			cfg     *rest.Config
			methods []string
		}{
			{name: "takes websocket under the deployed role", cfg: deployed, methods: []string{http.MethodGet}},
			{name: "falls back to spdy with create alone", cfg: createOnly, methods: []string{http.MethodGet, http.MethodPost}},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				rec := &execRecorder{}
				k, err := kube.New(rec.wrap(tc.cfg), kube.Auto)
				require.NoError(t, err)
				p, err := k.SessionPod(ctx, sessions, "s1")
				require.NoError(t, err)
				require.NoError(t, k.Exec(ctx, p, []string{"true"}, kube.Streams{}))
				assert.Equal(t, tc.methods, rec.take())
			})
		}
	})
}
