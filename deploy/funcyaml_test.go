package deploy

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	"sigs.k8s.io/yaml"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/events"
)

// funcFile mirrors knative func's func.yaml schema
// (knative/func schema/func_yaml-schema.json): every property it allows and
// no other, so strict decoding rejects any key func does not know.
type funcFile struct {
	SpecVersion string      `json:"specVersion"`
	Name        string      `json:"name,omitempty"`
	Domain      string      `json:"domain,omitempty"`
	Runtime     string      `json:"runtime,omitempty"`
	Registry    string      `json:"registry,omitempty"`
	Image       string      `json:"image,omitempty"`
	Namespace   string      `json:"namespace,omitempty"`
	Created     *time.Time  `json:"created"`
	Invoke      string      `json:"invoke,omitempty"`
	Build       *funcBuild  `json:"build,omitempty"`
	Run         *funcRun    `json:"run,omitempty"`
	Deploy      *funcDeploy `json:"deploy,omitempty"`
}

type funcBuild struct {
	Git                *funcGit          `json:"git,omitempty"`
	BuilderImages      map[string]string `json:"builderImages,omitempty"`
	Buildpacks         []string          `json:"buildpacks,omitempty"`
	Builder            string            `json:"builder,omitempty"`
	BuildEnvs          []funcEnv         `json:"buildEnvs,omitempty"`
	PVCSize            string            `json:"pvcSize,omitempty"`
	RemoteStorageClass string            `json:"remoteStorageClass,omitempty"`
}

type funcGit struct {
	URL        string `json:"url,omitempty"`
	Revision   string `json:"revision,omitempty"`
	ContextDir string `json:"contextDir,omitempty"`
}

type funcEnv struct {
	Name  string `json:"name,omitempty"`
	Value string `json:"value,omitempty"`
}

type funcRun struct {
	Volumes            []funcVolume            `json:"volumes,omitempty"`
	Envs               []funcEnv               `json:"envs,omitempty"`
	PodSecurityContext *funcPodSecurityContext `json:"podSecurityContext,omitempty"`
	StartTimeout       *int64                  `json:"startTimeout,omitempty"`
}

type funcPodSecurityContext struct {
	RunAsUser    *int64 `json:"RunAsUser,omitempty"`
	RunAsGroup   *int64 `json:"RunAsGroup,omitempty"`
	RunAsNonRoot *bool  `json:"RunAsNonRoot,omitempty"`
	FSGroup      *int64 `json:"FSGroup,omitempty"`
}

type funcVolume struct {
	Secret                *string `json:"secret,omitempty"`
	ConfigMap             *string `json:"configMap,omitempty"`
	PersistentVolumeClaim *struct {
		ClaimName string `json:"claimName,omitempty"`
		ReadOnly  bool   `json:"readOnly,omitempty"`
	} `json:"persistentVolumeClaim,omitempty"`
	EmptyDir *struct {
		Medium    string `json:"medium,omitempty"`
		SizeLimit string `json:"sizeLimit,omitempty"`
	} `json:"emptyDir,omitempty"`
	Path string `json:"path,omitempty"`
}

type funcDeploy struct {
	Namespace          string             `json:"namespace,omitempty"`
	Image              string             `json:"image,omitempty"`
	Annotations        map[string]string  `json:"annotations,omitempty"`
	Options            *funcOptions       `json:"options,omitempty"`
	Labels             []funcLabel        `json:"labels,omitempty"`
	HealthEndpoints    *funcHealth        `json:"healthEndpoints,omitempty"`
	ServiceAccountName string             `json:"serviceAccountName,omitempty"`
	Subscriptions      []funcSubscription `json:"subscriptions,omitempty"`
}

type funcOptions struct {
	Scale     *funcScale     `json:"scale,omitempty"`
	Resources *funcResources `json:"resources,omitempty"`
}

