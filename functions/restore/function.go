// Package function is the restore function: it restores a session's /config
// from one of its snapshots. A REST call queues a job; the job, run on its
// event under a renewed lease, vets the stored archive, backs the current
// /config up as a pre-restore snapshot, clears it, extracts a stream
// re-packed from checked entries only, verifies and chowns what it restored,
// and rolls back to the backup on any failure after clearing
// (docs/restore.md).
package function

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/streamspace-dev/functions/events"
	"github.com/streamspace-dev/functions/shared/archive"
	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/kube"
	"github.com/streamspace-dev/functions/shared/metrics"
	"github.com/streamspace-dev/functions/shared/objstore"
	"github.com/streamspace-dev/functions/shared/runtime"
	"github.com/streamspace-dev/functions/shared/service"
)

// Name is the function's name: its Service, its event source suffix and its
// log label.
const Name = "restore"

// Config is the restore function's environment.
type Config struct {
	// Base is what every function reads (docs/runtime.md).
	service.Base
	// Storage is the S3-compatible bucket holding the snapshots (S3_*).
	Storage objstore.Config
	// KubeConfig is a kubeconfig file for running outside a cluster; empty
	// means the in-cluster ServiceAccount.
	KubeConfig string `env:"KUBECONFIG"`
	// ExecProtocol is the pods/exec protocol: empty (WebSocket, falling back
	// to SPDY), websocket or spdy.
	ExecProtocol kube.Protocol `env:"RESTORE_EXEC_PROTOCOL"`
	// MaxBytes caps the uncompressed size of an archive a restore accepts;
	// the snapshot's manifest lowers it for each archive.
	MaxBytes int64 `env:"RESTORE_MAX_BYTES" envDefault:"68719476736"`
	// MaxEntries caps the number of entries of an archive: a home with
	// more files is refused, naming this variable. The snapshot function
	// must not store archives above it, or they cannot be restored.
	MaxEntries int64 `env:"RESTORE_MAX_ENTRIES" envDefault:"500000"`
	// LeaseTTL is how long a job's lease lasts without a heartbeat (one is
	// sent every third of it): how soon a redelivery takes over from an
	// instance that died.
	LeaseTTL time.Duration `env:"RESTORE_LEASE_TTL" envDefault:"30s"`
	// JobTimeout bounds one attempt at a job; a rollback gets as long
	// again. Keep it below the revision's timeoutSeconds.
	JobTimeout time.Duration `env:"RESTORE_JOB_TIMEOUT" envDefault:"9m"`
	// MaxJobs caps the restore jobs this instance runs at once; a job
	// delivered while all run is answered 503 with Retry-After and changes
	// nothing, so the broker delivers it again later (docs/restore.md). It
	// bounds the memory streams take, where containerConcurrency also
	// counts REST requests.
	MaxJobs int `env:"RESTORE_MAX_JOBS" envDefault:"2"`
}

// Validate checks what the env tags cannot express.
func (c *Config) Validate() error {
	if c.Storage.Bucket == "" {
		// Without a bucket there are no snapshots to restore: alone the
		// function stops here; the all-in-one leaves it out.
		return fmt.Errorf("config: S3_BUCKET is required: %w", runtime.ErrNotConfigured)
	}
	var all []error
	if err := c.Storage.Validate(); err != nil {
		all = append(all, err)
	}
	switch c.ExecProtocol {
	case kube.Auto, kube.WebSocket, kube.SPDY:
	default:
		all = append(all, fmt.Errorf("RESTORE_EXEC_PROTOCOL %q: want websocket, spdy or empty", string(c.ExecProtocol)))
	}
	if c.MaxBytes < 1 {
		all = append(all, fmt.Errorf("RESTORE_MAX_BYTES %d: want at least 1", c.MaxBytes))
	}
	if c.MaxEntries < 1 {
		all = append(all, fmt.Errorf("RESTORE_MAX_ENTRIES %d: want at least 1", c.MaxEntries))
	}
	if c.LeaseTTL < 3*time.Second {
		all = append(all, fmt.Errorf("RESTORE_LEASE_TTL %s: want at least 3s", c.LeaseTTL))
	}
	if c.JobTimeout < time.Minute {
		all = append(all, fmt.Errorf("RESTORE_JOB_TIMEOUT %s: want at least 1m", c.JobTimeout))
	}
	if c.MaxJobs < 1 {
		all = append(all, fmt.Errorf("RESTORE_MAX_JOBS %d: want at least 1", c.MaxJobs))
	}
	return errors.Join(all...)
}

