// Package function is the snapshot function: StreamSpace's session
// snapshots. Its REST routes create, list, read and delete a session's
// snapshots (session_snapshots) and its snapshot config
// (sessions.snapshot_config); the snapshot.requested event runs the job,
// which streams the session pod's /config through pods/exec, gzips and
// hashes it in one pass and uploads it to S3-compatible storage with a
// manifest (shared/homesnap). Two PingSources enforce retention, sweep
// orphaned objects, take automatic snapshots and take over jobs whose
// owner died (docs/snapshots.md).
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
	"github.com/streamspace-dev/functions/shared/kube"
	"github.com/streamspace-dev/functions/shared/objstore"
	"github.com/streamspace-dev/functions/shared/runtime"
	"github.com/streamspace-dev/functions/shared/service"
)

// Name is the function's name: its Service, its event source suffix and its
// log label.
const Name = "snapshot"

// Config is the snapshot function's environment.
type Config struct {
	// Base is what every function reads (docs/runtime.md).
	service.Base
	// Storage is the S3-compatible bucket (S3_*, AWS_*).
	Storage objstore.Config
	// Kubeconfig, when set, is used instead of the in-cluster config (for
	// development against a cluster from outside it).
	Kubeconfig string `env:"KUBECONFIG"`
	// ExecProtocol forces the pods/exec protocol: websocket or spdy; empty
	// tries WebSocket and falls back to SPDY.
	ExecProtocol kube.Protocol `env:"SNAPSHOT_EXEC_PROTOCOL"`
	// MaxBytes caps the uncompressed tar stream of one snapshot; a larger
	// home fails cleanly at the "limit" stage. It also sizes the upload's
	// parts so the largest allowed home fits S3's 10,000 parts.
	MaxBytes int64 `env:"SNAPSHOT_MAX_BYTES" envDefault:"21474836480"`
	// MaxEntries caps the entries (files, folders, links) of one
	// snapshot's tar stream, failing at the "limit" stage past it. It
	// equals the restore function's RESTORE_MAX_ENTRIES, so no snapshot is
	// stored that a restore refuses.
	MaxEntries int64 `env:"SNAPSHOT_MAX_ENTRIES" envDefault:"500000"`
	// QuotaCount and QuotaBytes bound one user's snapshots (not deleted or
	// failed) and the bytes they store; a new snapshot past either is 409.
	QuotaCount int64 `env:"SNAPSHOT_QUOTA_COUNT" envDefault:"50"`
	QuotaBytes int64 `env:"SNAPSHOT_QUOTA_BYTES" envDefault:"107374182400"`
	// LeaseTTL is how long a job's lease lasts without a heartbeat (one is
	// sent every third of it): how soon a job whose instance died can be
	// taken over.
	LeaseTTL time.Duration `env:"SNAPSHOT_LEASE_TTL" envDefault:"60s"`
	// JobTimeout bounds one job; it must end before the revision's
	// timeoutSeconds (deploy/functions/snapshot) cuts the delivery.
	JobTimeout time.Duration `env:"SNAPSHOT_JOB_TIMEOUT" envDefault:"570s"`
	// MaxJobs caps the snapshot jobs this instance runs at once; a job
	// delivered while all run is answered 503 with Retry-After and changes
	// nothing, so the broker delivers it again later (docs/snapshots.md,
	// "Streams per instance"). It bounds the memory streams take, where
	// containerConcurrency also counts REST requests.
	MaxJobs int `env:"SNAPSHOT_MAX_JOBS" envDefault:"2"`
	// ProgressInterval is how often a running job emits snapshot.progress.
	ProgressInterval time.Duration `env:"SNAPSHOT_PROGRESS_INTERVAL" envDefault:"5s"`
	// AutoConcurrency caps the automatic snapshots being taken at once,
	// across every session.
	AutoConcurrency int `env:"SNAPSHOT_AUTO_CONCURRENCY" envDefault:"2"`
	// AutoJitter spreads automatic snapshots due at the same time over this
	// window, each session at its own fixed offset.
	AutoJitter time.Duration `env:"SNAPSHOT_AUTO_JITTER" envDefault:"15m"`
	// SweepGrace is how old an object must be before the sweep may delete
	// it for having no row, so an object written just before its row
	// commits is never taken for an orphan.
	SweepGrace time.Duration `env:"SNAPSHOT_SWEEP_GRACE" envDefault:"24h"`
}

