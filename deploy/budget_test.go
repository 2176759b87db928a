package deploy

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const (
	// budgetAnnotation on the ConfigMap streamspace-functions states the
	// connection budget: the PostgreSQL connections all the functions
	// together may hold (deploy/base/config.yaml).
	budgetAnnotation = "streamspace.io/database-connection-budget"
	budgetFile       = "base/config.yaml"
	maxScaleKey      = "autoscaling.knative.dev/max-scale"
	poolMaxEnv       = "DATABASE_POOL_MAX"
	statementEnv     = "DATABASE_STATEMENT_TIMEOUT"

	functionsPolicy = "functions-ingress"
	metricsPolicy   = "functions-metrics"
	pgbouncerPolicy = "pgbouncer-ingress"
	pgbouncerName   = "pgbouncer"
	pgbouncerIni    = "pgbouncer.ini"
	pgbouncerComp   = "connection-pooler"
	// The Secret key PgBouncer reads its users from, and where.
	userlistKey = "userlist.txt"

	// pgbouncerLine is the commented component entry of the functions and
	// all-in-one overlays; turning PgBouncer on is uncommenting it.
	pgbouncerLine = "  # - ../../components/pgbouncer\n"
	// pgbouncerRoot is where withPgBouncer puts its copy of deploy/.
	pgbouncerRoot = "/deploy"
)

var (
	pgbouncerFSOnce sync.Once
	pgbouncerFS     filesys.FileSystem
	pgbouncerFSErr  error
)

// withPgBouncer is an in-memory copy of deploy/ with PgBouncer turned on the
// way docs/deploy.md tells an operator: the commented component line of the
// functions and all-in-one overlays uncommented (the ingress overlays build
// on them). Both must carry the line exactly once, and nothing else may.
func withPgBouncer(t *testing.T) filesys.FileSystem {
	t.Helper()
	pgbouncerFSOnce.Do(func() { pgbouncerFS, pgbouncerFSErr = newPgBouncerFS() })
	require.NoError(t, pgbouncerFSErr)
	return pgbouncerFS
}

func newPgBouncerFS() (filesys.FileSystem, error) {
	mem := filesys.MakeFsInMemory()
	var turnedOn []string
	err := filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasSuffix(p, ".go") {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if n := strings.Count(string(data), pgbouncerLine); n > 0 {
			if n > 1 {
				return fmt.Errorf("%s: the PgBouncer component line %d times", p, n)
			}
			data = []byte(strings.Replace(string(data), pgbouncerLine, strings.Replace(pgbouncerLine, "# ", "", 1), 1))
			turnedOn = append(turnedOn, p)
		}
		return mem.WriteFile(filepath.Join(pgbouncerRoot, p), data)
	})
	if err != nil {
		return nil, err
	}
	slices.Sort(turnedOn)
	if want := []string{"overlays/all-in-one/kustomization.yaml", "overlays/functions/kustomization.yaml"}; !slices.Equal(turnedOn, want) {
		return nil, fmt.Errorf("the commented line %q is in %v, want exactly %v", pgbouncerLine, turnedOn, want)
	}
	return mem, nil
}

// serviceShare is one function Service's share of the connections: every
// instance may fill its pool. An instance holds one pool, the all-in-one's
// too: its functions share the one it opens (service.WithPool).
type serviceShare struct {
	name              string
	maxScale, poolMax int
	pooled            bool // DATABASE_URL goes through PgBouncer
}

// connections is the most the Service's instances may hold together.
func (s serviceShare) connections() int { return s.maxScale * s.poolMax }

// poolerLoad is what PgBouncer may open to PostgreSQL and accept.
type poolerLoad struct {
	pods          int // replicas, plus surge pods during a rollout
	perPod        int // server connections one pod may open, over all databases
	maxClientConn int // client connections one pod accepts
}

// connectionLoad is how many PostgreSQL connections an overlay's functions
// may open at once.
type connectionLoad struct {
	budget   int
	services []serviceShare
	direct   int // Σ max-scale × pool max of the Services that bypass PgBouncer
	pooled   int // the same for the Services that go through PgBouncer
	pooler   *poolerLoad
	server   int // what PostgreSQL may see from the functions
}

