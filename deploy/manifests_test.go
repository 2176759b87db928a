package deploy

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation"
	eventingconfig "knative.dev/eventing/pkg/apis/config"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	"knative.dev/eventing/pkg/apis/feature"
	messagingconfig "knative.dev/eventing/pkg/apis/messaging/config"
	sourcesconfig "knative.dev/eventing/pkg/apis/sources/config"
	sourcesv1 "knative.dev/eventing/pkg/apis/sources/v1"
	"knative.dev/networking/pkg/apis/networking"
	"knative.dev/pkg/apis"
	duckv1 "knative.dev/pkg/apis/duck/v1"
	servingconfig "knative.dev/serving/pkg/apis/config"
	"knative.dev/serving/pkg/apis/serving"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	asconfig "knative.dev/serving/pkg/autoscaler/config"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayv1beta1 "sigs.k8s.io/gateway-api/apis/v1beta1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/events"
)

// overlay is one kustomize overlay a cluster is deployed from.
type overlay struct {
	name string
	// allInOne: every function runs in the one Service `streamspace`.
	allInOne bool
	// ingress: the REST routes come in through a Kubernetes Ingress on
	// StreamSpace's host instead of the Gateway API HTTPRoute.
	ingress bool
	// pgbouncer: the overlay built with the PgBouncer component, as an
	// operator turns it on (withPgBouncer); dir is then the overlay folder.
	pgbouncer bool
	dir       string
}

// overlays are every overlay under deploy/overlays, each also with the
// PgBouncer component.
var overlays = []overlay{
	{name: "functions"},
	{name: "all-in-one", allInOne: true},
	{name: "ingress", ingress: true},
	{name: "all-in-one-ingress", allInOne: true, ingress: true},
	{name: "functions+pgbouncer", dir: "functions", pgbouncer: true},
	{name: "all-in-one+pgbouncer", dir: "all-in-one", allInOne: true, pgbouncer: true},
	{name: "ingress+pgbouncer", dir: "ingress", ingress: true, pgbouncer: true},
	{name: "all-in-one-ingress+pgbouncer", dir: "all-in-one-ingress", allInOne: true, ingress: true, pgbouncer: true},
}

// folder is the overlay's folder under deploy/overlays.
func (ov overlay) folder() string {
	if ov.dir != "" {
		return ov.dir
	}
	return ov.name
}

// functionsDatabaseKey is the key of Secret streamspace-database the
// function Services read DATABASE_URL from.
func (ov overlay) functionsDatabaseKey() string {
	if ov.pgbouncer {
		return pooledDatabaseKey
	}
	return databaseKey
}

// kinds maps apiVersion/kind to the Go type every document of that kind is
// decoded into. A kind missing here fails the test: nothing is deployed
// unchecked.
var kinds = map[string]func() any{
	"v1/Namespace":                                    func() any { return &corev1.Namespace{} },
	"v1/ConfigMap":                                    func() any { return &corev1.ConfigMap{} },
	"v1/Secret":                                       func() any { return &corev1.Secret{} },
	"v1/Service":                                      func() any { return &corev1.Service{} },
	"v1/ServiceAccount":                               func() any { return &corev1.ServiceAccount{} },
	"batch/v1/Job":                                    func() any { return &batchv1.Job{} },
	"apps/v1/Deployment":                              func() any { return &appsv1.Deployment{} },
	"policy/v1/PodDisruptionBudget":                   func() any { return &policyv1.PodDisruptionBudget{} },
	"networking.k8s.io/v1/NetworkPolicy":              func() any { return &networkingv1.NetworkPolicy{} },
	"networking.k8s.io/v1/Ingress":                    func() any { return &networkingv1.Ingress{} },
	"rbac.authorization.k8s.io/v1/Role":               func() any { return &rbacv1.Role{} },
	"rbac.authorization.k8s.io/v1/RoleBinding":        func() any { return &rbacv1.RoleBinding{} },
	"rbac.authorization.k8s.io/v1/ClusterRole":        func() any { return &rbacv1.ClusterRole{} },
	"rbac.authorization.k8s.io/v1/ClusterRoleBinding": func() any { return &rbacv1.ClusterRoleBinding{} },
	"admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy": func() any {
		return &admissionregistrationv1.ValidatingAdmissionPolicy{}
	},
	"admissionregistration.k8s.io/v1/ValidatingAdmissionPolicyBinding": func() any {
		return &admissionregistrationv1.ValidatingAdmissionPolicyBinding{}
	},
	"gateway.networking.k8s.io/v1/HTTPRoute":           func() any { return &gatewayv1.HTTPRoute{} },
	"gateway.networking.k8s.io/v1beta1/ReferenceGrant": func() any { return &gatewayv1beta1.ReferenceGrant{} },
	"serving.knative.dev/v1/Service":                   func() any { return &servingv1.Service{} },
	"eventing.knative.dev/v1/Broker":                   func() any { return &eventingv1.Broker{} },
	"eventing.knative.dev/v1/Trigger":                  func() any { return &eventingv1.Trigger{} },
	"sources.knative.dev/v1/PingSource":                func() any { return &sourcesv1.PingSource{} },
	"sources.knative.dev/v1/ApiServerSource":           func() any { return &sourcesv1.ApiServerSource{} },
	"sources.knative.dev/v1/SinkBinding":               func() any { return &sourcesv1.SinkBinding{} },
}

// kubeAccess is the Kubernetes API access each function may have, and so
// the rules its ServiceAccount's Roles must grant exactly. Least privilege:
// a function not listed here fails the test until its access is declared.
var kubeAccess = map[string][]rbacv1.PolicyRule{
	// autoscale reads its targets and the other scalers, writes replica
	// counts through the scale subresource only, and reads the metrics
	// APIs (docs/autoscale.md, RBAC).
	"autoscale": {
		{APIGroups: []string{"apps"}, Resources: []string{"deployments", "statefulsets"}, Verbs: []string{"get", "list"}},
		{APIGroups: []string{"apps"}, Resources: []string{"deployments/scale", "statefulsets/scale"}, Verbs: []string{"get", "update"}},
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"list"}},
		{APIGroups: []string{"autoscaling"}, Resources: []string{"horizontalpodautoscalers"}, Verbs: []string{"list"}},
		{APIGroups: []string{"keda.sh"}, Resources: []string{"scaledobjects"}, Verbs: []string{"list"}},
		{APIGroups: []string{"metrics.k8s.io"}, Resources: []string{"pods"}, Verbs: []string{"list"}},
		{APIGroups: []string{"custom.metrics.k8s.io"}, Resources: []string{"*"}, Verbs: []string{"get"}},
	},
	"tags":       nil, // PostgreSQL only
	"sharing":    nil, // PostgreSQL only
	"versioning": nil, // PostgreSQL only
	"auth":       nil, // PostgreSQL, StreamSpace's Redis and the OpenID providers; no Kubernetes API
	"mailtest":   nil, // PostgreSQL and the mail servers it tests; no Kubernetes API
	// Finds a session's pod by label and execs tar in it, in the sessions'
	// namespace (functions/snapshot/role.yaml). pods/exec get and create:
	// a WebSocket exec is a GET and needs get (and create too, on
	// kube-apiserver 1.35), an SPDY exec is a POST and needs create; with
	// both, client-go's exec takes WebSocket (TestExecVerbs).
	"snapshot": {
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list"}},
		{APIGroups: []string{""}, Resources: []string{"pods/exec"}, Verbs: []string{"get", "create"}},
	},
	// Finds a session's pod by label and execs tar, find and chown in it, in
	// the sessions' namespace (functions/restore/role.yaml).
	"restore": {
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list"}},
		{APIGroups: []string{""}, Resources: []string{"pods/exec"}, Verbs: []string{"get", "create"}},
	},
}

// kubeAccessNamespace is where every function's kubeAccess applies: the
// sessions' namespace, StreamSpace's, where autoscale's targets and the
// session pods are. A function has no access at all to its own namespace.
const kubeAccessNamespace = sessionsNamespace

// configKeys are the keys of the shared ConfigMap (docs/runtime.md).
var configKeys = []string{
	"AUTH_AUDIENCE", "AUTH_ISSUER", "AUTH_JWKS_URL", "AUTH_ROLE_CLAIM",
	"DATABASE_LOCK_TIMEOUT", "DATABASE_POOL_IDLE", "DATABASE_POOL_MAX", "DATABASE_POOL_MIN", "DATABASE_STATEMENT_TIMEOUT",
	"MAIL_KEY_ID",
	"S3_BUCKET", "S3_ENDPOINT", "S3_FORCE_PATH_STYLE", "S3_REGION",
	"STREAMSPACE_NAMESPACE",
}

const (
	configMapName     = "streamspace-functions"
	authConfigMapName = "auth-oidc"
	databaseSecret    = "streamspace-database"
	databaseKey       = "url"
	// The functions' DATABASE_URL through PgBouncer, with its component.
	pooledDatabaseKey = "pgbouncer-url"
	componentLabel    = "app.kubernetes.io/component"
	functionComp      = "function"
	deadLetterComp    = "dead-letter"
	koPrefix          = "ko://"

	// StreamSpace's chart keeps JWT_SECRET in the Secret <release>-secrets,
	// key jwt-secret; REST-serving functions mount it as a file.
	jwtSecretName    = "streamspace-secrets"
	jwtSecretKey     = "jwt-secret"
	jwtSecretEnv     = "STREAMSPACE_JWT_SECRET_FILE"
	readinessPath    = "/health/readiness"
	livenessPath     = "/health/liveness"
	pingSourceSource = "PingSource"
)