// Validate checks what the env tags cannot express, naming the variable.
func (c *Config) Validate() error {
	if c.Storage.Bucket == "" {
		// Without a bucket there is nothing to snapshot to: alone the
		// function stops here; the all-in-one runs without it.
		return fmt.Errorf("config: S3_BUCKET is required: %w", runtime.ErrNotConfigured)
	}
	var all []error
	if err := c.Storage.Validate(); err != nil {
		all = append(all, err)
	}
	switch c.ExecProtocol {
	case kube.Auto, kube.WebSocket, kube.SPDY:
	default:
		all = append(all, fmt.Errorf("SNAPSHOT_EXEC_PROTOCOL %q: want websocket, spdy or empty", c.ExecProtocol))
	}
	if c.MaxBytes < 1 {
		all = append(all, fmt.Errorf("SNAPSHOT_MAX_BYTES %d: want a positive size in bytes", c.MaxBytes))
	}
	if c.MaxEntries < 1 {
		all = append(all, fmt.Errorf("SNAPSHOT_MAX_ENTRIES %d: want at least 1", c.MaxEntries))
	}
	if c.QuotaCount < 1 || c.QuotaBytes < 1 {
		all = append(all, errors.New("SNAPSHOT_QUOTA_COUNT and SNAPSHOT_QUOTA_BYTES: want positive numbers"))
	}
	if c.LeaseTTL < 3*time.Second {
		all = append(all, fmt.Errorf("SNAPSHOT_LEASE_TTL %s: want at least 3s", c.LeaseTTL))
	}
	if c.JobTimeout <= c.LeaseTTL {
		all = append(all, fmt.Errorf("SNAPSHOT_JOB_TIMEOUT %s: want more than SNAPSHOT_LEASE_TTL", c.JobTimeout))
	}
	if c.MaxJobs < 1 {
		all = append(all, fmt.Errorf("SNAPSHOT_MAX_JOBS %d: want at least 1", c.MaxJobs))
	}
	if c.ProgressInterval <= 0 {
		all = append(all, fmt.Errorf("SNAPSHOT_PROGRESS_INTERVAL %s: want a positive duration", c.ProgressInterval))
	}
	if c.AutoConcurrency < 1 {
		all = append(all, fmt.Errorf("SNAPSHOT_AUTO_CONCURRENCY %d: want at least 1", c.AutoConcurrency))
	}
	if c.AutoJitter < 0 || c.SweepGrace < 0 {
		all = append(all, errors.New("SNAPSHOT_AUTO_JITTER and SNAPSHOT_SWEEP_GRACE: want durations of zero or more"))
	}
	if len(all) > 0 {
		return fmt.Errorf("config: %w", errors.Join(all...))
	}
	return nil
}

// Function serves the snapshot routes and runs the snapshot jobs.
type Function struct {
	svc     *service.Service
	cfg     Config
	quota   Quota
	objects *objstore.Store
	pods    *kube.Client
	// slots bounds the snapshot jobs running at once (SNAPSHOT_MAX_JOBS).
	slots *service.JobSlots
	// instance names this process in its jobs' lease owners: the pod's
	// name and a random suffix, since a restarted container keeps its pod
	// name. Each job adds its own suffix.
	instance string
}

// New returns an unstarted snapshot function.
func New() *Function { return &Function{} }

// Start reads the config, connects, and registers the routes and the event
// handlers.
func (f *Function) Start(ctx context.Context, env map[string]string) error {
	var cfg Config
	svc, err := service.Start(ctx, Name, env, &cfg, events.Validate)
	if err != nil {
		return err
	}
	objects, err := objstore.New(ctx, cfg.Storage)
	if err != nil {
		_ = svc.Stop(ctx)
		return fmt.Errorf("%s: %w", Name, err)
	}
	rc, err := kube.RestConfig(cfg.Kubeconfig)
	if err != nil {
		_ = svc.Stop(ctx)
		return fmt.Errorf("%s: %w", Name, err)
	}
	pods, err := kube.New(rc, cfg.ExecProtocol)
	if err != nil {
		_ = svc.Stop(ctx)
		return fmt.Errorf("%s: %w", Name, err)
	}
	f.svc, f.cfg, f.objects, f.pods = svc, cfg, objects, pods
	f.quota = Quota{Count: cfg.QuotaCount, Bytes: cfg.QuotaBytes}
	f.instance = instanceName()
	f.slots = service.NewJobSlots(cfg.MaxJobs)

	svc.Mux.Route("GET /api/v1/sessions/{sessionId}/snapshots", f.listSessionSnapshots)
	svc.Mux.Route("POST /api/v1/sessions/{sessionId}/snapshots", f.createSnapshot)
	svc.Mux.Route("GET /api/v1/sessions/{sessionId}/snapshots/config", f.getConfig)
	svc.Mux.Route("PUT /api/v1/sessions/{sessionId}/snapshots/config", f.putConfig)
	svc.Mux.Route("GET /api/v1/sessions/{sessionId}/snapshots/{snapshotId}", f.getSnapshot)
	svc.Mux.Route("DELETE /api/v1/sessions/{sessionId}/snapshots/{snapshotId}", f.deleteSnapshot)
	svc.Mux.Route("GET /api/v1/snapshots", f.listUserSnapshots)
	svc.Mux.Route("GET /api/v1/snapshots/stats", f.snapshotStats)
	svc.Mux.On(events.SnapshotRequested, f.onRequested)
	svc.Mux.OnSource(events.Ping, events.SnapshotRetentionSource, f.onRetention)
	svc.Mux.OnSource(events.Ping, events.SnapshotScheduleSource, f.onSchedule)
	svc.Mux.OnSource(events.Ping, events.OutboxDrainSource, svc.DrainOutbox)
	svc.Mux.OnSource(events.Ping, events.PruneSource, svc.PruneProcessed)
	return nil
}

// Stop drains the outbox and closes the pool.
func (f *Function) Stop(ctx context.Context) error { return f.svc.Stop(ctx) }

// Handle serves the routes and events; before Start it answers 503.
func (f *Function) Handle(w http.ResponseWriter, r *http.Request) { f.svc.Handle(w, r) }

// Routes lists the REST patterns served, for the all-in-one function.
func (f *Function) Routes() []string { return f.svc.Routes() }

// Ready is false before Start, and while event authentication is configured
// but its issuer's keys cannot be fetched.
func (f *Function) Ready(ctx context.Context) (bool, error) { return f.svc.Ready(ctx) }

// instanceName is the pod's name (Knative sets HOSTNAME to it) and a random
// suffix.
func instanceName() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = Name
	}
	return host + "-" + uuid.NewString()[:8]
}