type funcScale struct {
	Min         *int64   `json:"min,omitempty"`
	Max         *int64   `json:"max,omitempty"`
	Metric      *string  `json:"metric,omitempty"`
	Target      *float64 `json:"target,omitempty"`
	Utilization *float64 `json:"utilization,omitempty"`
}

type funcResources struct {
	Requests *struct {
		CPU    *string `json:"cpu,omitempty"`
		Memory *string `json:"memory,omitempty"`
	} `json:"requests,omitempty"`
	Limits *struct {
		CPU         *string `json:"cpu,omitempty"`
		Memory      *string `json:"memory,omitempty"`
		Concurrency *int64  `json:"concurrency,omitempty"`
	} `json:"limits,omitempty"`
}

type funcLabel struct {
	Key   string `json:"key"`
	Value string `json:"value,omitempty"`
}

type funcHealth struct {
	Liveness  string `json:"liveness,omitempty"`
	Readiness string `json:"readiness,omitempty"`
}

type funcSubscription struct {
	Source  string            `json:"source"`
	Filters map[string]string `json:"filters,omitempty"`
}

// The patterns and enums of the schema.
var (
	funcNameRe    = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	funcEnvNameRe = regexp.MustCompile(`^[-._a-zA-Z][-._a-zA-Z0-9]*$`)
	funcLabelKey  = regexp.MustCompile(`^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$`)
	funcLabelVal  = regexp.MustCompile(`^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$`)
	funcQuantity  = regexp.MustCompile(`^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$`)

	// func's env value templates: a whole ConfigMap or Secret, or one key.
	funcWholeConfigMap = regexp.MustCompile(`^\{\{\s*configMap:([-._a-zA-Z0-9]+)\s*\}\}$`)
	funcSecretKey      = regexp.MustCompile(`^\{\{\s*secret:([-._a-zA-Z0-9]+):([-._a-zA-Z0-9]+)\s*\}\}$`)
)

func readFuncFile(path string) (*funcFile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var f funcFile
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &f, nil
}

// schemaErrors checks what the schema requires beyond the shape.
func (f *funcFile) schemaErrors() []string {
	var errs []string
	bad := func(format string, a ...any) { errs = append(errs, fmt.Sprintf(format, a...)) }
	if f.SpecVersion == "" {
		bad("specVersion is required")
	}
	if f.Created == nil || f.Created.IsZero() {
		bad("created is required")
	}
	if f.Name != "" && !funcNameRe.MatchString(f.Name) {
		bad("name %q", f.Name)
	}
	if f.Invoke != "" && f.Invoke != "http" && f.Invoke != "cloudevent" {
		bad("invoke %q", f.Invoke)
	}
	var envs []funcEnv
	if b := f.Build; b != nil {
		if b.Builder != "" && b.Builder != "pack" && b.Builder != "s2i" {
			bad("build.builder %q", b.Builder)
		}
		envs = append(envs, b.BuildEnvs...)
	}
	if r := f.Run; r != nil {
		envs = append(envs, r.Envs...)
		for i, v := range r.Volumes {
			n := 0
			for _, set := range []bool{v.Secret != nil, v.ConfigMap != nil, v.PersistentVolumeClaim != nil, v.EmptyDir != nil} {
				if set {
					n++
				}
			}
			if n != 1 {
				bad("run.volumes[%d]: exactly one of secret, configMap, persistentVolumeClaim, emptyDir", i)
			}
		}
	}
	for _, e := range envs {
		if e.Name != "" && !funcEnvNameRe.MatchString(e.Name) {
			bad("env name %q", e.Name)
		}
	}
	d := f.Deploy
	if d == nil {
		return errs
	}
	for _, l := range d.Labels {
		if !funcLabelKey.MatchString(l.Key) || !funcLabelVal.MatchString(l.Value) {
			bad("label %s=%s", l.Key, l.Value)
		}
	}
	if o := d.Options; o != nil {
		if s := o.Scale; s != nil {
			if (s.Min != nil && *s.Min < 0) || (s.Max != nil && *s.Max < 0) || (s.Target != nil && *s.Target < 0) {
				bad("scale: negative value")
			}
			if s.Metric != nil && *s.Metric != "concurrency" && *s.Metric != "rps" {
				bad("scale.metric %q", *s.Metric)
			}
			if s.Utilization != nil && (*s.Utilization < 1 || *s.Utilization > 100) {
				bad("scale.utilization %v", *s.Utilization)
			}
		}
		if r := o.Resources; r != nil {
			var qs []*string
			if r.Requests != nil {
				qs = append(qs, r.Requests.CPU, r.Requests.Memory)
			}
			if r.Limits != nil {
				qs = append(qs, r.Limits.CPU, r.Limits.Memory)
				if r.Limits.Concurrency != nil && *r.Limits.Concurrency < 0 {
					bad("resources.limits.concurrency %d", *r.Limits.Concurrency)
				}
			}
			for _, q := range qs {
				if q != nil && !funcQuantity.MatchString(*q) {
					bad("resource quantity %q", *q)
				}
			}
		}
	}
	for i, s := range d.Subscriptions {
		if s.Source == "" {
			bad("deploy.subscriptions[%d].source is required", i)
		}
	}
	return errs
}