// measureConnections adds up the PostgreSQL connections the objects of an
// overlay may open. Without PgBouncer that is Σ max-scale ×
// DATABASE_POOL_MAX over the function Services; with it, PgBouncer's server pool
// (pods × max_db_connections over its databases) plus any Service still
// going direct, while the pooled Services' Σ must fit one pod's max_client_conn. It
// returns an error naming every problem: a value missing, unbounded or
// unreadable, or the total over the budget.
func measureConnections(objs []object) (connectionLoad, error) {
	var load connectionLoad
	var errs []error
	fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	cms := map[string]*corev1.ConfigMap{}
	for _, o := range objs {
		if cm, ok := o.obj.(*corev1.ConfigMap); ok {
			cms[cm.Name] = cm
		}
	}
	if cm := cms[configMapName]; cm == nil {
		fail("no ConfigMap %s, which states the connection budget", configMapName)
	} else if v, ok := cm.Annotations[budgetAnnotation]; !ok {
		fail("ConfigMap %s: no annotation %s: the connection budget is not stated", configMapName, budgetAnnotation)
	} else if n, err := strconv.Atoi(v); err != nil || n <= 0 {
		fail("ConfigMap %s: %s %q is not a positive number", configMapName, budgetAnnotation, v)
	} else {
		load.budget = n
	}

	for _, o := range objs {
		s, ok := o.obj.(*servingv1.Service)
		if !ok || len(s.Spec.Template.Spec.Containers) == 0 {
			continue
		}
		c := s.Spec.Template.Spec.Containers[0]
		key, usesDB := databaseURLKey(c)
		if s.Labels[componentLabel] != functionComp && !usesDB {
			continue // the dead-letter sink opens no connection
		}
		share := serviceShare{name: s.Name, pooled: key == pooledDatabaseKey}
		if !usesDB {
			fail("Service %s: DATABASE_URL does not come from Secret %s", s.Name, databaseSecret)
		}
		if v, ok := s.Spec.Template.Annotations[maxScaleKey]; !ok {
			fail("Service %s: no %s, so its instances and their pools are unbounded", s.Name, maxScaleKey)
		} else if n, err := strconv.Atoi(v); err != nil || n <= 0 {
			fail("Service %s: %s %q is not a positive number (0 is unbounded)", s.Name, maxScaleKey, v)
		} else {
			share.maxScale = n
		}
		if v, ok := containerEnv(c, cms, poolMaxEnv); !ok {
			fail("Service %s: %s is not set, neither in its env nor in its ConfigMaps", s.Name, poolMaxEnv)
		} else if n, err := strconv.Atoi(v); err != nil || n <= 0 {
			fail("Service %s: %s %q is not a positive number", s.Name, poolMaxEnv, v)
		} else {
			share.poolMax = n
		}
		load.services = append(load.services, share)
		if share.pooled {
			load.pooled += share.connections()
		} else {
			load.direct += share.connections()
		}
	}
	if len(load.services) == 0 {
		fail("no function Service")
	}
	slices.SortFunc(load.services, func(a, b serviceShare) int { return strings.Compare(a.name, b.name) })

	pooler, err := measurePooler(objs, cms)
	if err != nil {
		errs = append(errs, err)
	}
	load.pooler = pooler
	load.server = load.direct
	switch {
	case pooler != nil:
		load.server += pooler.pods * pooler.perPod
		if load.pooled > pooler.maxClientConn {
			fail("PgBouncer: the Services through it may open %d client connections, more than max_client_conn %d of one pod", load.pooled, pooler.maxClientConn)
		}
	case load.pooled > 0 && err == nil:
		fail("%d client connections go to %s, but no PgBouncer is deployed", load.pooled, pooledDatabaseKey)
	}
	if load.budget > 0 && load.server > load.budget {
		fail("the functions may open %d PostgreSQL connections, over the budget of %d (%s)", load.server, load.budget, load.describe())
	}
	return load, errors.Join(errs...)
}

// describe spells out the sum, for messages and logs.
func (l connectionLoad) describe() string {
	var parts []string
	for _, s := range l.services {
		via := "direct"
		if s.pooled {
			via = "through PgBouncer"
		}
		parts = append(parts, fmt.Sprintf("%s %d×%d %s", s.name, s.maxScale, s.poolMax, via))
	}
	out := strings.Join(parts, ", ")
	if l.pooler != nil {
		out += fmt.Sprintf("; PgBouncer %d pods × %d server connections, max_client_conn %d", l.pooler.pods, l.pooler.perPod, l.pooler.maxClientConn)
	}
	return out
}