// object is one decoded document of a kustomize build.
type object struct {
	apiVersion, kind, name, namespace string
	obj                               any
	doc                               []byte // the YAML document, images resolved
}

func (o object) String() string { return o.kind + " " + o.namespace + "/" + o.name }

// build is a decoded overlay.
type build struct {
	overlay
	objects []object
	images  []string // ko import paths, in order of appearance
}

// all returns the objects of type T.
func all[T any](b *build) []T {
	var out []T
	for _, o := range b.objects {
		if v, ok := o.obj.(T); ok {
			out = append(out, v)
		}
	}
	return out
}

var (
	buildsMu sync.Mutex
	builds   = map[string]*build{}
)

// loadOverlay builds deploy/overlays/<name> with kustomize in-process and
// decodes every document strictly (unknown fields are errors) into its Go
// type, after replacing each ko:// image with a reference of the shape ko
// resolve writes. Knative objects are then defaulted and validated.
func loadOverlay(t *testing.T, ov overlay) *build {
	t.Helper()
	buildsMu.Lock()
	defer buildsMu.Unlock()
	if b, ok := builds[ov.name]; ok {
		return b
	}
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	fs, dir := filesys.MakeFsOnDisk(), filepath.Join("overlays", ov.name)
	if ov.pgbouncer {
		fs, dir = withPgBouncer(t), filepath.Join(pgbouncerRoot, "overlays", ov.folder())
	}
	resMap, err := k.Run(fs, dir)
	require.NoError(t, err, "kustomize build overlays/%s", ov.name)
	b := &build{overlay: ov}
	for _, r := range resMap.Resources() {
		doc, err := r.AsYAML()
		require.NoError(t, err)
		doc, imgs := resolveKo(doc)
		b.images = append(b.images, imgs...)
		o, err := decodeStrict(doc)
		require.NoError(t, err, "overlays/%s: %s %s", ov.name, r.GetKind(), r.GetName())
		o.doc = doc
		b.objects = append(b.objects, o)
	}
	builds[ov.name] = b
	return b
}

// overlayNamed is the overlay of that name.
func overlayNamed(t *testing.T, name string) overlay {
	t.Helper()
	for _, ov := range overlays {
		if ov.name == name {
			return ov
		}
	}
	require.FailNow(t, "no overlay "+name)
	return overlay{}
}

var koRef = regexp.MustCompile(`ko://[A-Za-z0-9._~/-]+`)

// resolveKo does what `ko resolve` does to a document's ko:// references,
// with a made-up registry and digest: <repo>/<base>-<md5 of path>@sha256:...
func resolveKo(doc []byte) ([]byte, []string) {
	var paths []string
	out := koRef.ReplaceAllFunc(doc, func(m []byte) []byte {
		p := strings.TrimPrefix(string(m), koPrefix)
		paths = append(paths, p)
		h := md5.Sum([]byte(p))
		d := sha256.Sum256([]byte(p))
		return []byte(fmt.Sprintf("registry.example.com/streamspace/%s-%s@sha256:%s",
			path.Base(p), hex.EncodeToString(h[:]), hex.EncodeToString(d[:])))
	})
	return out, paths
}

// decodeStrict decodes one YAML document into the Go type of its kind;
// unknown and duplicate fields are errors.
func decodeStrict(doc []byte) (object, error) {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return object{}, err
	}
	newObj, ok := kinds[tm.APIVersion+"/"+tm.Kind]
	if !ok {
		return object{}, fmt.Errorf("no Go type registered for %s %s", tm.APIVersion, tm.Kind)
	}
	obj := newObj()
	if err := yaml.UnmarshalStrict(doc, obj); err != nil {
		return object{}, fmt.Errorf("strict decode: %w", err)
	}
	meta, ok := obj.(metav1.Object)
	if !ok {
		return object{}, fmt.Errorf("%T has no ObjectMeta", obj)
	}
	return object{apiVersion: tm.APIVersion, kind: tm.Kind, name: meta.GetName(), namespace: meta.GetNamespace(), obj: obj}, nil
}

// knativeObject is what Knative's webhooks call on every object they admit.
type knativeObject interface {
	apis.Defaultable
	apis.Validatable
}

var (
	knativeCtxOnce sync.Once
	knativeCtx     context.Context
	knativeCtxErr  error
)

// knativeContext is the context Knative's defaulting and validating webhooks
// give SetDefaults and Validate on a create: the configuration of a cluster
// installed with the release's own ConfigMaps (config-defaults,
// config-features, config-autoscaler of Serving; config-br-defaults,
// default-ch-webhook, config-ping-defaults, config-features of Eventing),
// read from the module versions this module builds against.
func knativeContext(t *testing.T) context.Context {
	t.Helper()
	knativeCtxOnce.Do(func() { knativeCtx, knativeCtxErr = newKnativeContext() })
	require.NoError(t, knativeCtxErr)
	return knativeCtx
}

func newKnativeContext() (context.Context, error) {
	servingDir, err := moduleDir("knative.dev/serving")
	if err != nil {
		return nil, err
	}
	eventingDir, err := moduleDir("knative.dev/eventing")
	if err != nil {
		return nil, err
	}
	var firstErr error
	cm := func(dir, file string) *corev1.ConfigMap {
		c := &corev1.ConfigMap{}
		data, err := os.ReadFile(filepath.Join(dir, "config", "core", "configmaps", file))
		if err == nil {
			err = yaml.UnmarshalStrict(data, c)
		}
		if err != nil && firstErr == nil {
			firstErr = fmt.Errorf("%s: %w", file, err)
		}
		return c
	}
	check := func(err error) {
		if err != nil && firstErr == nil {
			firstErr = err
		}
	}

	ctx := context.Background()
	sd, err := servingconfig.NewDefaultsConfigFromConfigMap(cm(servingDir, "defaults.yaml"))
	check(err)
	sf, err := servingconfig.NewFeaturesConfigFromConfigMap(cm(servingDir, "features.yaml"))
	check(err)
	sa, err := asconfig.NewConfigFromConfigMap(cm(servingDir, "autoscaler.yaml"))
	check(err)
	ctx = servingconfig.ToContext(ctx, &servingconfig.Config{Defaults: sd, Features: sf, Autoscaler: sa})

	bd, err := eventingconfig.NewDefaultsConfigFromConfigMap(cm(eventingDir, "default-broker.yaml"))
	check(err)
	ctx = eventingconfig.ToContext(ctx, &eventingconfig.Config{Defaults: bd})
	cd, err := messagingconfig.NewChannelDefaultsConfigFromConfigMap(cm(eventingDir, "default-channel.yaml"))
	check(err)
	ctx = messagingconfig.ToContext(ctx, &messagingconfig.Config{ChannelDefaults: cd})
	pd, err := sourcesconfig.NewPingDefaultsConfigFromConfigMap(cm(eventingDir, "default-pingsource.yaml"))
	check(err)
	ctx = sourcesconfig.ToContext(ctx, &sourcesconfig.Config{PingDefaults: pd})
	ff, err := feature.NewFlagsConfigFromConfigMap(cm(eventingDir, "features.yaml"))
	check(err)
	ctx = feature.ToContext(ctx, ff)
	return apis.WithinCreate(ctx), firstErr
}

// moduleDir is the directory of a module in the build list (the module cache).
func moduleDir(mod string) (string, error) {
	out, err := exec.Command(goTool(), "list", "-m", "-f", "{{.Dir}}", mod).Output()
	if err != nil {
		return "", fmt.Errorf("go list -m %s: %w", mod, err)
	}
	dir := strings.TrimSpace(string(out))
	if dir == "" {
		return "", fmt.Errorf("go list -m %s: module not downloaded", mod)
	}
	return dir, nil
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

// knativeDiagnostics runs SetDefaults then Validate like the webhooks do and
// returns the errors and the warnings, each nil when there are none.
func knativeDiagnostics(ctx context.Context, obj knativeObject) (errs, warnings *apis.FieldError) {
	obj.SetDefaults(ctx)
	fe := obj.Validate(ctx)
	return fe.Filter(apis.ErrorLevel), fe.Filter(apis.WarningLevel)
}

// TestKnativeValidation: every Knative object of every overlay passes
// Knative's own SetDefaults and Validate with no error and no warning.
func TestKnativeValidation(t *testing.T) {
	ctx := knativeContext(t)
	for _, ov := range overlays {
		t.Run(ov.name, func(t *testing.T) {
			b := loadOverlay(t, ov)
			n := 0
			for _, o := range b.objects {
				if _, ok := o.obj.(knativeObject); !ok {
					continue
				}
				n++
				// Validate a copy: defaulting changes the object.
				c, err := decodeCopy(o)
				require.NoError(t, err)
				errs, warnings := knativeDiagnostics(ctx, c.(knativeObject))
				assert.Nil(t, errs, "%s: errors", o)
				assert.Nil(t, warnings, "%s: warnings", o)
			}
			require.NotZero(t, n, "no Knative objects")
		})
	}
}

// decodeCopy deep-copies a decoded object through its YAML form.
func decodeCopy(o object) (any, error) {
	data, err := yaml.Marshal(o.obj)
	if err != nil {
		return nil, err
	}
	c := kinds[o.apiVersion+"/"+o.kind]()
	return c, yaml.Unmarshal(data, c)
}

// TestStrictDecodingRejectsUnknownFields proves the decoding above is strict.
func TestStrictDecodingRejectsUnknownFields(t *testing.T) {
	tests := []struct{ name, doc string }{
		{"misspelt Trigger field", "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: x}\nspec: {broker: default, filter: {atributes: {type: a}}}\n"},
		{"misspelt container field", "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: x}\nspec: {template: {spec: {containers: [{image: a, securityContex: {}}]}}}\n"},
		{"duplicate field", "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: x, name: y}\nspec: {broker: default}\n"},
		{"unknown kind", "apiVersion: example.com/v1\nkind: Unknown\nmetadata: {name: x}\n"},
		{"misspelt Ingress field", "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: x}\nspec: {rules: [{host: a, http: {paths: [{path: /api/v1/x, pathTyp: Exact}]}}]}\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decodeStrict([]byte(tc.doc))
			assert.Error(t, err)
		})
	}
}