// TestFuncYAML: the root func.yaml (the all-in-one) and each function's
// func.yaml follow func's schema, describe the same Service as deploy/, and
// subscribe to exactly the routing-table rows of the functions they serve.
func TestFuncYAML(t *testing.T) {
	type target struct {
		file, overlay, service string
		functions              []string
	}
	tests := []target{{file: filepath.Join("..", "func.yaml"), overlay: "all-in-one", service: allInOne, functions: functionDirs(t)}}
	for _, fn := range functionDirs(t) {
		tests = append(tests, target{file: filepath.Join("..", "functions", fn, "func.yaml"), overlay: "functions", service: fn, functions: []string{fn}})
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			f, err := readFuncFile(tc.file)
			require.NoError(t, err)
			assert.Empty(t, f.schemaErrors())
			assert.Equal(t, tc.service, f.Name, "name")
			assert.Equal(t, "go", f.Runtime, "runtime")
			var svc *servingv1.Service
			for _, s := range all[*servingv1.Service](loadOverlay(t, overlayNamed(t, tc.overlay))) {
				if s.Name == tc.service {
					svc = s
				}
			}
			require.NotNil(t, svc, "no Knative Service %s in overlays/%s", tc.service, tc.overlay)
			require.NotNil(t, f.Deploy, "no deploy section")
			checkFuncAgainstService(t, f, svc)

			// Subscriptions: one per routing-table row, on the Broker.
			want := map[string]bool{}
			for _, r := range events.Routes {
				for _, fn := range tc.functions {
					if r.Function == fn {
						want[r.Type+" "+r.Source] = true
					}
				}
			}
			got := map[string]bool{}
			for _, s := range f.Deploy.Subscriptions {
				assert.Equal(t, broker, s.Source, "subscription source: the Broker")
				for k := range s.Filters {
					assert.Contains(t, []string{"type", "source"}, k, "subscription filters on %q", k)
				}
				key := s.Filters["type"] + " " + s.Filters["source"]
				assert.False(t, got[key], "subscription %s twice", key)
				got[key] = true
				assert.True(t, want[key], "subscription %s is not in the routing table for %v", key, tc.functions)
			}
			for k := range want {
				assert.True(t, got[k], "missing subscription %s", k)
			}
		})
	}
}

// funcRevisionTimeout is Knative's default revision-timeout-seconds, which
// a Service deployed by func gets: func's schema has no timeoutSeconds, and
// the Triggers it makes carry no delivery.timeout.
const funcRevisionTimeout = 300 * time.Second