// measurePooler reads the PgBouncer Deployment and its pgbouncer.ini; nil
// when there is none.
func measurePooler(objs []object, cms map[string]*corev1.ConfigMap) (*poolerLoad, error) {
	var d *appsv1.Deployment
	for _, o := range objs {
		if dep, ok := o.obj.(*appsv1.Deployment); ok && dep.Name == pgbouncerName {
			d = dep
		}
	}
	if d == nil {
		return nil, nil
	}
	p := &poolerLoad{pods: 1}
	if d.Spec.Replicas != nil {
		p.pods = int(*d.Spec.Replicas)
	}
	// A rolling update adds surge pods, each with a pool of its own; the
	// Kubernetes default is 25%, rounded up.
	if d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
		surge := intstr.FromString("25%")
		if ru := d.Spec.Strategy.RollingUpdate; ru != nil && ru.MaxSurge != nil {
			surge = *ru.MaxSurge
		}
		n, err := intstr.GetScaledValueFromIntOrPercent(&surge, p.pods, true)
		if err != nil {
			return nil, fmt.Errorf("Deployment %s: maxSurge: %w", d.Name, err)
		}
		p.pods += n
	}
	ini, err := pgbouncerConfig(d, cms)
	if err != nil {
		return nil, err
	}
	var errs []error
	fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf("PgBouncer: "+format, args...)) }
	global := ini["pgbouncer"]
	if mode := global["pool_mode"]; mode != "transaction" {
		fail("pool_mode %q, want transaction", mode)
	}
	number := func(params map[string]string, key string) (int, bool) {
		v, ok := params[key]
		if !ok {
			return 0, false
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			fail("%s %q is not a number", key, v)
			return 0, false
		}
		return n, true
	}
	if n, ok := number(global, "max_client_conn"); !ok || n == 0 {
		fail("max_client_conn must be set")
	} else {
		p.maxClientConn = n
	}
	defaultPool, ok := number(global, "default_pool_size")
	if !ok || defaultPool == 0 {
		fail("default_pool_size must be set")
	}
	dbCap, _ := number(global, "max_db_connections")
	if len(ini["databases"]) == 0 {
		fail("no [databases] entry")
	}
	for db, connstr := range ini["databases"] {
		if db == "*" {
			fail("the fallback database * admits any database name, each with a pool of its own: name each database")
			continue
		}
		params := map[string]string{}
		for _, f := range strings.Fields(connstr) {
			if k, v, ok := strings.Cut(f, "="); ok {
				params[k] = v
			}
		}
		capacity := dbCap
		if n, ok := number(params, "max_db_connections"); ok {
			capacity = n
		}
		pool := defaultPool
		if n, ok := number(params, "pool_size"); ok {
			pool = n
		}
		// A pool exists per database and user; only max_db_connections
		// bounds a database however many users the userlist holds.
		if capacity == 0 {
			fail("database %s: max_db_connections is unset (unbounded): set it to default_pool_size", db)
			continue
		}
		if pool > capacity {
			fail("database %s: pool size %d above max_db_connections %d", db, pool, capacity)
		}
		p.perPod += capacity
	}
	return p, errors.Join(errs...)
}

// pgbouncerConfig parses the pgbouncer.ini the Deployment mounts.
func pgbouncerConfig(d *appsv1.Deployment, cms map[string]*corev1.ConfigMap) (map[string]map[string]string, error) {
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.ConfigMap == nil {
			continue
		}
		cm := cms[v.ConfigMap.Name]
		if cm == nil {
			return nil, fmt.Errorf("Deployment %s: ConfigMap %s is not in the overlay", d.Name, v.ConfigMap.Name)
		}
		if text, ok := cm.Data[pgbouncerIni]; ok {
			return parseIni(text)
		}
	}
	return nil, fmt.Errorf("Deployment %s mounts no ConfigMap with %s", d.Name, pgbouncerIni)
}

// parseIni reads PgBouncer's ini format: [sections] of key = value, `;` and
// `#` comments, empty values allowed, keys case-insensitive.
func parseIni(text string) (map[string]map[string]string, error) {
	out := map[string]map[string]string{}
	section := ""
	sc := bufio.NewScanner(strings.NewReader(text))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || line[0] == ';' || line[0] == '#':
		case line[0] == '[' && line[len(line)-1] == ']':
			section = strings.ToLower(strings.TrimSpace(line[1 : len(line)-1]))
			if out[section] == nil {
				out[section] = map[string]string{}
			}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				return nil, fmt.Errorf("%s line %d: %q", pgbouncerIni, n, line)
			}
			k = strings.ToLower(strings.TrimSpace(k))
			if _, dup := out[section][k]; dup {
				return nil, fmt.Errorf("%s line %d: %s set twice in [%s]", pgbouncerIni, n, k, section)
			}
			out[section][k] = strings.TrimSpace(v)
		}
	}
	return out, sc.Err()
}

