// Package function is the tags function: batch add, remove and replace of
// session tags, and the popular-tag aggregation behind search filters.
package function

import (
	"context"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/streamspace-dev/functions/events"
	"github.com/streamspace-dev/functions/shared/service"
)

// Name is the function's name: its Service, its event source suffix and its
// log label.
const Name = "tags"

// Config is the tags function's environment.
type Config struct {
	service.Base
	// CacheTTL bounds how stale popular tags may be on an instance that did
	// not receive the template.updated event.
	CacheTTL time.Duration `env:"TAGS_CACHE_TTL" envDefault:"30s"`
}

// Function serves the tags routes and events.
type Function struct {
	*service.Service
	store *Store
	cache *popularCache
}

// New returns an unstarted tags function.
func New() *Function { return &Function{} }

// Start reads the config and registers routes and event handlers.
func (f *Function) Start(ctx context.Context, env map[string]string) error {
	var cfg Config
	svc, err := service.Start(ctx, Name, env, &cfg, events.Validate)
	if err != nil {
		return err
	}
	f.Service = svc
	f.store = &Store{Pool: svc.Pool}
	f.cache = newPopularCache(cfg.CacheTTL)
	svc.Mux.Route("POST /api/v1/batch/sessions/update-tags", f.updateTags)
	svc.Mux.Route("GET /api/v1/search/filters/tags", f.popularTags)
	svc.Mux.On(events.TemplateUpdated, f.onTemplateUpdated)
	svc.Mux.OnSource(events.Ping, events.OutboxDrainSource, svc.DrainOutbox)
	svc.Mux.OnSource(events.Ping, events.PruneSource, svc.PruneProcessed)
	return nil
}

// onTemplateUpdated drops cached popular tags: a template's tags or category
// may have changed. Clearing twice is harmless, so redeliveries need no record.
func (f *Function) onTemplateUpdated(ctx context.Context, e cloudevents.Event) error {
	f.cache.clear()
	return nil
}