// funcJobTimeouts are the only literal run.envs a func.yaml carries, by
// Service, and each must be there: the job timeouts, set below
// funcRevisionTimeout so a job deployed by func ends before its delivery
// is cut. The kustomize Services leave them at their defaults, which fit
// their timeoutSeconds of 600.
var funcJobTimeouts = map[string][]string{
	"snapshot": {"SNAPSHOT_JOB_TIMEOUT"},
	"restore":  {"RESTORE_JOB_TIMEOUT"},
	allInOne:   {"SNAPSHOT_JOB_TIMEOUT", "RESTORE_JOB_TIMEOUT"},
}

// checkFuncAgainstService: what func.yaml deploys is what the manifests
// deploy, except the variables and volumes only the manifests may carry:
// StreamSpace's JWT secret file (never in func.yaml) and the event-auth
// component's settings.
func checkFuncAgainstService(t *testing.T, f *funcFile, svc *servingv1.Service) {
	t.Helper()
	d := f.Deploy
	spec := svc.Spec.Template.Spec
	c := spec.Containers[0]
	assert.Equal(t, svc.Namespace, d.Namespace, "deploy.namespace")
	assert.Equal(t, spec.ServiceAccountName, d.ServiceAccountName, "deploy.serviceAccountName")
	labels := map[string]string{}
	for _, l := range d.Labels {
		labels[l.Key] = l.Value
	}
	assert.Equal(t, map[string]string(svc.Labels), labels, "deploy.labels: the Service's")
	h := d.HealthEndpoints
	assert.True(t, h != nil && c.ReadinessProbe != nil && c.LivenessProbe != nil &&
		h.Readiness == c.ReadinessProbe.HTTPGet.Path && h.Liveness == c.LivenessProbe.HTTPGet.Path,
		"deploy.healthEndpoints %+v, want the Service's probe paths", h)

	// Scale options are the autoscaling annotations.
	ann := svc.Spec.Template.Annotations
	var s funcScale
	if d.Options != nil && d.Options.Scale != nil {
		s = *d.Options.Scale
	}
	num := func(p *int64) string {
		if p == nil {
			return ""
		}
		return strconv.FormatInt(*p, 10)
	}
	str := func(p *string) string {
		if p == nil {
			return ""
		}
		return *p
	}
	flt := func(p *float64) string {
		if p == nil {
			return ""
		}
		return strconv.FormatFloat(*p, 'f', -1, 64)
	}
	for k, v := range map[string]string{
		"autoscaling.knative.dev/min-scale":                     num(s.Min),
		"autoscaling.knative.dev/max-scale":                     num(s.Max),
		"autoscaling.knative.dev/metric":                        str(s.Metric),
		"autoscaling.knative.dev/target":                        flt(s.Target),
		"autoscaling.knative.dev/target-utilization-percentage": flt(s.Utilization),
	} {
		assert.Equal(t, ann[k], v, "deploy.options.scale for %s", k)
	}

	// Resources.
	require.NotNil(t, d.Options)
	r := d.Options.Resources
	require.True(t, r != nil && r.Requests != nil && r.Limits != nil, "deploy.options.resources: requests and limits required")
	quantities := []struct {
		name string
		got  *string
		want corev1.ResourceList
		res  corev1.ResourceName
	}{
		{"requests.cpu", r.Requests.CPU, c.Resources.Requests, corev1.ResourceCPU},
		{"requests.memory", r.Requests.Memory, c.Resources.Requests, corev1.ResourceMemory},
		{"limits.cpu", r.Limits.CPU, c.Resources.Limits, corev1.ResourceCPU},
		{"limits.memory", r.Limits.Memory, c.Resources.Limits, corev1.ResourceMemory},
	}
	for _, q := range quantities {
		w := q.want[q.res]
		if !assert.NotNil(t, q.got, "deploy.options.resources.%s missing", q.name) {
			continue
		}
		g, err := resource.ParseQuantity(*q.got)
		assert.True(t, err == nil && g.Cmp(w) == 0, "deploy.options.resources.%s %q, the Service has %s", q.name, *q.got, w.String())
	}
	cc := r.Limits.Concurrency
	assert.True(t, (cc == nil) == (spec.ContainerConcurrency == nil) && (cc == nil || *cc == *spec.ContainerConcurrency),
		"deploy.options.resources.limits.concurrency differs from the Service's containerConcurrency")

	// Environment: func's templates become the Service's env and envFrom.
	var env, timeouts []string
	for _, e := range f.Run.Envs {
		switch {
		case slices.Contains(funcJobTimeouts[f.Name], e.Name):
			timeouts = append(timeouts, e.Name)
			d, err := time.ParseDuration(e.Value)
			assert.NoError(t, err, "run.envs: %s", e.Name)
			assert.True(t, d > 0 && d < funcRevisionTimeout, "run.envs: %s=%s: want below Knative's default revision timeout, %s", e.Name, e.Value, funcRevisionTimeout)
		case e.Name == "" && funcWholeConfigMap.MatchString(e.Value):
			env = append(env, "envFrom configMap "+funcWholeConfigMap.FindStringSubmatch(e.Value)[1])
		case e.Name != "" && funcSecretKey.MatchString(e.Value):
			m := funcSecretKey.FindStringSubmatch(e.Value)
			assert.NotEqual(t, jwtSecretName, m[1], "run.envs: %s: StreamSpace's JWT secret never goes in func.yaml", e.Name)
			env = append(env, "env "+e.Name+" secret "+m[1]+" "+m[2])
		default:
			assert.Failf(t, "run.envs", "%s=%q: use the shared ConfigMap or a Secret key", e.Name, e.Value)
		}
	}
	for _, v := range f.Run.Volumes {
		assert.True(t, v.Secret == nil || *v.Secret != jwtSecretName, "run.volumes: StreamSpace's JWT secret never goes in func.yaml")
	}
	var want []string
	for _, e := range c.EnvFrom {
		if e.ConfigMapRef != nil {
			want = append(want, "envFrom configMap "+e.ConfigMapRef.Name)
		}
	}
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			want = append(want, "env "+e.Name+" secret "+e.ValueFrom.SecretKeyRef.Name+" "+e.ValueFrom.SecretKeyRef.Key)
		}
	}
	sort.Strings(env)
	sort.Strings(want)
	assert.Equal(t, want, env, "run.envs against the Service's env")
	assert.ElementsMatch(t, funcJobTimeouts[f.Name], timeouts, "run.envs: the job timeouts under func's revision timeout")
}