// databaseURLKey is the key of Secret streamspace-database the container's
// DATABASE_URL comes from.
func databaseURLKey(c corev1.Container) (string, bool) {
	for _, e := range c.Env {
		if e.Name == "DATABASE_URL" && e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil && e.ValueFrom.SecretKeyRef.Name == databaseSecret {
			return e.ValueFrom.SecretKeyRef.Key, true
		}
	}
	return "", false
}

// containerEnv is the value a variable has in the container, as the kubelet
// resolves it: env over envFrom, a later envFrom source over an earlier one.
func containerEnv(c corev1.Container, cms map[string]*corev1.ConfigMap, name string) (string, bool) {
	for _, e := range c.Env {
		if e.Name != name {
			continue
		}
		if e.ValueFrom == nil {
			return e.Value, true
		}
		if ref := e.ValueFrom.ConfigMapKeyRef; ref != nil && cms[ref.Name] != nil {
			v, ok := cms[ref.Name].Data[ref.Key]
			return v, ok
		}
		return "", false
	}
	value, found := "", false
	for _, src := range c.EnvFrom {
		if src.ConfigMapRef == nil || cms[src.ConfigMapRef.Name] == nil {
			continue
		}
		if v, ok := cms[src.ConfigMapRef.Name].Data[strings.TrimPrefix(name, src.Prefix)]; ok && strings.HasPrefix(name, src.Prefix) {
			value, found = v, true
		}
	}
	return value, found
}

// TestConnectionBudget: in every overlay, with and without PgBouncer, every
// function Service bounds its instances and their pools, and what PostgreSQL
// may see from the functions fits the budget.
func TestConnectionBudget(t *testing.T) {
	for _, ov := range overlays {
		t.Run(ov.name, func(t *testing.T) {
			b := loadOverlay(t, ov)
			load, err := measureConnections(b.objects)
			require.NoError(t, err)
			t.Logf("budget %d, PostgreSQL connections %d: %s", load.budget, load.server, load.describe())
			assert.LessOrEqual(t, load.server, load.budget)
			assert.Len(t, load.services, len(functionServices(b)), "every function Service counted")
			if ov.pgbouncer {
				require.NotNil(t, load.pooler, "PgBouncer")
				assert.Zero(t, load.direct, "a function Service bypasses PgBouncer")
				assert.LessOrEqual(t, load.pooled, load.pooler.maxClientConn)
			} else {
				assert.Nil(t, load.pooler, "PgBouncer without its component")
				assert.Zero(t, load.pooled)
			}
		})
	}
}

