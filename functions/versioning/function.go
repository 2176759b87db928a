// Package function is the versioning function: it snapshots session
// templates as numbered versions, lists them, restores a template from one
// (saving the state it replaces first) and diffs two versions, or a version
// and the template as it is now, as an RFC 6902 JSON Patch. Old versions are
// pruned by a retention rule in the transaction that adds a new one.
package function

import (
	"context"
	"fmt"
	"time"

	"github.com/streamspace-dev/functions/events"
	"github.com/streamspace-dev/functions/shared/service"
)

// Name is the function's name: its Service, its event source suffix and its
// log label.
const Name = "versioning"

// Config is the versioning function's environment.
type Config struct {
	service.Base
	// Retention is how many of a template's newest versions are always kept.
	// Older ones are pruned unless they carry a user tag or are auto-backups
	// younger than BackupRetention.
	Retention int `env:"VERSION_RETENTION" envDefault:"50"`
	// BackupRetention is how long an auto-backup made by a restore is kept
	// whatever its rank, so an unwanted restore can be undone for a while.
	BackupRetention time.Duration `env:"VERSION_BACKUP_RETENTION" envDefault:"720h"`
}

// validate checks what the env tags cannot express.
func (c *Config) Validate() error {
	if c.Retention < 1 {
		// At least the newest version must survive: the next number is
		// derived from it, so pruning it would let numbers be reused.
		return fmt.Errorf("config: VERSION_RETENTION %d: want at least 1", c.Retention)
	}
	if c.BackupRetention < 0 {
		return fmt.Errorf("config: VERSION_BACKUP_RETENTION %s: want a duration of zero or more", c.BackupRetention)
	}
	return nil
}

// Function serves the versioning routes.
type Function struct {
	*service.Service
	store *Store
}

// New returns an unstarted versioning function.
func New() *Function { return &Function{} }

// Start reads the config and registers the routes.
func (f *Function) Start(ctx context.Context, env map[string]string) error {
	var cfg Config
	svc, err := service.Start(ctx, Name, env, &cfg, events.Validate)
	if err != nil {
		return err
	}
	f.Service = svc
	f.store = &Store{Pool: svc.Pool, Retention: cfg.Retention, BackupRetention: cfg.BackupRetention}
	svc.Mux.Route("GET /api/v1/session-templates/{id}/versions", f.listVersions)
	svc.Mux.Route("POST /api/v1/session-templates/{id}/versions", f.createVersion)
	svc.Mux.Route("POST /api/v1/session-templates/{id}/versions/{version}/restore", f.restoreVersion)
	svc.Mux.Route("GET /api/v1/session-templates/{id}/versions/{version}/diff", f.diffVersion)
	svc.Mux.OnSource(events.Ping, events.OutboxDrainSource, svc.DrainOutbox)
	svc.Mux.OnSource(events.Ping, events.PruneSource, svc.PruneProcessed)
	return nil
}