// TestWarningsAreCaught proves the check above sees Knative's warnings: a
// Service without the restricted securityContext validates with warnings only.
func TestWarningsAreCaught(t *testing.T) {
	o, err := decodeStrict([]byte(`apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: x, namespace: streamspace}
spec: {template: {spec: {containers: [{image: registry.example.com/streamspace/x@sha256:` + strings.Repeat("0", 64) + `}]}}}
`))
	require.NoError(t, err)
	errs, warnings := knativeDiagnostics(knativeContext(t), o.obj.(knativeObject))
	require.Nil(t, errs)
	assert.NotNil(t, warnings, "no warnings for a Service without securityContext")
}

// TestObjects checks metadata and the kinds that may not appear.
func TestObjects(t *testing.T) {
	for _, ov := range overlays {
		t.Run(ov.name, func(t *testing.T) {
			b := loadOverlay(t, ov)
			seen := map[string]bool{}
			for _, o := range b.objects {
				key := o.apiVersion + "/" + o.kind + "/" + o.namespace + "/" + o.name
				assert.False(t, seen[key], "%s: duplicate", o)
				seen[key] = true
				assert.Empty(t, validation.IsDNS1123Subdomain(o.name), "%s: name", o)
				switch o.obj.(type) {
				case *corev1.Namespace:
					assert.Equal(t, namespace, o.name, "%s: unexpected namespace", o)
				case *rbacv1.Role, *rbacv1.RoleBinding:
					// The functions' access to the sessions' namespace is
					// granted there (TestSessionsNamespace).
					assert.Contains(t, []string{namespace, sessionsNamespace}, o.namespace, "%s", o)
				case *gatewayv1beta1.ReferenceGrant:
					assert.Equal(t, localGatewayNamespace, o.namespace, "%s", o)
				case *corev1.Secret:
					assert.Fail(t, "secrets are referenced, never committed", "%s", o)
				case *rbacv1.ClusterRole, *rbacv1.ClusterRoleBinding:
					assert.Fail(t, "functions get namespaced access only", "%s", o)
				case *admissionregistrationv1.ValidatingAdmissionPolicy, *admissionregistrationv1.ValidatingAdmissionPolicyBinding:
					// Cluster-scoped: it narrows what the functions may exec
					// (base/exec-policy.yaml).
					assert.Empty(t, o.namespace, "%s", o)
				default:
					assert.Equal(t, namespace, o.namespace, "%s", o)
				}
				meta := o.obj.(metav1.Object)
				assert.Equal(t, "streamspace", meta.GetLabels()["app.kubernetes.io/part-of"], "%s: label app.kubernetes.io/part-of", o)
			}
			assert.Len(t, all[*corev1.Namespace](b), 1, "want one Namespace")
			cms := map[string]*corev1.ConfigMap{}
			for _, cm := range all[*corev1.ConfigMap](b) {
				cms[cm.Name] = cm
			}
			require.Contains(t, cms, configMapName)
			var keys []string
			for k := range cms[configMapName].Data {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			assert.Equal(t, configKeys, keys, "ConfigMap keys")
			delete(cms, configMapName)
			// The auth function's providers file and public URL
			// (deploy/functions/auth/oidc-config.yaml), mounted into it alone.
			delete(cms, authConfigMapName)
			if ov.pgbouncer {
				// pgbouncer.ini, from the component's generator.
				require.Len(t, cms, 1, "ConfigMaps besides %s", configMapName)
				for name, cm := range cms {
					assert.True(t, strings.HasPrefix(name, pgbouncerName+"-"), "ConfigMap %s", name)
					assert.Contains(t, cm.Data, pgbouncerIni, "ConfigMap %s", name)
				}
			} else {
				assert.Empty(t, cms, "ConfigMaps besides %s", configMapName)
			}
		})
	}
}

// functionServices returns the Knative Services that serve functions (the
// per-function Services, or the all-in-one), by name.
func functionServices(b *build) map[string]*servingv1.Service {
	out := map[string]*servingv1.Service{}
	for _, s := range all[*servingv1.Service](b) {
		if s.Labels[componentLabel] == functionComp {
			out[s.Name] = s
		}
	}
	return out
}

// deployedFunctions is the set of functions an overlay runs, and for each
// the Knative Service and path that receive its events.
func deployedFunctions(t *testing.T, b *build) map[string]subscriber {
	t.Helper()
	svcs := functionServices(b)
	out := map[string]subscriber{}
	if b.allInOne {
		require.Len(t, svcs, 1, "want exactly the function Service %s", allInOne)
		require.Contains(t, svcs, allInOne)
		for _, fn := range functionDirs(t) {
			out[fn] = subscriber{service: allInOne, uri: "/events/" + fn}
		}
		return out
	}
	var got []string
	for name := range svcs {
		out[name] = subscriber{service: name}
		got = append(got, name)
	}
	sort.Strings(got)
	assert.Equal(t, functionDirs(t), got,
		"function Services, want one per folder under deploy/functions (add the folder to overlays/functions/kustomization.yaml)")
	return out
}

type subscriber struct{ service, uri string }

type triggerKey struct {
	typ, source string
	subscriber
}

// TestTriggersMatchRoutingTable: the Triggers of an overlay are exactly the
// routing-table rows of the functions it deploys, one each, filtering on
// type (and source where the row has one), delivered to the function.
func TestTriggersMatchRoutingTable(t *testing.T) {
	for _, ov := range overlays {
		t.Run(ov.name, func(t *testing.T) {
			b := loadOverlay(t, ov)
			deployed := deployedFunctions(t, b)
			want := map[triggerKey]string{}
			for _, r := range events.Routes {
				if sub, ok := deployed[r.Function]; ok {
					want[triggerKey{r.Type, r.Source, sub}] = triggerName(r)
				}
			}
			svcs := map[string]bool{}
			for _, s := range all[*servingv1.Service](b) {
				svcs[s.Name] = true
			}
			timeouts := map[string]string{}
			for _, r := range events.Routes {
				timeouts[triggerName(r)] = r.Timeout
			}
			brokers := all[*eventingv1.Broker](b)
			require.Len(t, brokers, 1)
			got := map[triggerKey]string{}
			for _, tr := range all[*eventingv1.Trigger](b) {
				assert.Equal(t, broker, tr.Spec.Broker, "Trigger %s: broker", tr.Name)
				assert.Nil(t, tr.Spec.BrokerRef, "Trigger %s: brokerRef", tr.Name)
				assert.Empty(t, tr.Spec.Filters, "Trigger %s: use filter.attributes (exact type/source), not filters", tr.Name)
				if timeout := timeouts[tr.Name]; timeout != "" {
					// A long job's Trigger: the Broker's delivery and a timeout.
					want := brokers[0].Spec.Delivery.DeepCopy()
					want.Timeout = &timeout
					assert.Equal(t, want, tr.Spec.Delivery, "Trigger %s: the Broker's delivery and the routing table's timeout", tr.Name)
				} else {
					assert.Nil(t, tr.Spec.Delivery, "Trigger %s: delivery is the Broker's", tr.Name)
				}
				var attrs map[string]string
				if tr.Spec.Filter != nil {
					attrs = map[string]string(tr.Spec.Filter.Attributes)
				}
				for k := range attrs {
					assert.Contains(t, []string{"type", "source"}, k, "Trigger %s: filters on %q", tr.Name, k)
				}
				ref := tr.Spec.Subscriber.Ref
				if !assert.True(t, ref != nil && ref.APIVersion == "serving.knative.dev/v1" && ref.Kind == "Service" && (ref.Namespace == "" || ref.Namespace == namespace),
					"Trigger %s: subscriber must reference a Knative Service in %s", tr.Name, namespace) {
					continue
				}
				sub := subscriber{service: ref.Name}
				if u := tr.Spec.Subscriber.URI; u != nil {
					sub.uri = u.String()
				}
				key := triggerKey{attrs["type"], attrs["source"], sub}
				assert.NotContains(t, got, key, "Trigger %s duplicates another", tr.Name)
				got[key] = tr.Name
				if w, ok := want[key]; ok {
					assert.Equal(t, w, tr.Name, "Trigger name")
				}
				assert.True(t, svcs[sub.service], "Trigger %s: subscriber Service %s is not deployed", tr.Name, sub.service)
			}
			for k, n := range want {
				assert.Contains(t, got, k, "missing Trigger %s: type %s source %q to %s%s", n, k.typ, k.source, k.service, k.uri)
			}
			for k, n := range got {
				assert.Contains(t, want, k, "Trigger %s (type %s source %q to %s%s) is not in the routing table", n, k.typ, k.source, k.service, k.uri)
			}
		})
	}
}

// TestBrokerAndSources: the Broker's delivery, the dead-letter sink, the
// PingSources of the routing table and the SinkBinding.
func TestBrokerAndSources(t *testing.T) {
	for _, ov := range overlays {
		t.Run(ov.name, func(t *testing.T) {
			b := loadOverlay(t, ov)
			brokers := all[*eventingv1.Broker](b)
			require.Len(t, brokers, 1)
			require.Equal(t, broker, brokers[0].Name)
			d := brokers[0].Spec.Delivery
			require.True(t, d != nil && d.Retry != nil && *d.Retry == 5 && d.BackoffPolicy != nil && *d.BackoffPolicy == "exponential" &&
				d.BackoffDelay != nil && *d.BackoffDelay == "PT0.5S" && d.DeadLetterSink != nil && d.DeadLetterSink.Ref != nil,
				"Broker delivery %+v: want retry 5, exponential, PT0.5S, a dead-letter sink", d)
			dls := d.DeadLetterSink.Ref
			var dlsOK bool
			for _, s := range all[*servingv1.Service](b) {
				if dls.Kind == "Service" && dls.APIVersion == "serving.knative.dev/v1" && s.Name == dls.Name {
					dlsOK = s.Labels[componentLabel] == deadLetterComp
				}
			}
			assert.True(t, dlsOK, "dead-letter sink %s %s: no such dead-letter Service in the overlay", dls.Kind, dls.Name)

			isBroker := func(ref *duckv1.KReference) bool {
				return ref != nil && ref.APIVersion == "eventing.knative.dev/v1" && ref.Kind == "Broker" && ref.Name == broker &&
					(ref.Namespace == "" || ref.Namespace == namespace)
			}
			pings := map[string]*sourcesv1.PingSource{}
			for _, p := range all[*sourcesv1.PingSource](b) {
				pings[sourcesv1.PingSourceSource(p.Namespace, p.Name)] = p
				assert.True(t, isBroker(p.Spec.Sink.Ref) && p.Spec.Sink.URI == nil, "PingSource %s: sink must be the Broker", p.Name)
			}
			routed := map[string]bool{}
			for _, r := range events.Routes {
				if r.Type != events.Ping {
					continue
				}
				routed[r.Source] = true
				assert.Contains(t, pings, r.Source, "routing table names %s, no such PingSource", r.Source)
			}
			for src := range pings {
				assert.True(t, routed[src], "PingSource %s: no routing-table row", src)
			}

			// The ApiServerSource of StreamSpace's Sessions sends to the
			// Broker, and its event types are routed exactly when it exists.
			// It lives beside the Broker, in the functions' namespace, and
			// watches the sessions' namespace alone.
			apiSources := all[*sourcesv1.ApiServerSource](b)
			for _, src := range apiSources {
				assert.True(t, isBroker(src.Spec.Sink.Ref) && src.Spec.Sink.URI == nil, "ApiServerSource %s: sink must be the Broker", src.Name)
				assert.Equal(t, "Resource", src.Spec.EventMode, "ApiServerSource %s: the functions read the object, so mode Resource", src.Name)
				assert.Equal(t, sessionsNamespace, watchedNamespace(t, src), "ApiServerSource %s: watches the sessions' namespace", src.Name)
			}
			for _, r := range events.Routes {
				if r.Type == events.APIServerAdd || r.Type == events.APIServerDelete {
					assert.NotEmpty(t, apiSources, "routing table routes %s, no ApiServerSource sends it", r.Type)
				}
			}

			sbs := all[*sourcesv1.SinkBinding](b)
			require.Len(t, sbs, 1)
			sb := sbs[0]
			assert.True(t, isBroker(sb.Spec.Sink.Ref), "SinkBinding sink must be the Broker")
			subj := sb.Spec.Subject
			require.True(t, subj.APIVersion == "serving.knative.dev/v1" && subj.Kind == "Service" && subj.Name == "" && subj.Selector != nil,
				"SinkBinding subject must select Knative Services by label")
			sel, err := metav1.LabelSelectorAsSelector(subj.Selector)
			require.NoError(t, err)
			for _, s := range all[*servingv1.Service](b) {
				bound := sel.Matches(labels.Set(s.Labels))
				isFn := s.Labels[componentLabel] == functionComp
				assert.Equal(t, isFn, bound, "Knative Service %s: bound to K_SINK exactly when it is a function", s.Name)
			}
		})
	}
}

// TestNothingPublic: no function's event path is reachable from outside.
// Every Knative Service is cluster-local, no Service is a LoadBalancer or
// NodePort, and the one way in (an HTTPRoute, or in the ingress overlays an
// Ingress on StreamSpace's host) forwards only the /api/v1 paths in
// APIPaths, each to the Service that serves it.
func TestNothingPublic(t *testing.T) {
	for _, ov := range overlays {
		t.Run(ov.name, func(t *testing.T) {
			b := loadOverlay(t, ov)
			for _, s := range all[*servingv1.Service](b) {
				assert.Equal(t, serving.VisibilityClusterLocal, s.Labels[networking.VisibilityLabelKey], "Knative Service %s: visibility", s.Name)
			}
			fnSvcs := functionServices(b)
			for _, s := range all[*corev1.Service](b) {
				switch s.Spec.Type {
				case "", corev1.ServiceTypeClusterIP:
				case corev1.ServiceTypeExternalName:
					// Only the Ingress's way to a function Service.
					svc, ok := strings.CutSuffix(s.Name, gatewayServiceSuffix)
					assert.True(t, ok && ov.ingress && fnSvcs[svc] != nil, "Service %s: an ExternalName other than the Ingress's gateway Services", s.Name)
					assert.Equal(t, svc+"."+namespace+".svc.cluster.local", s.Spec.ExternalName, "Service %s", s.Name)
					assert.Equal(t, gatewayServiceAnnotations, s.Annotations, "Service %s: annotations", s.Name)
				default:
					assert.Fail(t, "Service type exposes it", "Service %s: type %s", s.Name, s.Spec.Type)
				}
			}
			routes := all[*gatewayv1.HTTPRoute](b)
			ingresses := all[*networkingv1.Ingress](b)
			if ov.ingress {
				require.Empty(t, routes, "the Ingress replaces the HTTPRoute")
				assert.Empty(t, all[*gatewayv1beta1.ReferenceGrant](b), "no ReferenceGrant without an HTTPRoute")
				require.Len(t, ingresses, 1)
				checkIngress(t, b, ingresses[0])
				return
			}
			require.Empty(t, ingresses)
			require.Len(t, routes, 1)
			checkHTTPRoute(t, b, routes[0])
		})
	}
}

// TestInternalPathsNotRouted: what a function serves only inside the
// cluster matches no rule of the HTTPRoute or the Ingress: /metrics, which
// Prometheus scrapes from the pod, the /health probes of Knative's
// queue-proxy, and the event path.
func TestInternalPathsNotRouted(t *testing.T) {
	tests := []struct{ name, path string }{
		{"metrics", "/metrics"},
		{"metrics with a slash", "/metrics/"},
		{"health", "/health"},
		{"readiness", "/health/readiness"},
		{"liveness", "/health/liveness"},
		{"event path", "/"},
		{"all-in-one event path", "/events/tags"},
	}
	for _, ov := range overlays {
		t.Run(ov.name, func(t *testing.T) {
			b := loadOverlay(t, ov)
			var routed []*regexp.Regexp
			for _, r := range all[*gatewayv1.HTTPRoute](b) {
				for _, rule := range r.Spec.Rules {
					if len(rule.Matches) == 0 {
						routed = append(routed, regexp.MustCompile(".*")) // a rule without matches takes every path
					}
					for _, m := range rule.Matches {
						if m.Path == nil || m.Path.Type == nil || m.Path.Value == nil {
							routed = append(routed, regexp.MustCompile(".*"))
							continue
						}
						re, err := regexp.Compile(pathMatchRegexp(PathMatch{Type: string(*m.Path.Type), Value: *m.Path.Value}))
						require.NoError(t, err)
						routed = append(routed, re)
					}
				}
			}
			for _, ing := range all[*networkingv1.Ingress](b) {
				if ing.Spec.DefaultBackend != nil {
					routed = append(routed, regexp.MustCompile(".*"))
				}
				for _, rule := range ing.Spec.Rules {
					if rule.HTTP == nil {
						continue
					}
					for _, p := range rule.HTTP.Paths {
						typ := "ImplementationSpecific"
						if p.PathType != nil {
							typ = string(*p.PathType)
						}
						re, err := regexp.Compile(templateRegexp(ingressPath{Type: typ, Value: p.Path}))
						require.NoError(t, err)
						routed = append(routed, re)
					}
				}
			}
			require.NotEmpty(t, routed, "no HTTPRoute or Ingress rules")
			// The control: the same matching sees a REST route.
			require.True(t, anyMatch(routed, "/api/v1/search/filters/tags"), "the REST route of tags is not matched")
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					for _, re := range routed {
						assert.False(t, re.MatchString(tc.path), "%s is routed from outside by %s", tc.path, re)
					}
				})
			}
		})
	}
}