// TestFuncYAMLStrict proves unknown keys are refused and missing required
// ones reported.
func TestFuncYAMLStrict(t *testing.T) {
	tests := []struct {
		name, doc  string
		wantDecode bool
		wantErrors int
	}{
		{name: "unknown top-level key", doc: "specVersion: 0.36.0\ncreated: \"2026-01-01T00:00:00Z\"\nname: x\nscale: {min: 0}\n"},
		{name: "misspelt subscription key", doc: "specVersion: 0.36.0\ncreated: \"2026-01-01T00:00:00Z\"\ndeploy: {subscriptions: [{source: default, filter: {type: a}}]}\n"},
		{name: "misspelt run key", doc: "specVersion: 0.36.0\ncreated: \"2026-01-01T00:00:00Z\"\nrun: {env: []}\n"},
		{name: "specVersion and created missing", doc: "name: x\n", wantDecode: true, wantErrors: 2},
	}
	dir := t.TempDir()
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, strconv.Itoa(i)+".yaml")
			require.NoError(t, os.WriteFile(p, []byte(tc.doc), 0o644))
			f, err := readFuncFile(p)
			if !tc.wantDecode {
				assert.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.Len(t, f.schemaErrors(), tc.wantErrors, "%v", f.schemaErrors())
		})
	}
}
