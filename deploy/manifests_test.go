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

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
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

	"github.com/streamspace-dev/functions/events"
)

// The overlays a cluster is deployed from.
var overlays = []string{"functions", "all-in-one"}

// kinds maps apiVersion/kind to the Go type every document of that kind is
// decoded into. A kind missing here fails the test: nothing is deployed
// unchecked.
var kinds = map[string]func() any{
	"v1/Namespace":                                     func() any { return &corev1.Namespace{} },
	"v1/ConfigMap":                                     func() any { return &corev1.ConfigMap{} },
	"v1/Secret":                                        func() any { return &corev1.Secret{} },
	"v1/Service":                                       func() any { return &corev1.Service{} },
	"v1/ServiceAccount":                                func() any { return &corev1.ServiceAccount{} },
	"batch/v1/Job":                                     func() any { return &batchv1.Job{} },
	"networking.k8s.io/v1/NetworkPolicy":               func() any { return &networkingv1.NetworkPolicy{} },
	"networking.k8s.io/v1/Ingress":                     func() any { return &networkingv1.Ingress{} },
	"rbac.authorization.k8s.io/v1/Role":                func() any { return &rbacv1.Role{} },
	"rbac.authorization.k8s.io/v1/RoleBinding":         func() any { return &rbacv1.RoleBinding{} },
	"rbac.authorization.k8s.io/v1/ClusterRole":         func() any { return &rbacv1.ClusterRole{} },
	"rbac.authorization.k8s.io/v1/ClusterRoleBinding":  func() any { return &rbacv1.ClusterRoleBinding{} },
	"gateway.networking.k8s.io/v1/HTTPRoute":           func() any { return &gatewayv1.HTTPRoute{} },
	"gateway.networking.k8s.io/v1beta1/ReferenceGrant": func() any { return &gatewayv1beta1.ReferenceGrant{} },
	"serving.knative.dev/v1/Service":                   func() any { return &servingv1.Service{} },
	"eventing.knative.dev/v1/Broker":                   func() any { return &eventingv1.Broker{} },
	"eventing.knative.dev/v1/Trigger":                  func() any { return &eventingv1.Trigger{} },
	"sources.knative.dev/v1/PingSource":                func() any { return &sourcesv1.PingSource{} },
	"sources.knative.dev/v1/SinkBinding":               func() any { return &sourcesv1.SinkBinding{} },
}

// kubeAccess is the Kubernetes API access each function may have, and so
// the rules its ServiceAccount's Roles must grant exactly. Least privilege:
// a function not listed here fails the test until its access is declared.
var kubeAccess = map[string][]rbacv1.PolicyRule{
	"tags":       nil, // PostgreSQL only
	"sharing":    nil, // PostgreSQL only
	"versioning": nil, // PostgreSQL only
}

// configKeys are the keys of the shared ConfigMap (DESIGN.md §3).
var configKeys = []string{
	"AUTH_AUDIENCE", "AUTH_ISSUER", "AUTH_JWKS_URL", "AUTH_ROLE_CLAIM",
	"S3_BUCKET", "S3_ENDPOINT", "S3_FORCE_PATH_STYLE", "S3_REGION",
	"STREAMSPACE_NAMESPACE",
}