// wantPaths is what each Knative Service must be sent: the APIPaths of the
// functions it serves.
func wantPaths(t *testing.T, b *build) map[string][]PathMatch {
	t.Helper()
	want := map[string][]PathMatch{}
	for fn, sub := range deployedFunctions(t, b) {
		want[sub.service] = append(want[sub.service], APIPaths[fn]...)
	}
	return want
}

func checkHTTPRoute(t *testing.T, b *build, route *gatewayv1.HTTPRoute) {
	t.Helper()
	want := wantPaths(t, b)
	grants := all[*gatewayv1beta1.ReferenceGrant](b)
	got := map[string][]PathMatch{}
	require.NotEmpty(t, route.Spec.Rules, "HTTPRoute %s: no rules", route.Name)
	for i, rule := range route.Spec.Rules {
		where := fmt.Sprintf("HTTPRoute %s rule %d", route.Name, i)
		// A rule without matches matches every path, "/" included.
		assert.NotEmpty(t, rule.Matches, "%s: no matches: it would forward every path", where)
		var matches []PathMatch
		for _, m := range rule.Matches {
			if !assert.True(t, m.Path != nil && m.Path.Type != nil && m.Path.Value != nil, "%s: a match without an explicit path matches /", where) {
				continue
			}
			pm := PathMatch{Type: string(*m.Path.Type), Value: *m.Path.Value}
			assert.True(t, apiPath(pm), "%s: path %s %q is outside /api/v1/", where, pm.Type, pm.Value)
			matches = append(matches, pm)
		}
		var host string
		for _, f := range rule.Filters {
			if assert.True(t, f.Type == gatewayv1.HTTPRouteFilterURLRewrite && f.URLRewrite != nil && f.URLRewrite.Path == nil && f.URLRewrite.Hostname != nil,
				"%s: only a URLRewrite of the hostname is expected, got %s", where, f.Type) {
				host = string(*f.URLRewrite.Hostname)
			}
		}
		svc, ok := strings.CutSuffix(host, "."+namespace+".svc.cluster.local")
		if !assert.True(t, ok && functionServices(b)[svc] != nil, "%s: Host rewritten to %q, want <function Service>.%s.svc.cluster.local", where, host, namespace) {
			continue
		}
		got[svc] = append(got[svc], matches...)
		if !assert.Len(t, rule.BackendRefs, 1, "%s: backendRefs", where) {
			continue
		}
		ref := rule.BackendRefs[0].BackendObjectReference
		assert.True(t, (ref.Group == nil || *ref.Group == "") && (ref.Kind == nil || *ref.Kind == "Service") && ref.Name == localGatewayService &&
			ref.Namespace != nil && string(*ref.Namespace) == localGatewayNamespace && ref.Port != nil && *ref.Port == localGatewayPort,
			"%s: backend must be Service %s/%s port %d (Knative's cluster-local gateway)", where, localGatewayNamespace, localGatewayService, localGatewayPort)
		assert.True(t, granted(grants, route, localGatewayNamespace, localGatewayService), "%s: no ReferenceGrant in %s lets it reach %s", where, localGatewayNamespace, localGatewayService)
	}
	for svc, w := range want {
		g := got[svc]
		sortMatches(w)
		sortMatches(g)
		assert.Equal(t, w, g, "HTTPRoute %s: paths of Service %s (APIPaths)", route.Name, svc)
	}
	for svc := range got {
		assert.Contains(t, want, svc, "HTTPRoute %s: routes to %s, which serves no function", route.Name, svc)
	}
}