func (c *Config) limits() archive.Limits {
	return archive.Limits{MaxBytes: c.MaxBytes, MaxEntries: c.MaxEntries}
}

// overCap is the vet's refusal of an archive for one of the function's own
// caps, naming the variable that sets it. The archive may be sound: under
// a raised cap the same snapshot can be restored, so it stays available.
type overCap struct {
	setting string
	limit   int64
	err     error
}

func (e *overCap) Error() string {
	return fmt.Sprintf("%v (%s is %d: raise it to restore a home this large)", e.err, e.setting, e.limit)
}

func (e *overCap) Unwrap() error { return e.err }

// nameCap turns the vet's refusal for a cap that is the function's own
// into an overCap. The byte cap is the manifest's instead when the manifest
// declares less: an archive over its own manifest is refused as it is.
func (c *Config) nameCap(err error, want archive.Expect) error {
	switch {
	case errors.Is(err, archive.ErrTooManyEntries):
		return &overCap{setting: "RESTORE_MAX_ENTRIES", limit: c.MaxEntries, err: err}
	case errors.Is(err, archive.ErrTooLarge) && (want.Bytes < 0 || want.Bytes >= c.MaxBytes):
		return &overCap{setting: "RESTORE_MAX_BYTES", limit: c.MaxBytes, err: err}
	}
	return err
}

// Function serves the restore routes and runs restore jobs.
type Function struct {
	svc       *service.Service
	cfg       Config
	objects   objects
	manifests manifestReader
	pods      pods
	capture   capturer
	jobs      *metrics.JobMetrics
	// slots bounds the jobs running at once (RESTORE_MAX_JOBS).
	slots *service.JobSlots
	// owner names this instance in job leases.
	owner string
	// wrap, when set (by tests), wraps the storage and pod clients, to
	// inject faults no real server can be made to show on cue.
	wrap func(objects, pods) (objects, pods)
	// onLease, when set (by tests), is given each job's lease as it is
	// taken, so a test can make the job lose it on cue.
	onLease func(*db.Lease)
}

// New returns an unstarted restore function.
func New() *Function { return &Function{} }

// Start reads the config, builds the storage and Kubernetes clients, and
// registers the routes and event handlers.
func (f *Function) Start(ctx context.Context, env map[string]string) error {
	svc, err := service.Start(ctx, Name, env, &f.cfg, events.Validate)
	if err != nil {
		return err
	}
	store, err := objstore.New(ctx, f.cfg.Storage)
	if err != nil {
		return errors.Join(err, svc.Stop(ctx))
	}
	rc, err := kube.RestConfig(f.cfg.KubeConfig)
	if err != nil {
		return errors.Join(err, svc.Stop(ctx))
	}
	kc, err := kube.New(rc, f.cfg.ExecProtocol)
	if err != nil {
		return errors.Join(err, svc.Stop(ctx))
	}
	f.svc = svc
	f.objects, f.pods = store, kc
	if f.wrap != nil {
		f.objects, f.pods = f.wrap(f.objects, f.pods)
	}
	f.manifests = manifests{store: f.objects}
	f.capture = homeCapturer{pods: f.pods, store: store, maxBytes: f.cfg.MaxBytes, maxEntries: f.cfg.MaxEntries}
	f.jobs = svc.Job("restore")
	f.slots = service.NewJobSlots(f.cfg.MaxJobs)
	f.owner, _ = os.Hostname()
	if f.owner == "" {
		f.owner = Name
	}
	svc.Mux.Route("POST /api/v1/sessions/{sessionId}/snapshots/{snapshotId}/restore", f.restore)
	svc.Mux.Route("GET /api/v1/sessions/{sessionId}/snapshots/{snapshotId}/restore/status", f.status)
	svc.Mux.On(events.RestoreRequested, f.runJob)
	svc.Mux.OnSource(events.Ping, events.OutboxDrainSource, f.drain)
	svc.Mux.OnSource(events.Ping, events.PruneSource, svc.PruneProcessed)
	return nil
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
func (f *Function) Ready(ctx context.Context) (bool, error) {
	if f.svc == nil {
		return false, nil
	}
	return f.svc.Ready(ctx)
}
