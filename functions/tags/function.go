// Package function is the tags function: batch add, remove and replace of
// session tags, and the popular catalog tags behind search filters.
package function

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/google/uuid"

	"github.com/streamspace-dev/functions/events"
	"github.com/streamspace-dev/functions/shared/service"
)

// Name is the function's name: its Service, its event source suffix and its
// log label.
const Name = "tags"

// Config is the tags function's environment.
type Config struct {
	service.Base
	// CacheTTL is how long an instance serves popular tags from memory
	// before it reads catalog_tag_counts again. An instance that did not
	// receive a template.updated event serves cached counts this long.
	CacheTTL time.Duration `env:"TAGS_CACHE_TTL" envDefault:"30s"`
	// MaxStaleness bounds the age of the catalog_tag_counts view a read
	// serves from: a read that finds the view older than this, or asked to
	// be refreshed by a template.updated event that could not refresh it,
	// refreshes it first, unless another instance is refreshing it already.
	MaxStaleness time.Duration `env:"TAGS_MAX_STALENESS" envDefault:"5m"`
}

// Validate refuses durations that would disable the cache or the refresh.
func (c *Config) Validate() error {
	var all []error
	if c.CacheTTL <= 0 {
		all = append(all, fmt.Errorf("TAGS_CACHE_TTL: want a positive duration, got %s", c.CacheTTL))
	}
	if c.MaxStaleness <= 0 {
		all = append(all, fmt.Errorf("TAGS_MAX_STALENESS: want a positive duration, got %s", c.MaxStaleness))
	}
	if len(all) > 0 {
		return fmt.Errorf("config: %w", errors.Join(all...))
	}
	return nil
}

// Function serves the tags routes and events.
type Function struct {
	svc   *service.Service
	cache *popularCache
	// maxStaleness is Config.MaxStaleness.
	maxStaleness time.Duration
	// instance names this process in the job_leases row of the last
	// refresh, for an operator reading it.
	instance string
}

// New returns an unstarted tags function.
func New() *Function { return &Function{} }

// Start reads the config, connects, and registers routes and event handlers.
func (f *Function) Start(ctx context.Context, env map[string]string) error {
	var cfg Config
	svc, err := service.Start(ctx, Name, env, &cfg, events.Validate)
	if err != nil {
		return err
	}
	f.svc = svc
	f.cache = newPopularCache(cfg.CacheTTL)
	f.maxStaleness = cfg.MaxStaleness
	f.instance = instanceName()

	svc.Mux.Route("POST /api/v1/batch/sessions/update-tags", f.updateTags)
	svc.Mux.Route("GET /api/v1/search/filters/tags", f.popularTags)
	svc.Mux.On(events.TemplateUpdated, f.onTemplateUpdated)
	svc.Mux.OnSource(events.Ping, events.TagsRefreshSource, f.onRefreshPing)
	svc.Mux.OnSource(events.Ping, events.OutboxDrainSource, svc.DrainOutbox)
	svc.Mux.OnSource(events.Ping, events.PruneSource, svc.PruneProcessed)
	return nil
}

// Stop drains the outbox and closes the database pool.
func (f *Function) Stop(ctx context.Context) error { return f.svc.Stop(ctx) }

// Handle serves the routes and events; it answers 503 until Start is done.
func (f *Function) Handle(w http.ResponseWriter, r *http.Request) { f.svc.Handle(w, r) }

// Ready reports whether the function can serve: false until Start is done,
// and while event deliveries cannot be authenticated.
func (f *Function) Ready(ctx context.Context) (bool, error) { return f.svc.Ready(ctx) }

// Routes lists the REST patterns served, for the all-in-one function.
func (f *Function) Routes() []string { return f.svc.Routes() }

// instanceName is the pod's name (Knative sets HOSTNAME to it) and a random
// suffix, since a restarted container keeps its pod name.
func instanceName() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = Name
	}
	return host + "-" + uuid.NewString()[:8]
}