// checkIngress: the Ingress is on StreamSpace's host with Traefik, has no
// default backend, and sends exactly each Service's APIPaths (as Ingress
// paths) to that Service's gateway ExternalName Service.
func checkIngress(t *testing.T, b *build, ing *networkingv1.Ingress) {
	t.Helper()
	assert.Nil(t, ing.Spec.DefaultBackend, "Ingress %s: a default backend exposes /", ing.Name)
	require.NotNil(t, ing.Spec.IngressClassName)
	assert.Equal(t, streamspaceIngressCls, *ing.Spec.IngressClassName, "Ingress %s: class of StreamSpace's chart", ing.Name)
	assert.Equal(t, ingressAnnotations, ing.Annotations, "Ingress %s: annotations", ing.Name)
	want := map[string][]ingressPath{}
	for svc, matches := range wantPaths(t, b) {
		for _, m := range matches {
			paths, err := ingressPaths(m)
			require.NoError(t, err)
			want[svc] = append(want[svc], paths...)
		}
	}
	gateways := map[string]*corev1.Service{}
	for _, s := range all[*corev1.Service](b) {
		gateways[s.Name] = s
	}
	got := map[string][]ingressPath{}
	require.Len(t, ing.Spec.Rules, 1, "Ingress %s: one rule, on StreamSpace's host", ing.Name)
	rule := ing.Spec.Rules[0]
	assert.Equal(t, streamspaceHost, rule.Host, "Ingress %s: a rule without a host serves every host", ing.Name)
	require.NotNil(t, rule.HTTP, "Ingress %s: rule without paths", ing.Name)
	for _, p := range rule.HTTP.Paths {
		where := fmt.Sprintf("Ingress %s path %q", ing.Name, p.Path)
		if !assert.NotNil(t, p.PathType, where) || !assert.NotNil(t, p.Backend.Service, "%s: backend", where) {
			continue
		}
		assert.True(t, strings.HasPrefix(p.Path, "/api/v1/"), "%s: outside /api/v1/", where)
		assert.Nil(t, p.Backend.Resource, "%s: resource backend", where)
		backend := p.Backend.Service
		svc, ok := strings.CutSuffix(backend.Name, gatewayServiceSuffix)
		gw := gateways[backend.Name]
		if !assert.True(t, ok && gw != nil && gw.Spec.Type == corev1.ServiceTypeExternalName, "%s: backend %s is not a gateway Service", where, backend.Name) {
			continue
		}
		assert.Equal(t, int32(localGatewayPort), backend.Port.Number, "%s: port", where)
		got[svc] = append(got[svc], ingressPath{Type: string(*p.PathType), Value: p.Path})
	}
	sortPaths := func(p []ingressPath) {
		sort.Slice(p, func(i, j int) bool { return p[i].Type+p[i].Value < p[j].Type+p[j].Value })
	}
	for svc, w := range want {
		sortPaths(w)
		g := got[svc]
		sortPaths(g)
		assert.Equal(t, w, g, "Ingress %s: paths of Service %s (APIPaths)", ing.Name, svc)
	}
	for svc := range got {
		assert.Contains(t, want, svc, "Ingress %s: sends to %s, which serves no function", ing.Name, svc)
	}
}

func sortMatches(m []PathMatch) {
	sort.Slice(m, func(i, j int) bool { return m[i].Type+m[i].Value < m[j].Type+m[j].Value })
}

// apiPath says whether a match can only match paths under /api/v1/.
func apiPath(m PathMatch) bool {
	switch m.Type {
	case "Exact", "PathPrefix":
		return strings.HasPrefix(m.Value, "/api/v1/") && !strings.Contains(m.Value, "..")
	case "RegularExpression":
		if _, err := regexp.Compile(m.Value); err != nil {
			return false
		}
		return strings.HasPrefix(m.Value, "^/api/v1/") && strings.HasSuffix(m.Value, "$")
	}
	return false
}

func granted(grants []*gatewayv1beta1.ReferenceGrant, route *gatewayv1.HTTPRoute, ns, svc string) bool {
	for _, g := range grants {
		if g.Namespace != ns {
			continue
		}
		var from, to bool
		for _, f := range g.Spec.From {
			from = from || (f.Group == gatewayv1.GroupName && f.Kind == "HTTPRoute" && string(f.Namespace) == route.Namespace)
		}
		for _, t := range g.Spec.To {
			to = to || (t.Group == "" && t.Kind == "Service" && (t.Name == nil || string(*t.Name) == svc))
		}
		if from && to {
			return true
		}
	}
	return false
}

// TestAPIPaths: every declared REST path stays under /api/v1/.
func TestAPIPaths(t *testing.T) {
	for fn, paths := range APIPaths {
		t.Run(fn, func(t *testing.T) {
			assert.NotEmpty(t, paths)
			for _, p := range paths {
				assert.True(t, apiPath(p), "%s %q is not confined to /api/v1/", p.Type, p.Value)
			}
		})
	}
	for _, fn := range functionDirs(t) {
		assert.True(t, len(APIPaths[fn]) > 0 || len(events.RoutesFor(fn)) > 0, "%s: neither REST paths nor routed events: unreachable", fn)
	}
}