const (
	configMapName    = "streamspace-functions"
	databaseSecret   = "streamspace-database"
	databaseKey      = "url"
	componentLabel   = "app.kubernetes.io/component"
	functionComp     = "function"
	deadLetterComp   = "dead-letter"
	koPrefix         = "ko://"
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
	name    string
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
func loadOverlay(t *testing.T, name string) *build {
	t.Helper()
	buildsMu.Lock()
	defer buildsMu.Unlock()
	if b, ok := builds[name]; ok {
		return b
	}
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	resMap, err := k.Run(filesys.MakeFsOnDisk(), filepath.Join("overlays", name))
	if err != nil {
		t.Fatalf("kustomize build overlays/%s: %v", name, err)
	}
	b := &build{name: name}
	for _, r := range resMap.Resources() {
		doc, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		doc, imgs := resolveKo(doc)
		b.images = append(b.images, imgs...)
		o, err := decodeStrict(doc)
		if err != nil {
			t.Fatalf("overlays/%s: %s %s: %v", name, r.GetKind(), r.GetName(), err)
		}
		o.doc = doc
		b.objects = append(b.objects, o)
	}
	builds[name] = b
	return b
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
	if knativeCtxErr != nil {
		t.Fatal(knativeCtxErr)
	}
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
	for _, name := range overlays {
		t.Run(name, func(t *testing.T) {
			b := loadOverlay(t, name)
			n := 0
			for _, o := range b.objects {
				ko, ok := o.obj.(knativeObject)
				if !ok {
					continue
				}
				n++
				// Validate a copy: defaulting changes the object.
				c, err := decodeCopy(o)
				if err != nil {
					t.Fatal(err)
				}
				ko = c.(knativeObject)
				errs, warnings := knativeDiagnostics(ctx, ko)
				if errs != nil {
					t.Errorf("%s: errors: %v", o, errs)
				}
				if warnings != nil {
					t.Errorf("%s: warnings: %v", o, warnings)
				}
			}
			if n == 0 {
				t.Fatal("no Knative objects")
			}
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
	for _, doc := range []string{
		"apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: x}\nspec: {broker: default, filter: {atributes: {type: a}}}\n",
		"apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {name: x}\nspec: {template: {spec: {containers: [{image: a, securityContex: {}}]}}}\n",
		"apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: x, name: y}\nspec: {broker: default}\n",
		"apiVersion: example.com/v1\nkind: Unknown\nmetadata: {name: x}\n",
	} {
		if _, err := decodeStrict([]byte(doc)); err == nil {
			t.Errorf("decoded without error:\n%s", doc)
		}
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
	if err != nil {
		t.Fatal(err)
	}
	errs, warnings := knativeDiagnostics(knativeContext(t), o.obj.(knativeObject))
	if errs != nil {
		t.Fatalf("errors: %v", errs)
	}
	if warnings == nil {
		t.Fatal("no warnings for a Service without securityContext")
	}
}

// TestObjects checks metadata and the kinds that may not appear.
func TestObjects(t *testing.T) {
	for _, name := range overlays {
		t.Run(name, func(t *testing.T) {
			b := loadOverlay(t, name)
			seen := map[string]bool{}
			for _, o := range b.objects {
				key := o.apiVersion + "/" + o.kind + "/" + o.namespace + "/" + o.name
				if seen[key] {
					t.Errorf("%s: duplicate", o)
				}
				seen[key] = true
				for _, msg := range validation.IsDNS1123Subdomain(o.name) {
					t.Errorf("%s: name: %s", o, msg)
				}
				switch o.obj.(type) {
				case *corev1.Namespace:
					if o.name != namespace {
						t.Errorf("%s: unexpected namespace", o)
					}
				case *gatewayv1beta1.ReferenceGrant:
					if o.namespace != localGatewayNamespace {
						t.Errorf("%s: must be in %s", o, localGatewayNamespace)
					}
				case *corev1.Secret:
					t.Errorf("%s: secrets are referenced, never committed", o)
				case *rbacv1.ClusterRole, *rbacv1.ClusterRoleBinding:
					t.Errorf("%s: functions get namespaced access only", o)
				default:
					if o.namespace != namespace {
						t.Errorf("%s: namespace %q, want %q", o, o.namespace, namespace)
					}
				}
				if meta := o.obj.(metav1.Object); meta.GetLabels()["app.kubernetes.io/part-of"] != "streamspace" {
					t.Errorf("%s: missing label app.kubernetes.io/part-of=streamspace", o)
				}
			}
			if len(all[*corev1.Namespace](b)) != 1 {
				t.Errorf("want one Namespace")
			}
			cms := all[*corev1.ConfigMap](b)
			if len(cms) != 1 || cms[0].Name != configMapName {
				t.Fatalf("want the one ConfigMap %s", configMapName)
			}
			var keys []string
			for k := range cms[0].Data {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			if !slices.Equal(keys, configKeys) {
				t.Errorf("ConfigMap keys %v, want %v", keys, configKeys)
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
	switch b.name {
	case "functions":
		for name := range svcs {
			out[name] = subscriber{service: name}
		}
		var got []string
		for name := range out {
			got = append(got, name)
		}
		sort.Strings(got)
		if want := functionDirs(t); !slices.Equal(got, want) {
			t.Errorf("function Services %v, want one per folder under deploy/functions %v (add the folder to overlays/functions/kustomization.yaml)", got, want)
		}
	case "all-in-one":
		if len(svcs) != 1 || svcs[allInOne] == nil {
			t.Fatalf("want exactly the function Service %s, got %d", allInOne, len(svcs))
		}
		for _, fn := range functionDirs(t) {
			out[fn] = subscriber{service: allInOne, uri: "/events/" + fn}
		}
	default:
		t.Fatalf("unknown overlay %s", b.name)
	}
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
	for _, name := range overlays {
		t.Run(name, func(t *testing.T) {
			b := loadOverlay(t, name)
			deployed := deployedFunctions(t, b)
			want := map[triggerKey]string{}
			for _, r := range events.Routes {
				if sub, ok := deployed[r.Function]; ok {
					want[triggerKey{r.Type, r.Source, sub}] = triggerName(r)
				}
			}
			got := map[triggerKey]string{}
			for _, tr := range all[*eventingv1.Trigger](b) {
				if tr.Spec.Broker != broker || tr.Spec.BrokerRef != nil {
					t.Errorf("Trigger %s: broker %q, want %q", tr.Name, tr.Spec.Broker, broker)
				}
				if len(tr.Spec.Filters) > 0 {
					t.Errorf("Trigger %s: use filter.attributes (exact type/source), not filters", tr.Name)
				}
				if tr.Spec.Delivery != nil {
					t.Errorf("Trigger %s: delivery is the Broker's", tr.Name)
				}
				var attrs map[string]string
				if tr.Spec.Filter != nil {
					attrs = map[string]string(tr.Spec.Filter.Attributes)
				}
				for k := range attrs {
					if k != "type" && k != "source" {
						t.Errorf("Trigger %s: filters on %q", tr.Name, k)
					}
				}
				ref := tr.Spec.Subscriber.Ref
				if ref == nil || ref.APIVersion != "serving.knative.dev/v1" || ref.Kind != "Service" || (ref.Namespace != "" && ref.Namespace != namespace) {
					t.Errorf("Trigger %s: subscriber must reference a Knative Service in %s", tr.Name, namespace)
					continue
				}
				sub := subscriber{service: ref.Name}
				if u := tr.Spec.Subscriber.URI; u != nil {
					sub.uri = u.String()
				}
				key := triggerKey{attrs["type"], attrs["source"], sub}
				if _, dup := got[key]; dup {
					t.Errorf("Trigger %s: duplicates %s", tr.Name, got[key])
				}
				got[key] = tr.Name
				if w, ok := want[key]; ok && w != tr.Name {
					t.Errorf("Trigger %s: want name %s", tr.Name, w)
				}
			}
			for k, n := range want {
				if _, ok := got[k]; !ok {
					t.Errorf("missing Trigger %s: type %s source %q to %s%s", n, k.typ, k.source, k.service, k.uri)
				}
			}
			for k, n := range got {
				if _, ok := want[k]; !ok {
					t.Errorf("Trigger %s (type %s source %q to %s%s) is not in the routing table", n, k.typ, k.source, k.service, k.uri)
				}
			}
			svcs := map[string]bool{}
			for _, s := range all[*servingv1.Service](b) {
				svcs[s.Name] = true
			}
			for k, n := range got {
				if !svcs[k.service] {
					t.Errorf("Trigger %s: subscriber Service %s is not deployed", n, k.service)
				}
			}
		})
	}
}

// TestBrokerAndSources: the Broker's delivery, the dead-letter sink, the
// PingSources of the routing table and the SinkBinding.
func TestBrokerAndSources(t *testing.T) {
	for _, name := range overlays {
		t.Run(name, func(t *testing.T) {
			b := loadOverlay(t, name)
			brokers := all[*eventingv1.Broker](b)
			if len(brokers) != 1 || brokers[0].Name != broker {
				t.Fatalf("want one Broker %q", broker)
			}
			d := brokers[0].Spec.Delivery
			if d == nil || d.Retry == nil || *d.Retry != 5 || d.BackoffPolicy == nil || *d.BackoffPolicy != "exponential" ||
				d.BackoffDelay == nil || *d.BackoffDelay != "PT0.5S" || d.DeadLetterSink == nil || d.DeadLetterSink.Ref == nil {
				t.Fatalf("Broker delivery %+v: want retry 5, exponential, PT0.5S, a dead-letter sink", d)
			}
			dls := d.DeadLetterSink.Ref
			var dlsOK bool
			for _, s := range all[*servingv1.Service](b) {
				if dls.Kind == "Service" && dls.APIVersion == "serving.knative.dev/v1" && s.Name == dls.Name {
					dlsOK = s.Labels[componentLabel] == deadLetterComp
				}
			}
			if !dlsOK {
				t.Errorf("dead-letter sink %s %s: no such dead-letter Service in the overlay", dls.Kind, dls.Name)
			}

			isBroker := func(ref *duckv1.KReference) bool {
				return ref != nil && ref.APIVersion == "eventing.knative.dev/v1" && ref.Kind == "Broker" && ref.Name == broker &&
					(ref.Namespace == "" || ref.Namespace == namespace)
			}
			pings := map[string]*sourcesv1.PingSource{}
			for _, p := range all[*sourcesv1.PingSource](b) {
				pings[sourcesv1.PingSourceSource(p.Namespace, p.Name)] = p
				if !isBroker(p.Spec.Sink.Ref) || p.Spec.Sink.URI != nil {
					t.Errorf("PingSource %s: sink must be the Broker", p.Name)
				}
			}
			routed := map[string]bool{}
			for _, r := range events.Routes {
				if r.Type != events.Ping {
					continue
				}
				routed[r.Source] = true
				if pings[r.Source] == nil {
					t.Errorf("routing table names %s, no such PingSource", r.Source)
				}
			}
			for src := range pings {
				if !routed[src] {
					t.Errorf("PingSource %s: no routing-table row", src)
				}
			}

			sbs := all[*sourcesv1.SinkBinding](b)
			if len(sbs) != 1 {
				t.Fatalf("want one SinkBinding, got %d", len(sbs))
			}
			sb := sbs[0]
			if !isBroker(sb.Spec.Sink.Ref) {
				t.Errorf("SinkBinding sink must be the Broker")
			}
			subj := sb.Spec.Subject
			if subj.APIVersion != "serving.knative.dev/v1" || subj.Kind != "Service" || subj.Name != "" || subj.Selector == nil {
				t.Fatalf("SinkBinding subject must select Knative Services by label")
			}
			sel, err := metav1.LabelSelectorAsSelector(subj.Selector)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range all[*servingv1.Service](b) {
				bound := sel.Matches(labels.Set(s.Labels))
				if isFn := s.Labels[componentLabel] == functionComp; bound != isFn {
					t.Errorf("Knative Service %s: bound to K_SINK %v, is a function %v", s.Name, bound, isFn)
				}
			}
		})
	}
}

// TestNothingPublic: no function's event path is reachable from outside.
// Every Knative Service is cluster-local, no Service is a LoadBalancer or
// NodePort, and the one ingress (an HTTPRoute) forwards only the /api/v1
// paths in APIPaths, each to the Service that serves it.
func TestNothingPublic(t *testing.T) {
	for _, name := range overlays {
		t.Run(name, func(t *testing.T) {
			b := loadOverlay(t, name)
			for _, s := range all[*servingv1.Service](b) {
				if v := s.Labels[networking.VisibilityLabelKey]; v != serving.VisibilityClusterLocal {
					t.Errorf("Knative Service %s: label %s=%q, want %q", s.Name, networking.VisibilityLabelKey, v, serving.VisibilityClusterLocal)
				}
			}
			for _, s := range all[*corev1.Service](b) {
				if s.Spec.Type != "" && s.Spec.Type != corev1.ServiceTypeClusterIP {
					t.Errorf("Service %s: type %s", s.Name, s.Spec.Type)
				}
			}
			for _, ing := range all[*networkingv1.Ingress](b) {
				if ing.Spec.DefaultBackend != nil {
					t.Errorf("Ingress %s: a default backend exposes /", ing.Name)
				}
				for _, r := range ing.Spec.Rules {
					if r.HTTP == nil {
						t.Errorf("Ingress %s: rule without paths", ing.Name)
						continue
					}
					for _, p := range r.HTTP.Paths {
						if !strings.HasPrefix(p.Path, "/api/v1/") {
							t.Errorf("Ingress %s: path %q is outside /api/v1/", ing.Name, p.Path)
						}
					}
				}
			}
			routes := all[*gatewayv1.HTTPRoute](b)
			if n := len(routes) + len(all[*networkingv1.Ingress](b)); n != 1 {
				t.Fatalf("want one ingress (HTTPRoute), got %d", n)
			}
			checkHTTPRoute(t, b, routes[0])
		})
	}
}

func checkHTTPRoute(t *testing.T, b *build, route *gatewayv1.HTTPRoute) {
	t.Helper()
	// What each Knative Service must be sent: the APIPaths of the functions
	// it serves.
	want := map[string][]PathMatch{}
	for fn, sub := range deployedFunctions(t, b) {
		want[sub.service] = append(want[sub.service], APIPaths[fn]...)
	}
	grants := all[*gatewayv1beta1.ReferenceGrant](b)
	got := map[string][]PathMatch{}
	if len(route.Spec.Rules) == 0 {
		t.Fatalf("HTTPRoute %s: no rules", route.Name)
	}
	for i, rule := range route.Spec.Rules {
		where := fmt.Sprintf("HTTPRoute %s rule %d", route.Name, i)
		// A rule without matches matches every path, "/" included.
		if len(rule.Matches) == 0 {
			t.Errorf("%s: no matches: it would forward every path", where)
		}
		var matches []PathMatch
		for _, m := range rule.Matches {
			if m.Path == nil || m.Path.Type == nil || m.Path.Value == nil {
				t.Errorf("%s: a match without an explicit path matches /", where)
				continue
			}
			pm := PathMatch{Type: string(*m.Path.Type), Value: *m.Path.Value}
			if !apiPath(pm) {
				t.Errorf("%s: path %s %q is outside /api/v1/", where, pm.Type, pm.Value)
			}
			matches = append(matches, pm)
		}
		var host string
		for _, f := range rule.Filters {
			switch {
			case f.Type == gatewayv1.HTTPRouteFilterURLRewrite && f.URLRewrite != nil && f.URLRewrite.Path == nil && f.URLRewrite.Hostname != nil:
				host = string(*f.URLRewrite.Hostname)
			default:
				t.Errorf("%s: only a URLRewrite of the hostname is expected, got %s", where, f.Type)
			}
		}
		svc, ok := strings.CutSuffix(host, "."+namespace+".svc.cluster.local")
		if !ok || functionServices(b)[svc] == nil {
			t.Errorf("%s: Host rewritten to %q, want <function Service>.%s.svc.cluster.local", where, host, namespace)
			continue
		}
		got[svc] = append(got[svc], matches...)
		if len(rule.BackendRefs) != 1 {
			t.Errorf("%s: want one backendRef", where)
			continue
		}
		ref := rule.BackendRefs[0].BackendObjectReference
		if (ref.Group != nil && *ref.Group != "") || (ref.Kind != nil && *ref.Kind != "Service") || ref.Name != localGatewayService ||
			ref.Namespace == nil || string(*ref.Namespace) != localGatewayNamespace || ref.Port == nil || *ref.Port != localGatewayPort {
			t.Errorf("%s: backend must be Service %s/%s port %d (Knative's cluster-local gateway)", where, localGatewayNamespace, localGatewayService, localGatewayPort)
		}
		if !granted(grants, route, localGatewayNamespace, localGatewayService) {
			t.Errorf("%s: no ReferenceGrant in %s lets it reach %s", where, localGatewayNamespace, localGatewayService)
		}
	}
	for svc, w := range want {
		g := got[svc]
		sortMatches(w)
		sortMatches(g)
		if !slices.Equal(g, w) {
			t.Errorf("HTTPRoute %s: Service %s gets %v, want %v (APIPaths)", route.Name, svc, g, w)
		}
	}
	for svc := range got {
		if _, ok := want[svc]; !ok {
			t.Errorf("HTTPRoute %s: routes to %s, which serves no function", route.Name, svc)
		}
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
		if len(paths) == 0 {
			t.Errorf("%s: no paths", fn)
		}
		for _, p := range paths {
			if !apiPath(p) {
				t.Errorf("%s: %s %q is not confined to /api/v1/", fn, p.Type, p.Value)
			}
		}
	}
	for _, fn := range functionDirs(t) {
		if len(APIPaths[fn]) == 0 && len(events.RoutesFor(fn)) == 0 {
			t.Errorf("%s: neither REST paths nor routed events: unreachable", fn)
		}
	}
}

// TestServices: resources, autoscaling, probes, security context and a
// ServiceAccount of its own for every Knative Service; the same security
// for the migration Job; least-privilege RBAC for every ServiceAccount.
func TestServices(t *testing.T) {
	for _, name := range overlays {
		t.Run(name, func(t *testing.T) {
			b := loadOverlay(t, name)
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
				if ann["autoscaling.knative.dev/min-scale"] != "0" {
					t.Errorf("%s: min-scale must be \"0\" (scale to zero)", where)
				}
				for _, k := range []string{"autoscaling.knative.dev/max-scale", "autoscaling.knative.dev/target", "autoscaling.knative.dev/metric"} {
					if ann[k] == "" {
						t.Errorf("%s: no %s", where, k)
					}
				}
				if spec.TimeoutSeconds == nil {
					t.Errorf("%s: no timeoutSeconds", where)
				}
				if s.Spec.Template.Labels[componentLabel] != s.Labels[componentLabel] {
					t.Errorf("%s: pods must carry the %s label for the NetworkPolicy", where, componentLabel)
				}
				// Its own ServiceAccount.
				saName := spec.ServiceAccountName
				switch {
				case saName == "" || saName == "default":
					t.Errorf("%s: runs as the default ServiceAccount", where)
				case s.Labels[componentLabel] == functionComp && saName != s.Name:
					t.Errorf("%s: ServiceAccount %s, want its own, %s", where, saName, s.Name)
				case sas[saName] == nil:
					t.Errorf("%s: ServiceAccount %s is not in the overlay", where, saName)
				case usedBy[saName] != "":
					t.Errorf("%s: shares ServiceAccount %s with %s", where, saName, usedBy[saName])
				}
				usedBy[saName] = s.Name
				if len(spec.Containers) != 1 {
					t.Errorf("%s: want one container", where)
					continue
				}
				c := spec.Containers[0]
				checkContainer(t, where, c, true)
				if s.Labels[componentLabel] == functionComp {
					if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Path != readinessPath {
						t.Errorf("%s: readiness probe must GET %s", where, readinessPath)
					}
					if c.LivenessProbe == nil || c.LivenessProbe.HTTPGet == nil || c.LivenessProbe.HTTPGet.Path != livenessPath {
						t.Errorf("%s: liveness probe must GET %s", where, livenessPath)
					}
					checkFunctionEnv(t, where, c)
				}
			}
			for _, j := range all[*batchv1.Job](b) {
				spec := j.Spec.Template.Spec
				if spec.ServiceAccountName == "" || sas[spec.ServiceAccountName] == nil {
					t.Errorf("Job %s: needs its own ServiceAccount", j.Name)
				}
				for _, c := range spec.Containers {
					checkContainer(t, "Job "+j.Name, c, false)
					if !hasDatabaseURL(c) {
						t.Errorf("Job %s: DATABASE_URL must come from Secret %s key %s", j.Name, databaseSecret, databaseKey)
					}
				}
			}
			if len(all[*batchv1.Job](b)) != 1 {
				t.Errorf("want the one migration Job")
			}

			// RBAC: each ServiceAccount gets exactly the rules of the
			// functions running as it, and nothing for the others.
			wantRules := map[string][]rbacv1.PolicyRule{}
			for fn, sub := range deployed {
				access, ok := kubeAccess[fn]
				if !ok {
					t.Errorf("function %s: declare its Kubernetes access in kubeAccess", fn)
				}
				wantRules[sub.service] = append(wantRules[sub.service], access...)
			}
			roles := map[string]*rbacv1.Role{}
			for _, r := range all[*rbacv1.Role](b) {
				roles[r.Name] = r
			}
			gotRules := map[string][]rbacv1.PolicyRule{}
			for _, rb := range all[*rbacv1.RoleBinding](b) {
				if rb.RoleRef.Kind != "Role" || roles[rb.RoleRef.Name] == nil {
					t.Errorf("RoleBinding %s: must bind a Role of the overlay", rb.Name)
					continue
				}
				for _, s := range rb.Subjects {
					if s.Kind != "ServiceAccount" || (s.Namespace != "" && s.Namespace != namespace) || sas[s.Name] == nil {
						t.Errorf("RoleBinding %s: subject %s %s is not a ServiceAccount of the overlay", rb.Name, s.Kind, s.Name)
						continue
					}
					gotRules[s.Name] = append(gotRules[s.Name], roles[rb.RoleRef.Name].Rules...)
				}
			}
			for sa := range sas {
				w := wantRules[usedBy[sa]] // none for the Job's and the dead-letter sink's
				g := gotRules[sa]
				if fmt.Sprint(normRules(g)) != fmt.Sprint(normRules(w)) {
					t.Errorf("ServiceAccount %s: rules %v, want %v", sa, g, w)
				}
				if mount := sas[sa].AutomountServiceAccountToken; len(w) == 0 && (mount == nil || *mount) {
					t.Errorf("ServiceAccount %s: no API access, so automountServiceAccountToken must be false", sa)
				}
			}
		})
	}
}

func normRules(r []rbacv1.PolicyRule) []string {
	var out []string
	for _, x := range r {
		out = append(out, fmt.Sprint(x.APIGroups, x.Resources, x.ResourceNames, x.Verbs))
	}
	sort.Strings(out)
	return out
}

func checkContainer(t *testing.T, where string, c corev1.Container, knative bool) {
	t.Helper()
	if !strings.HasPrefix(c.Image, "registry.example.com/streamspace/") { // what resolveKo made of ko://
		t.Errorf("%s: image %q must be a ko:// import path", where, c.Image)
	}
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if _, ok := c.Resources.Requests[r]; !ok {
			t.Errorf("%s: no %s request", where, r)
		}
		if _, ok := c.Resources.Limits[r]; !ok {
			t.Errorf("%s: no %s limit", where, r)
		}
	}
	sc := c.SecurityContext
	if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot ||
		sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0 ||
		sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault ||
		(sc.Privileged != nil && *sc.Privileged) {
		t.Errorf("%s: securityContext %+v is not restricted (runAsNonRoot, readOnlyRootFilesystem, no privilege escalation, drop ALL, RuntimeDefault seccomp)", where, sc)
	}
	if knative && (len(c.Ports) != 1 || c.Ports[0].ContainerPort != 8080) {
		t.Errorf("%s: want the one port 8080 (Knative passes it as PORT)", where)
	}
}

func checkFunctionEnv(t *testing.T, where string, c corev1.Container) {
	t.Helper()
	if len(c.EnvFrom) != 1 || c.EnvFrom[0].ConfigMapRef == nil || c.EnvFrom[0].ConfigMapRef.Name != configMapName {
		t.Errorf("%s: environment must come from ConfigMap %s", where, configMapName)
	}
	if !hasDatabaseURL(c) {
		t.Errorf("%s: DATABASE_URL must come from Secret %s key %s", where, databaseSecret, databaseKey)
	}
	for _, e := range c.Env {
		if e.Value != "" {
			t.Errorf("%s: literal env %s: configuration belongs in the ConfigMap", where, e.Name)
		}
	}
}

func hasDatabaseURL(c corev1.Container) bool {
	for _, e := range c.Env {
		if e.Name == "DATABASE_URL" {
			return e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil &&
				e.ValueFrom.SecretKeyRef.Name == databaseSecret && e.ValueFrom.SecretKeyRef.Key == databaseKey
		}
	}
	return false
}

// TestNetworkPolicy: only the broker, the gateway and Knative's activator and
// autoscaler may connect to the function pods, and every function pod and
// the dead-letter sink is covered.
func TestNetworkPolicy(t *testing.T) {
	wantPeers := []string{"knative-eventing", "knative-serving", localGatewayNamespace}
	for _, name := range overlays {
		t.Run(name, func(t *testing.T) {
			b := loadOverlay(t, name)
			nps := all[*networkingv1.NetworkPolicy](b)
			if len(nps) != 1 {
				t.Fatalf("want one NetworkPolicy, got %d", len(nps))
			}
			np := nps[0]
			if !slices.Equal(np.Spec.PolicyTypes, []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}) {
				t.Errorf("policyTypes %v, want [Ingress]", np.Spec.PolicyTypes)
			}
			sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
			if err != nil {
				t.Fatal(err)
			}
			if sel.Empty() {
				t.Errorf("podSelector selects every pod of the namespace, sessions included")
			}
			for _, s := range all[*servingv1.Service](b) {
				if !sel.Matches(labels.Set(s.Spec.Template.Labels)) {
					t.Errorf("pods of Knative Service %s are not covered", s.Name)
				}
			}
			if len(np.Spec.Ingress) != 1 || len(np.Spec.Ingress[0].Ports) != 0 {
				t.Fatalf("want one ingress rule")
			}
			var peers []string
			for _, p := range np.Spec.Ingress[0].From {
				if p.PodSelector != nil || p.IPBlock != nil || p.NamespaceSelector == nil {
					t.Fatalf("peers must be whole namespaces by name")
				}
				ns := p.NamespaceSelector
				for _, e := range ns.MatchExpressions {
					if e.Key != "kubernetes.io/metadata.name" || e.Operator != metav1.LabelSelectorOpIn {
						t.Fatalf("peer selector %v: want kubernetes.io/metadata.name In (...)", e)
					}
					peers = append(peers, e.Values...)
				}
				if v, ok := ns.MatchLabels["kubernetes.io/metadata.name"]; ok {
					peers = append(peers, v)
				}
				if len(ns.MatchExpressions)+len(ns.MatchLabels) == 0 {
					t.Fatalf("an empty namespaceSelector admits every namespace")
				}
			}
			sort.Strings(peers)
			if !slices.Equal(peers, wantPeers) {
				t.Errorf("peer namespaces %v, want %v", peers, wantPeers)
			}
		})
	}
}

// TestImagesAreMainPackages: every ko:// reference names a main package of
// the workspace or its dependencies, so `ko resolve` can build it.
func TestImagesAreMainPackages(t *testing.T) {
	seen := map[string]bool{}
	var paths []string
	for _, name := range overlays {
		for _, p := range loadOverlay(t, name).images {
			if !seen[p] {
				seen[p] = true
				paths = append(paths, p)
			}
		}
	}
	sort.Strings(paths)
	// Only stdout is data: on a cold machine the go command reports its
	// module downloads on stderr.
	args := append([]string{"list", "-e", "-json=ImportPath,Name,Error"}, paths...)
	cmd := exec.Command(goTool(), args...)
	cmd.Dir = ".."
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	var listed []string
	dec := json.NewDecoder(bytes.NewReader(out))
	for dec.More() {
		var p struct {
			ImportPath string
			Name       string
			Error      *struct{ Err string }
		}
		if err := dec.Decode(&p); err != nil {
			t.Fatalf("decode go list output: %v\n%s", err, out)
		}
		listed = append(listed, p.ImportPath)
		switch {
		case p.Error != nil:
			t.Errorf("ko://%s is not a buildable main package: %s", p.ImportPath, p.Error.Err)
		case p.Name != "main":
			t.Errorf("ko://%s is not a buildable main package: package %s", p.ImportPath, p.Name)
		}
	}
	sort.Strings(listed)
	if !slices.Equal(listed, paths) {
		t.Errorf("go list reported %v, want one package for each of %v", listed, paths)
	}
}