// TestConnectionBudgetRefuses: the sum fails on every way an overlay can
// outgrow the budget or leave a bound out.
func TestConnectionBudgetRefuses(t *testing.T) {
	service := func(objs []object, name string) *servingv1.Service {
		for _, o := range objs {
			if s, ok := o.obj.(*servingv1.Service); ok && s.Name == name {
				return s
			}
		}
		require.FailNow(t, "no Service "+name)
		return nil
	}
	configMap := func(objs []object, prefix string) *corev1.ConfigMap {
		for _, o := range objs {
			if cm, ok := o.obj.(*corev1.ConfigMap); ok && strings.HasPrefix(cm.Name, prefix) {
				return cm
			}
		}
		require.FailNow(t, "no ConfigMap "+prefix)
		return nil
	}
	deployment := func(objs []object) *appsv1.Deployment {
		for _, o := range objs {
			if d, ok := o.obj.(*appsv1.Deployment); ok {
				return d
			}
		}
		require.FailNow(t, "no Deployment")
		return nil
	}
	editIni := func(objs []object, old, new string) {
		cm := configMap(objs, pgbouncerName+"-")
		require.Contains(t, cm.Data[pgbouncerIni], old)
		cm.Data[pgbouncerIni] = strings.Replace(cm.Data[pgbouncerIni], old, new, 1)
	}
	tests := []struct {
		name    string
		overlay string
		change  func(objs []object)
		want    string
	}{
		{"no budget", "functions", func(objs []object) {
			delete(configMap(objs, configMapName).Annotations, budgetAnnotation)
		}, "the connection budget is not stated"},
		{"a Service without max-scale", "functions", func(objs []object) {
			delete(service(objs, "tags").Spec.Template.Annotations, maxScaleKey)
		}, "Service tags: no " + maxScaleKey},
		{"an unbounded max-scale", "all-in-one", func(objs []object) {
			service(objs, allInOne).Spec.Template.Annotations[maxScaleKey] = "0"
		}, "is not a positive number (0 is unbounded)"},
		{"no pool max anywhere", "functions", func(objs []object) {
			delete(configMap(objs, configMapName).Data, poolMaxEnv)
		}, "Service sharing: DATABASE_POOL_MAX is not set"},
		{"max-scale over the budget", "all-in-one", func(objs []object) {
			service(objs, allInOne).Spec.Template.Annotations[maxScaleKey] = "12"
		}, "48 PostgreSQL connections, over the budget of 40 (streamspace 12×4 direct)"},
		{"one Service's own pool over the budget", "ingress", func(objs []object) {
			c := &service(objs, "versioning").Spec.Template.Spec.Containers[0]
			c.Env = append(c.Env, corev1.EnvVar{Name: poolMaxEnv, Value: "8"})
		}, "over the budget of 40 (auth 2×2 direct, autoscale 1×2 direct, mailtest 1×2 direct, restore 1×1 direct, sharing 2×4 direct, snapshot 1×2 direct, tags 3×4 direct, versioning 2×8 direct)"},
		{"a budget lowered below the sum", "functions", func(objs []object) {
			configMap(objs, configMapName).Annotations[budgetAnnotation] = "30"
		}, "39 PostgreSQL connections, over the budget of 30"},
		{"more PgBouncer pods", "functions+pgbouncer", func(objs []object) {
			three := int32(3)
			deployment(objs).Spec.Replicas = &three
		}, "60 PostgreSQL connections, over the budget of 40"},
		{"a surge pod during a rollout", "all-in-one+pgbouncer", func(objs []object) {
			one := intstr.FromInt32(1)
			deployment(objs).Spec.Strategy.RollingUpdate.MaxSurge = &one
		}, "PgBouncer 3 pods × 20 server connections"},
		{"a bigger server pool", "ingress+pgbouncer", func(objs []object) {
			editIni(objs, "max_db_connections = 20", "max_db_connections = 25")
			editIni(objs, "default_pool_size = 20", "default_pool_size = 25")
		}, "50 PostgreSQL connections, over the budget of 40"},
		{"no max_db_connections", "functions+pgbouncer", func(objs []object) {
			editIni(objs, "max_db_connections = 20", "")
		}, "database streamspace: max_db_connections is unset (unbounded)"},
		{"a fallback database", "functions+pgbouncer", func(objs []object) {
			editIni(objs, "[pgbouncer]", "* = host=elsewhere\n[pgbouncer]")
		}, "the fallback database *"},
		{"session pooling", "functions+pgbouncer", func(objs []object) {
			editIni(objs, "pool_mode = transaction", "pool_mode = session")
		}, `pool_mode "session", want transaction`},
		{"more clients than max_client_conn", "all-in-one-ingress+pgbouncer", func(objs []object) {
			editIni(objs, "max_client_conn = 200", "max_client_conn = 10")
		}, "may open 20 client connections, more than max_client_conn 10"},
		{"a Service going direct beside PgBouncer", "functions+pgbouncer", func(objs []object) {
			service(objs, "tags").Spec.Template.Spec.Containers[0].Env[0].ValueFrom.SecretKeyRef.Key = databaseKey
		}, "52 PostgreSQL connections, over the budget of 40"},
		{"pooled without PgBouncer", "functions", func(objs []object) {
			service(objs, "tags").Spec.Template.Spec.Containers[0].Env[0].ValueFrom.SecretKeyRef.Key = pooledDatabaseKey
		}, "but no PgBouncer is deployed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := loadOverlay(t, overlayNamed(t, tc.overlay))
			_, err := measureConnections(b.objects)
			require.NoError(t, err, "unchanged overlay")
			objs := make([]object, len(b.objects))
			for i, o := range b.objects {
				c, err := decodeCopy(o)
				require.NoError(t, err)
				objs[i] = o
				objs[i].obj = c
			}
			tc.change(objs)
			_, err = measureConnections(objs)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

// budgetQuote is how the README and docs/deploy.md quote the budget.
var budgetQuote = regexp.MustCompile(regexp.QuoteMeta(budgetAnnotation) + `: "?(\d+)"?`)

// TestBudgetStatedOnce: the budget is stated in deploy/base/config.yaml and
// nowhere else under deploy/, every overlay carries it once, and where the
// README and docs/deploy.md quote it they quote that number.
func TestBudgetStatedOnce(t *testing.T) {
	var files []string
	require.NoError(t, filepath.WalkDir(".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasSuffix(p, ".go") {
			return err
		}
		data, err := os.ReadFile(p)
		if err == nil && strings.Contains(string(data), budgetAnnotation) {
			files = append(files, p)
		}
		return err
	}))
	require.Equal(t, []string{budgetFile}, files, "files under deploy/ stating the budget")

	b := loadOverlay(t, overlayNamed(t, "functions"))
	load, err := measureConnections(b.objects)
	require.NoError(t, err)

	tests := []struct {
		name, file string
	}{
		{"README", "../README.md"},
		{"docs/deploy.md", "../docs/deploy.md"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			data, err := os.ReadFile(tc.file)
			require.NoError(t, err)
			quotes := budgetQuote.FindAllStringSubmatch(string(data), -1)
			require.NotEmpty(t, quotes, "%s does not quote %s", tc.file, budgetAnnotation)
			for _, q := range quotes {
				assert.Equal(t, strconv.Itoa(load.budget), q[1], "%s quotes %s", tc.file, q[0])
			}
		})
	}
	for _, ov := range overlays {
		t.Run(ov.name, func(t *testing.T) {
			n := 0
			for _, o := range loadOverlay(t, ov).objects {
				if strings.Contains(string(o.doc), budgetAnnotation) {
					n++
				}
			}
			assert.Equal(t, 1, n, "objects stating the budget")
		})
	}
}