// servesREST says whether a function Service serves any REST route.
func servesREST(t *testing.T, b *build, svc string) bool {
	t.Helper()
	return len(wantPaths(t, b)[svc]) > 0
}

// TestServices: resources, autoscaling, probes, security context and a
// ServiceAccount of its own for every Knative Service; the same security
// for the migration Job; least-privilege RBAC for every ServiceAccount.
func TestServices(t *testing.T) {
	for _, ov := range overlays {
		t.Run(ov.name, func(t *testing.T) {
			b := loadOverlay(t, ov)
			sas := map[string]*corev1.ServiceAccount{}
			for _, sa := range all[*corev1.ServiceAccount](b) {
				sas[sa.Name] = sa
			}
			usedBy := map[string]string{}
			deployed := deployedFunctions(t, b)
			for _, s := range all[*servingv1.Service](b) {
				where := "Knative Service " + s.Name
				spec := s.Spec.Template.Spec
				ann := s.Spec.Template.Annotations
				assert.Equal(t, "0", ann["autoscaling.knative.dev/min-scale"], "%s: min-scale (scale to zero)", where)
				for _, k := range []string{"autoscaling.knative.dev/max-scale", "autoscaling.knative.dev/target", "autoscaling.knative.dev/metric"} {
					assert.NotEmpty(t, ann[k], "%s: %s", where, k)
				}
				assert.NotNil(t, spec.TimeoutSeconds, "%s: timeoutSeconds", where)
				assert.Equal(t, s.Labels[componentLabel], s.Spec.Template.Labels[componentLabel], "%s: pods must carry the %s label for the NetworkPolicy", where, componentLabel)
				// Its own ServiceAccount.
				saName := spec.ServiceAccountName
				switch {
				case saName == "" || saName == "default":
					assert.Fail(t, "runs as the default ServiceAccount", where)
				case s.Labels[componentLabel] == functionComp && saName != s.Name:
					assert.Failf(t, "wrong ServiceAccount", "%s: ServiceAccount %s, want its own, %s", where, saName, s.Name)
				case sas[saName] == nil:
					assert.Failf(t, "missing ServiceAccount", "%s: ServiceAccount %s is not in the overlay", where, saName)
				case usedBy[saName] != "":
					assert.Failf(t, "shared ServiceAccount", "%s: shares ServiceAccount %s with %s", where, saName, usedBy[saName])
				}
				usedBy[saName] = s.Name
				if !assert.Len(t, spec.Containers, 1, "%s: containers", where) {
					continue
				}
				c := spec.Containers[0]
				checkContainer(t, where, c, true)
				if s.Labels[componentLabel] == functionComp {
					assert.True(t, c.ReadinessProbe != nil && c.ReadinessProbe.HTTPGet != nil && c.ReadinessProbe.HTTPGet.Path == readinessPath, "%s: readiness probe must GET %s", where, readinessPath)
					assert.True(t, c.LivenessProbe != nil && c.LivenessProbe.HTTPGet != nil && c.LivenessProbe.HTTPGet.Path == livenessPath, "%s: liveness probe must GET %s", where, livenessPath)
					checkFunctionEnv(t, where, c, ov.functionsDatabaseKey())
				}
			}
			jobs := all[*batchv1.Job](b)
			assert.Len(t, jobs, 1, "want the one migration Job")
			for _, j := range jobs {
				spec := j.Spec.Template.Spec
				assert.True(t, spec.ServiceAccountName != "" && sas[spec.ServiceAccountName] != nil, "Job %s: needs its own ServiceAccount", j.Name)
				for _, c := range spec.Containers {
					checkContainer(t, "Job "+j.Name, c, false)
					// Migrations hold a session-level advisory lock: always
					// straight to PostgreSQL, PgBouncer or not.
					assert.True(t, hasDatabaseURL(c, databaseKey), "Job %s: DATABASE_URL must come from Secret %s key %s", j.Name, databaseSecret, databaseKey)
				}
			}
			deployments := all[*appsv1.Deployment](b)
			if ov.pgbouncer {
				assert.Len(t, deployments, 1, "want the one PgBouncer Deployment")
			} else {
				assert.Empty(t, deployments, "no Deployment without the PgBouncer component")
			}
			for _, d := range deployments {
				where := "Deployment " + d.Name
				spec := d.Spec.Template.Spec
				saName := spec.ServiceAccountName
				assert.True(t, saName != "" && saName != "default" && sas[saName] != nil && usedBy[saName] == "", "%s: needs a ServiceAccount of its own", where)
				usedBy[saName] = d.Name
				psc := spec.SecurityContext
				// A non-ko image names its user; the kubelet can only hold
				// runAsNonRoot against a number.
				assert.True(t, psc != nil && psc.RunAsNonRoot != nil && *psc.RunAsNonRoot && psc.RunAsUser != nil && *psc.RunAsUser > 0 &&
					psc.SeccompProfile != nil && psc.SeccompProfile.Type == corev1.SeccompProfileTypeRuntimeDefault,
					"%s: pod securityContext %+v: want runAsNonRoot with a numeric runAsUser and RuntimeDefault seccomp", where, psc)
				require.Len(t, spec.Containers, 1, where)
				assert.Empty(t, spec.InitContainers, where)
				c := spec.Containers[0]
				checkRestricted(t, where, c)
				assert.True(t, pinnedImage(c.Image), "%s: image %q must name a version (a tag other than latest, or a digest)", where, c.Image)
				assert.NotNil(t, c.ReadinessProbe, "%s: readiness probe", where)
				assert.NotNil(t, c.LivenessProbe, "%s: liveness probe", where)
			}

			// RBAC: each ServiceAccount gets exactly the rules of the
			// functions running as it, and nothing for the others; an
			// ApiServerSource's adapter may read, list and watch exactly
			// the resources it watches.
			wantRules := map[string]nsRules{}
			for _, src := range all[*sourcesv1.ApiServerSource](b) {
				where := "ApiServerSource " + src.Name
				saName := src.Spec.ServiceAccountName
				assert.True(t, saName != "" && saName != "default" && sas[saName] != nil && usedBy[saName] == "", "%s: needs a ServiceAccount of its own", where)
				usedBy[saName] = where
				watched := watchedNamespace(t, src)
				for _, res := range src.Spec.Resources {
					gv, err := schema.ParseGroupVersion(res.APIVersion)
					require.NoError(t, err, where)
					wantRules[where] = append(wantRules[where], nsRule{watched, rbacv1.PolicyRule{
						APIGroups: []string{gv.Group}, Resources: []string{strings.ToLower(res.Kind) + "s"}, Verbs: []string{"get", "list", "watch"},
					}})
				}
			}
			for fn, sub := range deployed {
				access, ok := kubeAccess[fn]
				assert.True(t, ok, "function %s: declare its Kubernetes access in kubeAccess", fn)
				for _, r := range access {
					wantRules[sub.service] = append(wantRules[sub.service], nsRule{kubeAccessNamespace, r})
				}
			}
			roles := map[string]*rbacv1.Role{} // by namespace/name
			for _, r := range all[*rbacv1.Role](b) {
				roles[r.Namespace+"/"+r.Name] = r
			}
			gotRules := map[string][]string{}
			for _, rb := range all[*rbacv1.RoleBinding](b) {
				// A RoleBinding binds a Role of its own namespace.
				role := roles[rb.Namespace+"/"+rb.RoleRef.Name]
				if !assert.True(t, rb.RoleRef.Kind == "Role" && role != nil, "RoleBinding %s/%s: must bind a Role of the overlay in its namespace", rb.Namespace, rb.Name) {
					continue
				}
				for _, s := range rb.Subjects {
					// An empty subject namespace is the RoleBinding's own.
					saNamespace := s.Namespace
					if saNamespace == "" {
						saNamespace = rb.Namespace
					}
					if !assert.True(t, s.Kind == "ServiceAccount" && saNamespace == namespace && sas[s.Name] != nil,
						"RoleBinding %s/%s: subject %s %s/%s is not a ServiceAccount of the overlay", rb.Namespace, rb.Name, s.Kind, saNamespace, s.Name) {
						continue
					}
					gotRules[s.Name] = append(gotRules[s.Name], normRules(rb.Namespace, role.Rules)...)
				}
			}
			for sa := range sas {
				w := wantRules[usedBy[sa]] // none for the Job's and the dead-letter sink's
				got := append([]string{}, gotRules[sa]...)
				sort.Strings(got)
				assert.Equal(t, w.norm(), slices.Compact(got), "ServiceAccount %s: rules (namespace, then rule)", sa)
				if mount := sas[sa].AutomountServiceAccountToken; len(w) == 0 {
					assert.True(t, mount != nil && !*mount, "ServiceAccount %s: no API access, so automountServiceAccountToken must be false", sa)
				}
			}
		})
	}
}

// normRules is the set of rules r grants in namespace ns, comparable: RBAC
// grants the union of a subject's rules, so functions in one Service that
// need the same rule (snapshot's and restore's in the all-in-one) need it
// once.
func normRules(ns string, r []rbacv1.PolicyRule) []string {
	out := []string{}
	for _, x := range r {
		out = append(out, ns+" "+fmt.Sprint(x.APIGroups, x.Resources, x.ResourceNames, x.Verbs))
	}
	sort.Strings(out)
	return slices.Compact(out)
}

