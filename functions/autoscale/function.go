// Package function is the autoscale function: it evaluates StreamSpace's
// autoscaling policies (autoscaling_policies) against the real replica
// counts of their Deployments and StatefulSets, decides as the Kubernetes
// HPA does (tolerance, stabilization windows, step limits) plus the
// policies' cooldown, thresholds and cron windows, scales through the scale
// subresource and records every decision in scaling_events. It is woken by
// a PingSource every minute, by session events, and by its REST routes
// (docs/autoscale.md).
package function

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/google/uuid"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/streamspace-dev/functions/events"
	"github.com/streamspace-dev/functions/shared/service"
)

// Name is the function's name: its Service, its event source suffix and its
// log label.
const Name = "autoscale"

// Config is the autoscale function's environment.
type Config struct {
	// Base is what every function reads (docs/runtime.md); its
	// STREAMSPACE_NAMESPACE is where targets are looked up and scaled.
	service.Base
	// MaxReplicas is the largest max_replicas a policy may set.
	MaxReplicas int32 `env:"AUTOSCALE_MAX_REPLICAS" envDefault:"100"`
	// Concurrency is how many policies a tick evaluates at once.
	Concurrency int `env:"AUTOSCALE_CONCURRENCY" envDefault:"16"`
	// LeaseTTL is how long a policy's claim (job_leases) lasts: longer than
	// any one evaluation, short enough that a crashed instance's policies
	// are evaluated again by the next tick.
	LeaseTTL time.Duration `env:"AUTOSCALE_LEASE_TTL" envDefault:"50s"`
	// Kubeconfig is a kubeconfig file to reach the API server with. Unset,
	// the function uses its Pod's ServiceAccount (in-cluster); outside a
	// cluster with neither, autoscaling is off and the policy routes still
	// work (docs/autoscale.md).
	Kubeconfig string `env:"KUBECONFIG"`
	// KubeQPS and KubeBurst bound the function's request rate to the API
	// server (client-go's limiter; the API server's priority and fairness
	// still applies). A tick makes about one call per policy.
	KubeQPS   float32 `env:"AUTOSCALE_KUBE_QPS" envDefault:"500"`
	KubeBurst int     `env:"AUTOSCALE_KUBE_BURST" envDefault:"1000"`
	// KubeTimeout bounds each API call.
	KubeTimeout time.Duration `env:"AUTOSCALE_KUBE_TIMEOUT" envDefault:"10s"`
	// MetricsServer, when set, is the URL serving metrics.k8s.io and
	// custom.metrics.k8s.io directly, instead of through the API server's
	// aggregation layer: for a metrics server reachable on its own (tests,
	// make run).
	MetricsServer string `env:"AUTOSCALE_METRICS_SERVER"`
}

// Validate checks what the env tags cannot express.
func (c *Config) Validate() error {
	switch {
	case c.MaxReplicas < 1:
		return fmt.Errorf("config: AUTOSCALE_MAX_REPLICAS %d: want at least 1", c.MaxReplicas)
	case c.Concurrency < 1 || c.Concurrency > 256:
		return fmt.Errorf("config: AUTOSCALE_CONCURRENCY %d: want 1 to 256", c.Concurrency)
	case c.LeaseTTL < 5*time.Second:
		return fmt.Errorf("config: AUTOSCALE_LEASE_TTL %s: want at least 5s", c.LeaseTTL)
	case c.KubeQPS <= 0 || c.KubeBurst < 1:
		return fmt.Errorf("config: AUTOSCALE_KUBE_QPS and AUTOSCALE_KUBE_BURST: want positive values")
	case c.KubeTimeout <= 0:
		return fmt.Errorf("config: AUTOSCALE_KUBE_TIMEOUT %s: want a positive duration", c.KubeTimeout)
	}
	if c.MetricsServer != "" {
		u, err := url.Parse(c.MetricsServer)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("config: AUTOSCALE_METRICS_SERVER %q: want an http or https URL", c.MetricsServer)
		}
	}
	return nil
}

// Function serves the autoscale routes and events.
type Function struct {
	svc *service.Service
	cfg Config
	// cluster is nil when no Kubernetes API is configured: autoscaling is
	// off and off says why.
	cluster *cluster
	off     string
	// instance names this process in the policy leases.
	instance string
	now      func() time.Time
}

// New returns an unstarted autoscale function.
func New() *Function { return &Function{now: time.Now} }