// TestPgBouncer: the component's Deployment, Service, NetworkPolicy and
// pgbouncer.ini fit together and keep to transaction pooling; the function
// Services go through it and the migration Job, unchanged, does not.
func TestPgBouncer(t *testing.T) {
	for _, ov := range overlays {
		if !ov.pgbouncer {
			continue
		}
		t.Run(ov.name, func(t *testing.T) {
			b := loadOverlay(t, ov)
			direct := loadOverlay(t, overlayNamed(t, ov.folder()))

			// The Job is exactly as without the component.
			jobDoc := func(b *build) string {
				for _, o := range b.objects {
					if o.kind == "Job" {
						return string(o.doc)
					}
				}
				return ""
			}
			require.NotEmpty(t, jobDoc(b))
			assert.Equal(t, jobDoc(direct), jobDoc(b), "the PgBouncer component changes the migration Job")
			for name, s := range functionServices(b) {
				assert.True(t, hasDatabaseURL(s.Spec.Template.Spec.Containers[0], pooledDatabaseKey), "Service %s: DATABASE_URL from key %s", name, pooledDatabaseKey)
			}

			var d *appsv1.Deployment
			for _, dep := range all[*appsv1.Deployment](b) {
				d = dep
			}
			require.NotNil(t, d)
			require.Equal(t, pgbouncerName, d.Name)
			cms := map[string]*corev1.ConfigMap{}
			for _, cm := range all[*corev1.ConfigMap](b) {
				cms[cm.Name] = cm
			}
			ini, err := pgbouncerConfig(d, cms)
			require.NoError(t, err)
			global := ini["pgbouncer"]
			for k, want := range map[string]string{
				"pool_mode":                 "transaction",
				"server_reset_query":        "", // never run in transaction mode
				"server_reset_query_always": "0",
				"unix_socket_dir":           "", // read-only root filesystem
				"min_pool_size":             "0",
				"reserve_pool_size":         "0",
			} {
				v, ok := global[k]
				assert.True(t, ok && v == want, "%s = %q, want %q", k, v, want)
			}
			assert.Contains(t, strings.Split(strings.ReplaceAll(global["ignore_startup_parameters"], " ", ""), ","), "extra_float_digits")
			assert.NotContains(t, []string{"", "trust", "any", "plain"}, global["auth_type"], "auth_type: the functions must present the password")
			assert.Equal(t, global["default_pool_size"], global["max_db_connections"], "max_db_connections holds the pool size for any number of users")

			// query_timeout is a backstop behind the functions' statement
			// timeout, never in front of it.
			queryTimeout, err := strconv.Atoi(global["query_timeout"])
			require.NoError(t, err, "query_timeout")
			statement, err := time.ParseDuration(cms[configMapName].Data[statementEnv])
			require.NoError(t, err, statementEnv)
			assert.Greater(t, time.Duration(queryTimeout)*time.Second, statement, "query_timeout against %s", statementEnv)
			wait, err := strconv.Atoi(global["query_wait_timeout"])
			require.NoError(t, err, "query_wait_timeout")
			assert.Positive(t, wait, "query_wait_timeout: 0 lets a client wait for ever")

			// The pod: its port, and its files from the ConfigMap and the
			// one key of the database Secret.
			spec := d.Spec.Template.Spec
			require.Len(t, spec.Containers, 1)
			c := spec.Containers[0]
			require.Len(t, c.Ports, 1)
			listen, err := strconv.Atoi(global["listen_port"])
			require.NoError(t, err)
			assert.Equal(t, int32(listen), c.Ports[0].ContainerPort, "listen_port")
			mounts := map[string]corev1.VolumeMount{}
			for _, m := range c.VolumeMounts {
				assert.True(t, m.ReadOnly, "mount %s read-only", m.Name)
				mounts[m.Name] = m
			}
			var sawSecret bool
			for _, v := range spec.Volumes {
				m, ok := mounts[v.Name]
				require.True(t, ok, "volume %s not mounted", v.Name)
				switch {
				case v.ConfigMap != nil:
					assert.Equal(t, "/etc/pgbouncer", m.MountPath, "the image runs pgbouncer on /etc/pgbouncer/%s", pgbouncerIni)
				case v.Secret != nil:
					sawSecret = true
					assert.Equal(t, databaseSecret, v.Secret.SecretName)
					require.Len(t, v.Secret.Items, 1, "only the key %s", userlistKey)
					assert.Equal(t, userlistKey, v.Secret.Items[0].Key)
					assert.Equal(t, filepath.Join(m.MountPath, v.Secret.Items[0].Path), global["auth_file"], "auth_file")
				default:
					assert.Fail(t, "unexpected volume", v.Name)
				}
			}
			assert.True(t, sawSecret, "no userlist from Secret %s", databaseSecret)
			assert.Empty(t, c.Env, "configuration is pgbouncer.ini")
			assert.Empty(t, c.EnvFrom, "configuration is pgbouncer.ini")
			pods := labels.Set(d.Spec.Template.Labels)
			sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
			require.NoError(t, err)
			assert.True(t, sel.Matches(pods), "Deployment selector")

			// The Service sends PostgreSQL's port to it.
			var svc *corev1.Service
			for _, s := range all[*corev1.Service](b) {
				if s.Name == pgbouncerName {
					svc = s
				}
			}
			require.NotNil(t, svc, "Service %s", pgbouncerName)
			assert.Contains(t, []corev1.ServiceType{"", corev1.ServiceTypeClusterIP}, svc.Spec.Type)
			assert.True(t, len(svc.Spec.Selector) > 0 && labels.SelectorFromSet(svc.Spec.Selector).Matches(pods), "Service %s selects the PgBouncer pods", svc.Name)
			require.Len(t, svc.Spec.Ports, 1)
			assert.Equal(t, int32(5432), svc.Spec.Ports[0].Port)
			assert.Equal(t, c.Ports[0].Name, svc.Spec.Ports[0].TargetPort.StrVal)

			// Only function pods may connect.
			var np bool
			for _, p := range all[*networkingv1.NetworkPolicy](b) {
				if p.Name != pgbouncerPolicy {
					continue
				}
				np = true
				sel, err := metav1.LabelSelectorAsSelector(&p.Spec.PodSelector)
				require.NoError(t, err)
				assert.True(t, sel.Matches(pods), "NetworkPolicy %s selects the PgBouncer pods", p.Name)
				require.Len(t, p.Spec.Ingress, 1)
				rule := p.Spec.Ingress[0]
				require.Len(t, rule.From, 1)
				from := rule.From[0]
				assert.Nil(t, from.NamespaceSelector, "peers of this namespace only")
				assert.Nil(t, from.IPBlock)
				require.NotNil(t, from.PodSelector)
				assert.Equal(t, map[string]string{componentLabel: functionComp}, from.PodSelector.MatchLabels)
				assert.Empty(t, from.PodSelector.MatchExpressions)
				require.Len(t, rule.Ports, 1)
				assert.Equal(t, listen, rule.Ports[0].Port.IntValue())
			}
			assert.True(t, np, "NetworkPolicy %s", pgbouncerPolicy)

			var pdb bool
			for _, p := range all[*policyv1.PodDisruptionBudget](b) {
				sel, err := metav1.LabelSelectorAsSelector(p.Spec.Selector)
				require.NoError(t, err)
				pdb = pdb || sel.Matches(pods)
			}
			assert.True(t, pdb, "no PodDisruptionBudget for the PgBouncer pods")
		})
	}
}

