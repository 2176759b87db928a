// Package function is the versioning function: it saves the content of
// StreamSpace's user session templates as numbered versions in
// user_session_template_versions, lists them, restores a template from one
// (saving the content it replaces first) and diffs two versions, or a
// version and the template as it is now, as an RFC 6902 JSON Patch. Old
// versions are pruned by a retention rule in the transaction that adds a new
// one, and a template keeps at most VERSION_LIMIT versions.
package function

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/jackc/pgx/v5"

	"github.com/streamspace-dev/functions/events"
	"github.com/streamspace-dev/functions/shared/runtime"
	"github.com/streamspace-dev/functions/shared/service"
)

// Name is the function's name: its Service, its event source suffix and its
// log label.
const Name = "versioning"

// Config is the versioning function's environment.
type Config struct {
	// Base is what every function reads (docs/runtime.md).
	service.Base
	// Retention is how many of a template's newest versions are always
	// kept. Older ones are pruned unless they carry a user tag or are
	// auto-backups younger than BackupRetention.
	Retention int `env:"VERSION_RETENTION" envDefault:"50"`
	// BackupRetention is how long an auto-backup made by a restore is kept
	// whatever its rank, so an unwanted restore can be undone for a while.
	BackupRetention time.Duration `env:"VERSION_BACKUP_RETENTION" envDefault:"720h"`
	// Limit is the most versions a template keeps, tagged ones included.
	// Adding a version past it, after retention has pruned what it may, is
	// refused with 409, and so is a restore, which must save a backup first.
	Limit int `env:"VERSION_LIMIT" envDefault:"500"`
}

// Validate checks what the env tags cannot express.
func (c *Config) Validate() error {
	if c.Retention < 1 {
		// At least the newest version must survive: the next number is
		// derived from it, so pruning it would let numbers be reused.
		return fmt.Errorf("config: VERSION_RETENTION %d: want at least 1", c.Retention)
	}
	if c.BackupRetention < 0 {
		return fmt.Errorf("config: VERSION_BACKUP_RETENTION %s: want a duration of zero or more", c.BackupRetention)
	}
	if c.Limit < c.Retention {
		// Otherwise versions retention keeps would fill the cap and every
		// create past it would be refused with nothing tagged.
		return fmt.Errorf("config: VERSION_LIMIT %d: want at least VERSION_RETENTION (%d)", c.Limit, c.Retention)
	}
	return nil
}

// Function serves the versioning routes.
type Function struct {
	svc   *service.Service
	rules Rules
}

// New returns an unstarted versioning function.
func New() *Function { return &Function{} }

// Start reads the config, connects, and registers the routes and the
// PingSource handlers.
func (f *Function) Start(ctx context.Context, env map[string]string) error {
	var cfg Config
	svc, err := service.Start(ctx, Name, env, &cfg, events.Validate)
	if err != nil {
		return err
	}
	f.svc = svc
	f.rules = Rules{Retention: cfg.Retention, BackupRetention: cfg.BackupRetention, Limit: cfg.Limit}
	svc.Mux.Route("GET /api/v1/session-templates/{id}/versions", f.listVersions)
	svc.Mux.Route("POST /api/v1/session-templates/{id}/versions", f.createVersion)
	svc.Mux.Route("POST /api/v1/session-templates/{id}/versions/{version}/restore", f.restoreVersion)
	svc.Mux.Route("GET /api/v1/session-templates/{id}/versions/{version}/diff", f.diffVersion)
	svc.Mux.OnSource(events.Ping, events.OutboxDrainSource, svc.DrainOutbox)
	svc.Mux.OnSource(events.Ping, events.PruneSource, f.prune)
	return nil
}

// Stop sends what the outbox still holds, within a bound, and closes the
// pool.
func (f *Function) Stop(ctx context.Context) error { return f.svc.Stop(ctx) }

// Handle serves the routes and events; before Start it answers 503.
func (f *Function) Handle(w http.ResponseWriter, r *http.Request) { f.svc.Handle(w, r) }

// Routes lists the REST patterns served, for the all-in-one function.
func (f *Function) Routes() []string { return f.svc.Routes() }

// Ready is false before Start, and while event authentication is configured
// but its issuer's keys cannot be fetched.
func (f *Function) Ready(ctx context.Context) (bool, error) { return f.svc.Ready(ctx) }

// prune is the processed-events-prune PingSource's handler: the records of
// processed events past their retention go, and so do versions whose
// template StreamSpace deleted (store.go, orphansSQL).
func (f *Function) prune(ctx context.Context, e cloudevents.Event) error {
	if err := f.svc.PruneProcessed(ctx, e); err != nil {
		return err
	}
	var n int64
	err := f.svc.Commit(ctx, func(tx pgx.Tx) ([]cloudevents.Event, error) {
		var err error
		n, err = pruneOrphans(ctx, tx)
		return nil, err
	})
	runtime.AddLogAttrs(ctx, slog.Int64("orphanVersionsPruned", n))
	return err
}