// nsRule is a rule and the namespace it must be granted in.
type nsRule struct {
	namespace string
	rule      rbacv1.PolicyRule
}

type nsRules []nsRule

// norm is the set of rules, comparable with normRules.
func (r nsRules) norm() []string {
	out := []string{}
	for _, x := range r {
		out = append(out, normRules(x.namespace, []rbacv1.PolicyRule{x.rule})...)
	}
	sort.Strings(out)
	return slices.Compact(out)
}

// watchedNamespace is the one namespace an ApiServerSource watches: the
// namespace its namespaceSelector names by kubernetes.io/metadata.name
// (the sessions'), or its own without a selector.
func watchedNamespace(t *testing.T, src *sourcesv1.ApiServerSource) string {
	t.Helper()
	sel := src.Spec.NamespaceSelector
	if sel == nil {
		return src.Namespace
	}
	require.Empty(t, sel.MatchExpressions, "ApiServerSource %s: namespaces by name", src.Name)
	require.Len(t, sel.MatchLabels, 1, "ApiServerSource %s: one namespace, by name (an empty selector watches every namespace)", src.Name)
	ns, ok := sel.MatchLabels["kubernetes.io/metadata.name"]
	require.True(t, ok, "ApiServerSource %s: namespaces by name", src.Name)
	return ns
}

func checkContainer(t *testing.T, where string, c corev1.Container, knative bool) {
	t.Helper()
	// What resolveKo made of ko://.
	assert.True(t, strings.HasPrefix(c.Image, "registry.example.com/streamspace/"), "%s: image %q must be a ko:// import path", where, c.Image)
	checkRestricted(t, where, c)
	if knative {
		assert.True(t, len(c.Ports) == 1 && c.Ports[0].ContainerPort == 8080, "%s: want the one port 8080 (Knative passes it as PORT)", where)
	}
}

// pinnedImage says whether an image reference names a version: a digest,
// or a tag other than latest.
func pinnedImage(ref string) bool {
	if _, digest, ok := strings.Cut(ref, "@sha256:"); ok {
		return regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(digest)
	}
	slash := strings.LastIndex(ref, "/")
	colon := strings.LastIndex(ref, ":")
	return colon > slash && ref[colon+1:] != "" && ref[colon+1:] != "latest"
}

// checkRestricted: requests and limits, and the restricted securityContext.
func checkRestricted(t *testing.T, where string, c corev1.Container) {
	t.Helper()
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		assert.Contains(t, c.Resources.Requests, r, "%s: request", where)
		assert.Contains(t, c.Resources.Limits, r, "%s: limit", where)
	}
	sc := c.SecurityContext
	assert.True(t, sc != nil && sc.RunAsNonRoot != nil && *sc.RunAsNonRoot &&
		sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem &&
		sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation &&
		sc.Capabilities != nil && slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) && len(sc.Capabilities.Add) == 0 &&
		sc.SeccompProfile != nil && sc.SeccompProfile.Type == corev1.SeccompProfileTypeRuntimeDefault &&
		(sc.Privileged == nil || !*sc.Privileged),
		"%s: securityContext %+v is not restricted (runAsNonRoot, readOnlyRootFilesystem, no privilege escalation, drop ALL, RuntimeDefault seccomp)", where, sc)
}

// literalEnv are the only variables a function Service may set literally,
// because their value belongs to its own volumes or to the event-auth
// component, or is its own share of the connection budget; all other
// configuration is in the ConfigMap.
var literalEnv = []string{
	jwtSecretEnv, "EVENT_AUTH_ISSUER", "EVENT_AUTH_AUDIENCE", "EVENT_AUTH_JWKS_URL", "EVENT_AUTH_SUBJECTS", "SSL_CERT_DIR",
	poolMaxEnv, "OIDC_PROVIDERS_FILE",
}

func checkFunctionEnv(t *testing.T, where string, c corev1.Container, key string) {
	t.Helper()
	assert.True(t, len(c.EnvFrom) == 1 && c.EnvFrom[0].ConfigMapRef != nil && c.EnvFrom[0].ConfigMapRef.Name == configMapName,
		"%s: environment must come from ConfigMap %s", where, configMapName)
	assert.True(t, hasDatabaseURL(c, key), "%s: DATABASE_URL must come from Secret %s key %s", where, databaseSecret, key)
	for _, e := range c.Env {
		if e.Value != "" {
			assert.Contains(t, literalEnv, e.Name, "%s: literal env %s: configuration belongs in the ConfigMap", where, e.Name)
		}
	}
}

// hasDatabaseURL says whether the container's DATABASE_URL comes from that
// key of Secret streamspace-database.
func hasDatabaseURL(c corev1.Container, key string) bool {
	for _, e := range c.Env {
		if e.Name == "DATABASE_URL" {
			return e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil &&
				e.ValueFrom.SecretKeyRef.Name == databaseSecret && e.ValueFrom.SecretKeyRef.Key == key
		}
	}
	return false
}

// envValue is the literal value of a container's variable, and whether it
// is set at all.
func envValue(c corev1.Container, name string) (string, bool) {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value, true
		}
	}
	return "", false
}

// TestStreamSpaceSecret: StreamSpace's JWT_SECRET can mint a token for any
// user, so it reaches only the function Services that serve REST routes, as
// a read-only file from its Secret; no container anywhere has it in its
// environment, and nothing else mounts it.
func TestStreamSpaceSecret(t *testing.T) {
	for _, ov := range overlays {
		t.Run(ov.name, func(t *testing.T) {
			b := loadOverlay(t, ov)
			var containers []corev1.Container
			for _, j := range all[*batchv1.Job](b) {
				containers = append(containers, j.Spec.Template.Spec.Containers...)
			}
			for _, s := range all[*servingv1.Service](b) {
				containers = append(containers, s.Spec.Template.Spec.Containers...)
			}
			for _, d := range all[*appsv1.Deployment](b) {
				containers = append(containers, d.Spec.Template.Spec.Containers...)
				for _, v := range d.Spec.Template.Spec.Volumes {
					assert.False(t, v.Secret != nil && v.Secret.SecretName == jwtSecretName, "Deployment %s mounts the JWT Secret", d.Name)
				}
			}
			for _, c := range containers {
				for _, e := range c.Env {
					if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
						assert.NotEqual(t, jwtSecretName, e.ValueFrom.SecretKeyRef.Name, "container %s: env %s from the JWT Secret", c.Name, e.Name)
					}
				}
				for _, e := range c.EnvFrom {
					assert.Nil(t, e.SecretRef, "container %s: a whole Secret in the environment", c.Name)
				}
			}
			for _, s := range all[*servingv1.Service](b) {
				where := "Knative Service " + s.Name
				var volume *corev1.Volume
				for i, v := range s.Spec.Template.Spec.Volumes {
					if v.Secret != nil && v.Secret.SecretName == jwtSecretName {
						volume = &s.Spec.Template.Spec.Volumes[i]
					}
				}
				c := s.Spec.Template.Spec.Containers[0]
				file, set := envValue(c, jwtSecretEnv)
				rest := s.Labels[componentLabel] == functionComp && servesREST(t, b, s.Name)
				if !rest {
					assert.Nil(t, volume, "%s serves no REST route but mounts the JWT Secret", where)
					assert.False(t, set, "%s serves no REST route but sets %s", where, jwtSecretEnv)
					continue
				}
				require.NotNil(t, volume, "%s serves REST routes: mount Secret %s", where, jwtSecretName)
				require.Len(t, volume.Secret.Items, 1, "%s: only the key %s", where, jwtSecretKey)
				item := volume.Secret.Items[0]
				assert.Equal(t, jwtSecretKey, item.Key, where)
				var mount *corev1.VolumeMount
				for i, m := range c.VolumeMounts {
					if m.Name == volume.Name {
						mount = &c.VolumeMounts[i]
					}
				}
				require.NotNil(t, mount, "%s: volume %s not mounted", where, volume.Name)
				assert.True(t, mount.ReadOnly, "%s: mount read-only", where)
				assert.Equal(t, path.Join(mount.MountPath, item.Path), file, "%s: %s names the mounted file", where, jwtSecretEnv)
			}
		})
	}
}