// lockedBuffer collects a process's output while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// setIni sets key in the [pgbouncer] section of an ini text it occurs in.
func setIni(t *testing.T, text, key, value string) string {
	t.Helper()
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(key) + `\s*=.*$`)
	require.Len(t, re.FindAllString(text, -1), 1, "%s in %s", key, pgbouncerIni)
	return re.ReplaceAllLiteralString(text, key+" = "+value)
}

// TestPgBouncerConfigLoads: Debian's PgBouncer (1.18, the version the
// functions' tests run through) starts on the component's pgbouncer.ini as
// it is, with only the paths and the port moved into a temporary
// directory, and reports no error or warning about it.
func TestPgBouncerConfigLoads(t *testing.T) {
	bin, err := exec.LookPath("pgbouncer")
	if err != nil {
		bin, err = exec.LookPath("/usr/sbin/pgbouncer")
	}
	if err != nil {
		t.Skip("Debian's pgbouncer package is not installed (apt-get install pgbouncer)")
	}
	b := loadOverlay(t, overlayNamed(t, "functions+pgbouncer"))
	var d *appsv1.Deployment
	cms := map[string]*corev1.ConfigMap{}
	for _, o := range b.objects {
		switch v := o.obj.(type) {
		case *appsv1.Deployment:
			d = v
		case *corev1.ConfigMap:
			cms[v.Name] = v
		}
	}
	require.NotNil(t, d)
	var text string
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.ConfigMap != nil && cms[v.ConfigMap.Name] != nil {
			text = cms[v.ConfigMap.Name].Data[pgbouncerIni]
		}
	}
	require.NotEmpty(t, text)

	// PgBouncer refuses to run as root; it runs as nobody then, so the
	// directory and its files must be readable to all.
	dir := t.TempDir()
	require.NoError(t, os.Chmod(filepath.Dir(dir), 0o755))
	require.NoError(t, os.Chmod(dir, 0o755))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := l.Addr().(*net.TCPAddr).Port
	require.NoError(t, l.Close())
	tests := []struct{ key, value string }{
		{"listen_addr", "127.0.0.1"},
		{"listen_port", strconv.Itoa(port)},
		{"auth_file", filepath.Join(dir, userlistKey)},
	}
	for _, tc := range tests {
		text = setIni(t, text, tc.key, tc.value)
	}
	require.NoError(t, os.WriteFile(filepath.Join(dir, userlistKey), []byte(`"streamspace" "not-a-secret"`+"\n"), 0o644))
	ini := filepath.Join(dir, pgbouncerIni)
	require.NoError(t, os.WriteFile(ini, []byte(text), 0o644))

	args := []string{bin, ini}
	if os.Geteuid() == 0 {
		args = append([]string{"setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	var out lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	require.Eventually(t, func() bool {
		select {
		case err := <-exited:
			exited <- err
			return true
		default:
		}
		c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err == nil {
			_ = c.Close()
		}
		return err == nil
	}, 30*time.Second, 50*time.Millisecond)
	select {
	case err := <-exited:
		exited <- err
		require.Failf(t, "pgbouncer exited", "%v:\n%s", err, out.String())
	default:
	}
	require.Eventually(t, func() bool { return strings.Contains(out.String(), "process up") }, 30*time.Second, 50*time.Millisecond, out.String())
	for _, bad := range []string{"WARNING", "ERROR", "FATAL"} {
		assert.NotContains(t, out.String(), bad)
	}
}