// Start reads the config, connects to PostgreSQL and the Kubernetes API,
// and registers the routes and the event handlers.
func (f *Function) Start(ctx context.Context, env map[string]string) error {
	var cfg Config
	svc, err := service.Start(ctx, Name, env, &cfg, events.Validate)
	if err != nil {
		return err
	}
	kcfg, err := kubeConfig(cfg, env)
	if err != nil {
		_ = svc.Stop(ctx)
		return fmt.Errorf("%s: %w", Name, err)
	}
	if kcfg != nil {
		mcfg, err := metricsConfig(cfg, kcfg)
		if err != nil {
			_ = svc.Stop(ctx)
			return fmt.Errorf("%s: %w", Name, err)
		}
		if f.cluster, err = newCluster(cfg.Namespace, kcfg, mcfg); err != nil {
			_ = svc.Stop(ctx)
			return fmt.Errorf("%s: %w", Name, err)
		}
	} else {
		f.off = "no Kubernetes API is configured: KUBECONFIG is unset and the function is not running in a cluster"
		svc.Log.Warn("autoscale is off; the policy routes work, evaluations answer 503", "reason", f.off)
	}
	f.svc, f.cfg = svc, cfg
	host, _ := os.Hostname()
	f.instance = host + "/" + uuid.NewString()[:8]
	const base = "/api/v1/scaling/autoscaling"
	svc.Mux.Route("GET "+base+"/policies", f.listPolicies)
	svc.Mux.Route("POST "+base+"/policies", f.createPolicy)
	svc.Mux.Route("GET "+base+"/policies/{id}", f.getPolicy)
	svc.Mux.Route("PUT "+base+"/policies/{id}", f.updatePolicy)
	svc.Mux.Route("DELETE "+base+"/policies/{id}", f.deletePolicy)
	svc.Mux.Route("POST "+base+"/policies/{id}/trigger", f.triggerPolicy)
	svc.Mux.Route("POST "+base+"/policies/{id}/evaluate", f.evaluatePolicy)
	svc.Mux.Route("GET "+base+"/history", f.history)
	svc.Mux.OnSource(events.Ping, events.AutoscaleTickSource, f.tick)
	svc.Mux.On(events.SessionCreated, f.onSession)
	svc.Mux.On(events.SessionTerminated, f.onSession)
	svc.Mux.On(events.APIServerAdd, f.onSessionResource)
	svc.Mux.On(events.APIServerDelete, f.onSessionResource)
	svc.Mux.OnSource(events.Ping, events.OutboxDrainSource, svc.DrainOutbox)
	svc.Mux.OnSource(events.Ping, events.PruneSource, svc.PruneProcessed)
	return nil
}

// kubeConfig is the API server's client config: KUBECONFIG's when set,
// else the Pod's ServiceAccount; nil outside a cluster with neither.
func kubeConfig(cfg Config, env map[string]string) (*rest.Config, error) {
	var kcfg *rest.Config
	var err error
	switch {
	case cfg.Kubeconfig != "":
		kcfg, err = clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("config: KUBECONFIG %s: %w", cfg.Kubeconfig, err)
		}
	case env["KUBERNETES_SERVICE_HOST"] != "":
		kcfg, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("config: in-cluster Kubernetes config: %w", err)
		}
	default:
		return nil, nil
	}
	kcfg.QPS, kcfg.Burst, kcfg.Timeout = cfg.KubeQPS, cfg.KubeBurst, cfg.KubeTimeout
	kcfg.UserAgent = "streamspace-functions/" + Name
	return kcfg, nil
}

// metricsConfig is where the metrics APIs are read: through the API server,
// or AUTOSCALE_METRICS_SERVER with the same credentials (none over http).
func metricsConfig(cfg Config, kcfg *rest.Config) (*rest.Config, error) {
	if cfg.MetricsServer == "" {
		return nil, nil
	}
	m := rest.CopyConfig(kcfg)
	m.Host = cfg.MetricsServer
	u, err := url.Parse(cfg.MetricsServer)
	if err != nil {
		return nil, fmt.Errorf("config: AUTOSCALE_METRICS_SERVER: %w", err)
	}
	if u.Scheme == "http" {
		m.TLSClientConfig = rest.TLSClientConfig{}
		m.BearerToken, m.BearerTokenFile, m.Username, m.Password = "", "", "", ""
		m.Impersonate = rest.ImpersonationConfig{}
	}
	return m, nil
}

// Stop drains the outbox and closes the pool.
func (f *Function) Stop(ctx context.Context) error {
	if f.svc == nil {
		return nil
	}
	return f.svc.Stop(ctx)
}

// Handle serves one request: a CloudEvent on the event path or a REST call.
func (f *Function) Handle(w http.ResponseWriter, r *http.Request) { f.svc.Handle(w, r) }

// Routes lists the REST route patterns, for the all-in-one.
func (f *Function) Routes() []string { return f.svc.Routes() }

// Ready is false before Start.
func (f *Function) Ready(ctx context.Context) (bool, error) { return f.svc.Ready(ctx) }