// TestEventAuth: the event-auth component is in every overlay: each
// function Service checks the broker's token (issuer, audience, keys) and
// accepts exactly the ServiceAccounts of the Triggers that deliver to it,
// and every Trigger asks for a token with that audience.
func TestEventAuth(t *testing.T) {
	for _, ov := range overlays {
		t.Run(ov.name, func(t *testing.T) {
			b := loadOverlay(t, ov)
			deployed := deployedFunctions(t, b)
			wantSubjects := map[string][]string{}
			for _, r := range events.Routes {
				if sub, ok := deployed[r.Function]; ok {
					wantSubjects[sub.service] = append(wantSubjects[sub.service], triggerSubject(r))
				}
			}
			for name, s := range functionServices(b) {
				c := s.Spec.Template.Spec.Containers[0]
				for _, k := range []string{"EVENT_AUTH_ISSUER", "EVENT_AUTH_JWKS_URL"} {
					v, _ := envValue(c, k)
					assert.True(t, strings.HasPrefix(v, "https://"), "Service %s: %s %q", name, k, v)
				}
				aud, _ := envValue(c, "EVENT_AUTH_AUDIENCE")
				assert.Equal(t, eventAudience, aud, "Service %s: EVENT_AUTH_AUDIENCE", name)
				subjects, _ := envValue(c, "EVENT_AUTH_SUBJECTS")
				want := wantSubjects[name]
				sort.Strings(want)
				require.NotEmpty(t, want, "Service %s: no Trigger delivers to it", name)
				assert.Equal(t, want, strings.Split(subjects, ","), "Service %s: EVENT_AUTH_SUBJECTS", name)
				for _, sub := range want {
					assert.LessOrEqual(t, len(strings.TrimPrefix(sub, "system:serviceaccount:"+namespace+":")), 63, "ServiceAccount name %s", sub)
				}
			}
			for _, tr := range all[*eventingv1.Trigger](b) {
				aud := tr.Spec.Subscriber.Audience
				if assert.NotNil(t, aud, "Trigger %s: no subscriber audience, so the broker sends no token", tr.Name) {
					assert.Equal(t, eventAudience, *aud, "Trigger %s", tr.Name)
				}
			}
		})
	}
}

// TestNetworkPolicy: only Knative's activator and autoscaler, the gateway
// and the broker filter may connect to the function pods, and every
// function pod and the dead-letter sink is covered.
func TestNetworkPolicy(t *testing.T) {
	type peer struct{ namespace, pods string }
	want := []peer{
		{"knative-eventing", "eventing.knative.dev/brokerRole=filter"},
		{"knative-serving", "app.kubernetes.io/component in (activator,autoscaler)"},
		{localGatewayNamespace, "app=3scale-kourier-gateway"},
	}
	for _, ov := range overlays {
		t.Run(ov.name, func(t *testing.T) {
			b := loadOverlay(t, ov)
			var np *networkingv1.NetworkPolicy
			for _, p := range all[*networkingv1.NetworkPolicy](b) {
				switch p.Name {
				case functionsPolicy:
					np = p
				case metricsPolicy: // checked in TestMetricsNetworkPolicy
				default:
					// PgBouncer's own, checked in TestPgBouncer.
					assert.True(t, ov.pgbouncer && p.Name == pgbouncerPolicy, "NetworkPolicy %s", p.Name)
				}
			}
			require.NotNil(t, np, "NetworkPolicy %s", functionsPolicy)
			assert.Equal(t, []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}, np.Spec.PolicyTypes)
			sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
			require.NoError(t, err)
			require.False(t, sel.Empty(), "podSelector selects every pod of the namespace, sessions included")
			for _, s := range all[*servingv1.Service](b) {
				assert.True(t, sel.Matches(labels.Set(s.Spec.Template.Labels)), "pods of Knative Service %s are not covered", s.Name)
			}
			require.Len(t, np.Spec.Ingress, 1)
			require.Empty(t, np.Spec.Ingress[0].Ports)
			var got []peer
			for _, p := range np.Spec.Ingress[0].From {
				require.Nil(t, p.IPBlock, "no IP blocks")
				require.NotNil(t, p.NamespaceSelector, "a peer without a namespace selector is a pod of this namespace")
				require.NotNil(t, p.PodSelector, "a peer without a pod selector is every pod of its namespace")
				ns := p.NamespaceSelector
				require.Empty(t, ns.MatchExpressions)
				require.Len(t, ns.MatchLabels, 1)
				name, ok := ns.MatchLabels["kubernetes.io/metadata.name"]
				require.True(t, ok, "namespaces by name")
				pods, err := metav1.LabelSelectorAsSelector(p.PodSelector)
				require.NoError(t, err)
				require.False(t, pods.Empty())
				got = append(got, peer{name, pods.String()})
			}
			sort.Slice(got, func(i, j int) bool { return got[i].namespace < got[j].namespace })
			assert.Equal(t, want, got)
		})
	}
}

// TestMetricsNetworkPolicy: Prometheus's pods in the monitoring namespace,
// and nothing else, may reach the function containers' port, where
// /metrics is served, and no other port and no other pod: not queue-proxy,
// not the dead-letter sink, not a session pod.
func TestMetricsNetworkPolicy(t *testing.T) {
	for _, ov := range overlays {
		t.Run(ov.name, func(t *testing.T) {
			b := loadOverlay(t, ov)
			var np *networkingv1.NetworkPolicy
			for _, p := range all[*networkingv1.NetworkPolicy](b) {
				if p.Name == metricsPolicy {
					np = p
				}
			}
			require.NotNil(t, np, "NetworkPolicy %s", metricsPolicy)
			assert.Equal(t, []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}, np.Spec.PolicyTypes)
			sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
			require.NoError(t, err)
			assert.Equal(t, map[string]string{componentLabel: functionComp}, np.Spec.PodSelector.MatchLabels, "function pods only")
			assert.Empty(t, np.Spec.PodSelector.MatchExpressions)
			ports := map[int32]bool{}
			for _, s := range all[*servingv1.Service](b) {
				pods := labels.Set(s.Spec.Template.Labels)
				if s.Labels[componentLabel] != functionComp {
					assert.False(t, sel.Matches(pods), "Service %s is no function and serves no metrics", s.Name)
					continue
				}
				assert.True(t, sel.Matches(pods), "pods of Knative Service %s cannot be scraped", s.Name)
				for _, c := range s.Spec.Template.Spec.Containers {
					for _, p := range c.Ports {
						ports[p.ContainerPort] = true
					}
				}
			}
			require.Len(t, ports, 1, "the function containers share one port")

			require.Len(t, np.Spec.Ingress, 1)
			rule := np.Spec.Ingress[0]
			require.Len(t, rule.From, 1, "one peer: Prometheus")
			from := rule.From[0]
			assert.Nil(t, from.IPBlock, "no IP blocks")
			require.NotNil(t, from.NamespaceSelector, "without a namespace selector the peer is a pod of this namespace")
			assert.Equal(t, map[string]string{"kubernetes.io/metadata.name": "monitoring"}, from.NamespaceSelector.MatchLabels, "one namespace, by name")
			assert.Empty(t, from.NamespaceSelector.MatchExpressions)
			require.NotNil(t, from.PodSelector, "without a pod selector every pod of the namespace is a peer")
			assert.Equal(t, map[string]string{"app.kubernetes.io/name": "prometheus"}, from.PodSelector.MatchLabels)
			assert.Empty(t, from.PodSelector.MatchExpressions)
			require.Len(t, rule.Ports, 1, "one port: the function container's")
			p := rule.Ports[0]
			require.NotNil(t, p.Port)
			assert.True(t, ports[int32(p.Port.IntValue())], "port %s is not the function containers' port", p.Port)
			assert.Nil(t, p.EndPort, "a single port, not a range")
			if assert.NotNil(t, p.Protocol) {
				assert.Equal(t, corev1.ProtocolTCP, *p.Protocol)
			}
		})
	}
}

// TestImagesAreMainPackages: every ko:// reference names a main package of
// the workspace or its dependencies, so `ko resolve` can build it. Only
// go list's standard output is data: on a cold machine the go command
// reports its module downloads on standard error.
func TestImagesAreMainPackages(t *testing.T) {
	seen := map[string]bool{}
	var paths []string
	for _, ov := range overlays {
		for _, p := range loadOverlay(t, ov).images {
			if !seen[p] {
				seen[p] = true
				paths = append(paths, p)
			}
		}
	}
	sort.Strings(paths)
	args := append([]string{"list", "-e", "-json=ImportPath,Name,Error"}, paths...)
	cmd := exec.Command(goTool(), args...)
	cmd.Dir = ".."
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	require.NoError(t, err, "go list: %s", stderr.String())
	var listed []string
	dec := json.NewDecoder(bytes.NewReader(out))
	for dec.More() {
		var p struct {
			ImportPath string
			Name       string
			Error      *struct{ Err string }
		}
		require.NoError(t, dec.Decode(&p), "decode go list output:\n%s", out)
		listed = append(listed, p.ImportPath)
		if assert.Nil(t, p.Error, "ko://%s is not a buildable main package", p.ImportPath) {
			assert.Equal(t, "main", p.Name, "ko://%s is not a main package", p.ImportPath)
		}
	}
	sort.Strings(listed)
	assert.Equal(t, paths, listed, "go list reports one package for each image")
}

// TestEveryOverlayIsChecked: each folder under overlays/ is in overlays,
// with and without PgBouncer, so none is deployed unchecked.
func TestEveryOverlayIsChecked(t *testing.T) {
	entries, err := os.ReadDir("overlays")
	require.NoError(t, err)
	var dirs, direct, pooled []string
	for _, e := range entries {
		if e.IsDir() {
			dirs = append(dirs, e.Name())
		}
	}
	for _, ov := range overlays {
		if ov.pgbouncer {
			pooled = append(pooled, ov.folder())
		} else {
			direct = append(direct, ov.name)
		}
	}
	sort.Strings(dirs)
	sort.Strings(direct)
	sort.Strings(pooled)
	assert.Equal(t, dirs, direct, "overlays")
	assert.Equal(t, dirs, pooled, "overlays with PgBouncer")
}