// TestPgBouncerPatchChecksItsTarget: the component's patch replaces the
// Secret key of a Service's first variable only after testing that it is
// DATABASE_URL, so a Service whose env starts otherwise fails the build
// instead of being silently patched elsewhere.
func TestPgBouncerPatchChecksItsTarget(t *testing.T) {
	tests := []struct {
		name, file, old, new string
		wantErr              string
	}{
		{"as it is", "functions/tags/service.yaml", "", "", ""},
		{"another variable first", "functions/tags/service.yaml",
			"          env:\n            - name: DATABASE_URL\n",
			"          env:\n            - name: PORT_NAME\n              value: http1\n            - name: DATABASE_URL\n",
			"testing value /spec/template/spec/containers/0/env/0/name failed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mem, err := newPgBouncerFS()
			require.NoError(t, err)
			p := filepath.Join(pgbouncerRoot, tc.file)
			data, err := mem.ReadFile(p)
			require.NoError(t, err)
			require.Contains(t, string(data), tc.old)
			require.NoError(t, mem.WriteFile(p, []byte(strings.Replace(string(data), tc.old, tc.new, 1))))
			k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
			_, err = k.Run(mem, filepath.Join(pgbouncerRoot, "overlays", "functions"))
			if tc.wantErr == "" {
				assert.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.wantErr)
		})
	}
}
