package function

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/streamspace-dev/functions/events"
	"github.com/streamspace-dev/functions/shared/archive"
	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/errs"
	"github.com/streamspace-dev/functions/shared/homesnap"
	"github.com/streamspace-dev/functions/shared/kube"
	"github.com/streamspace-dev/functions/shared/objstore"
	"github.com/streamspace-dev/functions/shared/runtime"
)

// Phase is the step a restore job is in (docs/restore.md).
type Phase string

// The phases, in order; RollingBack follows a failure after Clearing.
const (
	PhasePending     Phase = "pending"
	PhaseVetting     Phase = "vetting"
	PhaseBackingUp   Phase = "backing-up"
	PhaseClearing    Phase = "clearing"
	PhaseExtracting  Phase = "extracting"
	PhaseVerifying   Phase = "verifying"
	PhaseRollingBack Phase = "rolling-back"
	PhaseCompleted   Phase = "completed"
	PhaseFailed      Phase = "failed"
)

// changingPhases are the phases in which /config may have lost files. A
// job whose recorded phase is one of them and whose backup is available
// resumes from that backup: another attempt must not back up a half-cleared
// home, and its failure rolls back.
var changingPhases = []string{string(PhaseClearing), string(PhaseExtracting), string(PhaseVerifying), string(PhaseRollingBack)}

func changesConfig(p Phase) bool {
	for _, c := range changingPhases {
		if string(p) == c {
			return true
		}
	}
	return false
}

var phaseSteps = map[Phase]int{
	PhasePending: 0, PhaseVetting: 1, PhaseBackingUp: 2, PhaseClearing: 3, PhaseExtracting: 4, PhaseVerifying: 5,
	PhaseRollingBack: 5, PhaseCompleted: 6, PhaseFailed: 6,
}

// Progress is a job's progress as the status route reports it.
type Progress struct {
	Phase Phase `json:"phase"`
	// Step is the number of the phase, of Steps.
	Step  int `json:"step"`
	Steps int `json:"steps"`
	// Percent is Step of Steps, as a whole percentage.
	Percent int `json:"percent"`
}

func progressOf(status JobStatus, p Phase) Progress {
	switch status {
	case JobPending:
		p = PhasePending
	case JobCompleted:
		p = PhaseCompleted
	case JobFailed:
		p = PhaseFailed
	case JobInProgress:
		if p == "" {
			p = PhaseVetting
		}
	}
	step := phaseSteps[p]
	return Progress{Phase: p, Step: step, Steps: 6, Percent: step * 100 / 6}
}

// configDir is the session container's home mount.
const configDir = homesnap.Home

// The commands run in the session container. /config is the home mount;
// only its contents are cleared, never the mount point, and find stays on
// that file system (-xdev) so nothing mounted below it is touched.
var (
	clearCmd   = []string{"find", configDir, "-xdev", "-mindepth", "1", "-delete"}
	extractCmd = []string{"tar", "-xf", "-", "-C", configDir}
	// listCmd prints /config first, then every path under it; no shell, so
	// the exec admission policy can hold the functions to tar, find and
	// chown.
	listCmd = []string{"find", configDir, "-xdev", "-print0"}
)

func chownCmd(uid, gid int) []string {
	return []string{"chown", "-R", fmt.Sprintf("%d:%d", uid, gid), configDir}
}

// Commands lists every command a restore job runs in a session pod, the
// chown with uid and gid: the exec admission policy
// (deploy/base/exec-policy.yaml) admits exactly these and the backup's
// homesnap.Command, which a test checks on a real API server.
func Commands(uid, gid int) [][]string {
	return [][]string{clearCmd, extractCmd, listCmd, chownCmd(uid, gid)}
}

// objects is the storage the job reads archives from.
type objects interface {
	Get(ctx context.Context, key string, pin objstore.Pin) (io.ReadCloser, objstore.Object, error)
}

// pods finds a session's pod and runs commands in it.
type pods interface {
	SessionPod(ctx context.Context, namespace, session string) (kube.Pod, error)
	Exec(ctx context.Context, pod kube.Pod, cmd []string, s kube.Streams) error
}

// capturer takes a pre-restore backup: the pod's /config, archived and
// stored under key with its manifest.
type capturer interface {
	Capture(ctx context.Context, pod kube.Pod, key string, labels map[string]string) (homesnap.Manifest, error)
}

// manifestReader reads a snapshot's manifest: what its archive must match,
// and the pin of the archive it describes.
type manifestReader interface {
	Manifest(ctx context.Context, archiveKey string) (archive.Expect, objstore.Pin, error)
}

// leased returns a context for work done under lease: detached from
// parent's cancellation (the work outlives a delivery the broker gave up
// on), ended after timeout or as soon as the lease is lost (its cause then
// db.ErrLeaseLost), with the lease kept alive meanwhile. stop ends the
// keeping and the context.
func leased(parent context.Context, lease *db.Lease, timeout time.Duration) (ctx context.Context, stop func()) {
	ctx, cancelT := context.WithTimeout(context.WithoutCancel(parent), timeout)
	keep := lease.Keep(ctx, 0)
	ctx, cancel := lease.Context(ctx)
	return ctx, func() {
		keep()
		cancel()
		cancelT()
	}
}

// runJob is the handler of snapshot.restore.requested: it runs the job to
// its end while holding the job's lease, so that a redelivery while it runs
// is acknowledged and a redelivery after this owner died takes over.
func (f *Function) runJob(ctx context.Context, e cloudevents.Event) error {
	var d events.RestoreRequestedData
	if err := e.DataAs(&d); err != nil {
		return errs.Wrap(errs.Invalid, err, "restore.requested: data")
	}
	j, err := f.readJob(ctx, d.RestoreJobID)
	if err != nil {
		return err
	}
	if j.Status == JobCompleted || j.Status == JobFailed {
		runtime.MarkDuplicate(ctx)
		return nil
	}
	// A slot before the lease: a delivery that finds every slot taken is
	// answered 503 having changed nothing, and the broker (or, once its
	// retries are spent, the stale-job sweep) asks again.
	release, err := f.slots.TryStart()
	if err != nil {
		runtime.AddLogAttrs(ctx, slog.String("restoreJob", j.ID), slog.String("outcome", "no job slot"))
		return err
	}
	defer release()
	owner := f.owner + "/" + uuid.NewString()
	lease, ok, err := db.AcquireLease(ctx, f.svc.Pool, "restore:"+j.ID, owner, f.cfg.LeaseTTL)
	if err != nil {
		return err
	}
	if !ok {
		// Another instance holds a live lease: this is a redelivery while
		// the job runs there.
		runtime.AddLogAttrs(ctx, slog.String("restoreJob", j.ID), slog.String("outcome", "running elsewhere"))
		runtime.MarkDuplicate(ctx)
		return nil
	}
	// The job outlives a delivery that the broker gave up on: the lease,
	// not the request, says who runs it.
	if f.onLease != nil {
		f.onLease(lease)
	}
	jctx, stop := leased(ctx, lease, f.cfg.JobTimeout)
	defer func() {
		stop()
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer rcancel()
		if err := lease.Release(rctx); err != nil {
			f.svc.Log.Warn("release restore lease", "restoreJob", j.ID, "error", err)
		}
	}()

	// Read again under the lease: a previous owner may have ended it.
	if j, err = f.readJob(jctx, j.ID); err != nil {
		return err
	}
	if j.Status == JobCompleted || j.Status == JobFailed {
		runtime.MarkDuplicate(ctx)
		return nil
	}
	f.jobs.Start()
	r := &run{f: f, j: j, e: e, lease: lease}
	err = r.execute(jctx)
	f.jobs.Done(err)
	runtime.AddLogAttrs(ctx, slog.String("restoreJob", j.ID), slog.Bool("rolledBack", r.rolledBack))
	if errors.Is(r.alive(jctx), db.ErrLeaseLost) {
		// The new owner finishes the job; this one must not write.
		return nil
	}
	if err != nil && !r.recorded {
		// The outcome could not be recorded (the database is down): let
		// the broker redeliver, and the next owner resume from the
		// recorded phase.
		return err
	}
	return nil
}

func (f *Function) readJob(ctx context.Context, id string) (job, error) {
	var j job
	err := db.InTx(ctx, f.svc.Pool, func(tx pgx.Tx) error {
		var err error
		j, err = loadJob(ctx, tx, id)
		return err
	})
	return j, err
}

// run is one attempt at a job.
type run struct {
	f     *Function
	j     job
	e     cloudevents.Event
	lease *db.Lease
	pod   kube.Pod
	// at is the phase this attempt is in: a failure records it as the
	// job's failed_phase.
	at Phase
	// cleared is set once /config may have lost files: from then on a
	// failure rolls back.
	cleared    bool
	rolledBack bool
	// recorded is set once the job's outcome is in the database.
	recorded bool
}

// execute runs the steps and records the outcome. The returned error is the
// job's failure, already recorded unless recorded is false.
func (r *run) execute(ctx context.Context) error {
	j := r.j
	if err := r.start(ctx); err != nil {
		return err
	}
	var err error
	if r.pod, err = r.f.pods.SessionPod(ctx, kube.Namespace(j.Target.Namespace, r.f.cfg.Namespace), j.TargetSessionID); err != nil {
		return r.fail(ctx, fmt.Errorf("find the session's pod: %w", err), nil)
	}

	// A previous owner that recorded a phase after backing up may have
	// changed /config; this attempt starts from the backup it took.
	resumed := j.Backup.ID != "" && j.Backup.Status == SnapshotAvailable && changesConfig(j.Phase)
	if resumed {
		r.cleared = true
		if j.Phase == PhaseRollingBack {
			r.at = PhaseRollingBack
			return r.fail(ctx, errors.New("the previous attempt failed and was rolling back"), nil)
		}
	}

	// 1. Vet: the stored object, pinned to the ETag seen now, must pass
	// every check before anything touches the pod.
	key := j.Snapshot.StoragePath
	want, pin, err := r.f.manifests.Manifest(ctx, key)
	if err != nil {
		return r.fail(ctx, fmt.Errorf("read the snapshot's manifest: %w", err), nil)
	}
	if err := r.vet(ctx, key, pin, want); err != nil {
		verdict := err
		if _, ok := errors.AsType[*overCap](err); ok {
			// Refused for a setting, not for what the archive is.
			verdict = nil
		}
		return r.fail(ctx, fmt.Errorf("vet the snapshot: %w", err), verdict)
	}

	// 2. Back up the current /config as a pre-restore snapshot.
	if !resumed {
		if err := r.backup(ctx); err != nil {
			return r.fail(ctx, fmt.Errorf("back up /config: %w", err), nil)
		}
	}

	// 3-5. Clear, extract the re-packed stream, verify and chown.
	if err := r.phase(ctx, PhaseClearing); err != nil {
		return r.fail(ctx, err, nil)
	}
	r.cleared = true
	files, err := r.replace(ctx, key, pin, want)
	if err != nil {
		return r.fail(ctx, fmt.Errorf("restore the snapshot: %w", err), nil)
	}
	// 6. Done.
	return r.finish(ctx, files)
}

// start records the job in_progress and vetting, with a progress event. A
// phase that says /config may have changed stays recorded until this
// attempt records one of its own, so an attempt that dies while vetting
// still leaves the next one resuming from the backup.
func (r *run) start(ctx context.Context) error {
	r.at = PhaseVetting
	return r.f.svc.Commit(ctx, func(tx pgx.Tx) ([]cloudevents.Event, error) {
		if _, err := tx.Exec(ctx, startJobSQL, r.j.ID, changingPhases, PhaseVetting); err != nil {
			return nil, err
		}
		ev, err := progressed(r.j, PhaseVetting)
		return []cloudevents.Event{ev}, err
	})
}

// phase records that the job enters p, in its row, with a progress event.
func (r *run) phase(ctx context.Context, p Phase) error {
	r.at = p
	if err := r.alive(ctx); err != nil {
		return err
	}
	return r.f.svc.Commit(ctx, func(tx pgx.Tx) ([]cloudevents.Event, error) {
		if _, err := tx.Exec(ctx, phaseSQL, r.j.ID, p); err != nil {
			return nil, err
		}
		ev, err := progressed(r.j, p)
		return []cloudevents.Event{ev}, err
	})
}

// alive fails once the lease is lost, so that no phase is recorded by an
// owner that was replaced.
func (r *run) alive(ctx context.Context) error {
	select {
	case <-r.lease.Lost():
		return db.ErrLeaseLost
	default:
	}
	return context.Cause(ctx)
}

func (r *run) vet(ctx context.Context, key string, pin objstore.Pin, want archive.Expect) error {
	body, _, err := r.f.objects.Get(ctx, key, pin)
	if err != nil {
		return err
	}
	defer body.Close()
	_, err = archive.Vet(ctx, body, r.f.cfg.limits(), &want)
	return r.f.cfg.nameCap(err, want)
}

// backup creates the pre-restore snapshot row, records it as the job's
// backup, captures /config into it and records its archive as the snapshot
// function records any. A previous attempt's unfinished row is reused, so
// its key is the same and the stale upload is replaced.
func (r *run) backup(ctx context.Context) error {
	j := &r.j
	r.at = PhaseBackingUp
	b, fresh := j.Backup, j.Backup.ID == ""
	if fresh {
		id := uuid.NewString()
		b = backup{ID: id, Status: SnapshotCreating, StoragePath: homesnap.ArchiveKey(j.Target.UserID, j.TargetSessionID, id)}
	}
	// The backup names its job, for a reader of the snapshot alone; the
	// job's row is what links them.
	meta, err := json.Marshal(map[string]string{"restoreJobId": j.ID})
	if err != nil {
		return err
	}
	if err := r.alive(ctx); err != nil {
		return err
	}
	err = r.f.svc.Commit(ctx, func(tx pgx.Tx) ([]cloudevents.Event, error) {
		if fresh {
			if _, err := tx.Exec(ctx, insertBackupSQL, b.ID, j.TargetSessionID, j.Target.UserID,
				"Before restore "+j.ID, b.StoragePath, meta); err != nil {
				return nil, err
			}
		}
		if _, err := tx.Exec(ctx, backingUpSQL, j.ID, b.ID, PhaseBackingUp); err != nil {
			return nil, err
		}
		ev, err := progressed(*j, PhaseBackingUp)
		return []cloudevents.Event{ev}, err
	})
	if err != nil {
		return err
	}
	j.Backup, j.Phase = b, PhaseBackingUp
	m, err := r.f.capture.Capture(ctx, r.pod, j.Backup.StoragePath, map[string]string{
		"snapshot": j.Backup.ID, "session": j.TargetSessionID, "user": j.Target.UserID, "restoreJob": j.ID})
	if err != nil {
		r.backupFailed(err)
		return err
	}
	rec := m.Record(homesnap.ManifestKey(j.Backup.StoragePath))
	raw, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if err := r.alive(ctx); err != nil {
		return err
	}
	err = r.f.svc.Commit(ctx, func(tx pgx.Tx) ([]cloudevents.Event, error) {
		_, err := tx.Exec(ctx, backupDoneSQL, j.Backup.ID, m.SizeBytes, raw)
		return nil, err
	})
	if err != nil {
		return err
	}
	j.Backup.Status, j.Backup.Archive = SnapshotAvailable, rec
	return nil
}

// backupFailed marks the backup row failed, as a failed snapshot is, so it
// is not listed as a usable snapshot; the job's own failure is recorded by
// its caller.
func (r *run) backupFailed(cause error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stage := homesnap.StageOf(cause)
	inner := cause
	var he *homesnap.Error
	if errors.As(cause, &he) {
		inner = he.Err
	}
	reason := truncate(strings.ToValidUTF8(inner.Error(), "?"), 4000)
	rec, err := json.Marshal(homesnap.FailureRecord{Stage: stage, Error: reason})
	if err == nil {
		err = r.f.svc.Commit(ctx, func(tx pgx.Tx) ([]cloudevents.Event, error) {
			_, err := tx.Exec(ctx, backupFailedSQL, r.j.Backup.ID, fmt.Sprintf("%s: %s", stage, reason), rec)
			return nil, err
		})
	}
	if err != nil {
		r.f.svc.Log.Warn("mark pre-restore backup failed", "restoreJob", r.j.ID, "error", err, "cause", cause)
	}
}

// replace clears /config, extracts the archive at key re-packed from
// checked entries, checks every restored entry is there and gives the files
// to the session's user. It returns the number of entries restored.
func (r *run) replace(ctx context.Context, key string, pin objstore.Pin, want archive.Expect) (int64, error) {
	if err := r.clear(ctx); err != nil {
		return 0, err
	}
	if err := r.phase(ctx, PhaseExtracting); err != nil {
		return 0, err
	}
	restored, err := r.extract(ctx, key, pin, want)
	if err != nil {
		return 0, err
	}
	if err := r.phase(ctx, PhaseVerifying); err != nil {
		return 0, err
	}
	if err := r.verify(ctx, restored); err != nil {
		return 0, err
	}
	if err := r.chown(ctx); err != nil {
		return 0, err
	}
	return int64(restored.Len()), nil
}

// again runs once, which runs one command in the pod, and runs it again
// while its exec's stream broke (kube.StreamBroke), up to kube.Attempts in
// all (docs/restore.md, "Broken exec streams"). once returns its exec's
// failure, or its output found cut short, as execErr, apart from any other
// failure (a re-pack's refusal, a storage read, a clear before it), which
// ends it at once. Before another attempt the session's pod is found again
// by its label: a pod that is gone, or was replaced, ends it too.
func (r *run) again(ctx context.Context, once func(attempt int) (execErr, err error)) error {
	for attempt := 1; ; attempt++ {
		execErr, err := once(attempt)
		if err != nil || execErr == nil {
			return err
		}
		if !kube.StreamBroke(ctx, execErr) || attempt == kube.Attempts {
			if attempt > 1 {
				return fmt.Errorf("%w (attempt %d of %d)", execErr, attempt, kube.Attempts)
			}
			return execErr
		}
		if err := r.alive(ctx); err != nil {
			return fmt.Errorf("%w; not run again: %w", execErr, err)
		}
		r.f.svc.Log.Warn("restore: exec stream broke, running the command again",
			"restoreJob", r.j.ID, "phase", r.at, "attempt", attempt, "error", execErr)
		if err := r.samePod(ctx); err != nil {
			return fmt.Errorf("%w; not run again: %w", execErr, err)
		}
	}
}

// samePod checks that the job's pod is still the session's Running and
// Ready pod.
func (r *run) samePod(ctx context.Context) error {
	p, err := r.f.pods.SessionPod(ctx, kube.Namespace(r.j.Target.Namespace, r.f.cfg.Namespace), r.j.TargetSessionID)
	if err != nil {
		return err
	}
	if p.Name != r.pod.Name {
		return fmt.Errorf("the session's pod %s was replaced by %s", r.pod.Name, p.Name)
	}
	return nil
}

// clear empties /config. Running it again only deletes what is left.
func (r *run) clear(ctx context.Context) error {
	return r.again(ctx, func(int) (error, error) {
		if err := r.f.pods.Exec(ctx, r.pod, clearCmd, kube.Streams{}); err != nil {
			return fmt.Errorf("clear /config: %w", err), nil
		}
		return nil, nil
	})
}

// chown gives /config to the session's user. Running it again gives the
// same owner.
func (r *run) chown(ctx context.Context) error {
	return r.again(ctx, func(int) (error, error) {
		if err := r.f.pods.Exec(ctx, r.pod, chownCmd(r.pod.UID, r.pod.GID), kube.Streams{}); err != nil {
			return fmt.Errorf("chown /config: %w", err), nil
		}
		return nil, nil
	})
}

// extract streams the object at key, pinned, through archive.Repack into
// the pod's tar. An attempt whose exec stream broke may have left part of
// the archive in /config: the next one clears it again and reads the
// object afresh, pinned and re-checked as the first.
func (r *run) extract(ctx context.Context, key string, pin objstore.Pin, want archive.Expect) (*archive.NameSet, error) {
	var restored *archive.NameSet
	err := r.again(ctx, func(attempt int) (execErr, err error) {
		if attempt > 1 {
			if err := r.clear(ctx); err != nil {
				return nil, err
			}
		}
		restored, execErr, err = r.extractOnce(ctx, key, pin, want)
		return execErr, err
	})
	return restored, err
}

// errTarStopped is what Repack meets when the pod's tar stops reading.
var errTarStopped = errors.New("the pod's tar stopped reading")

// extractOnce is one attempt of extract. A failure on either side stops
// the other; the exec's failure is returned as execErr unless the re-pack
// failed first, on its own.
func (r *run) extractOnce(ctx context.Context, key string, pin objstore.Pin, want archive.Expect) (restored *archive.NameSet, execErr, err error) {
	body, _, err := r.f.objects.Get(ctx, key, pin)
	if err != nil {
		return nil, nil, err
	}
	defer body.Close()
	pr, pw := io.Pipe()
	type result struct {
		sum archive.Summary
		err error
	}
	done := make(chan result, 1)
	go func() {
		sum, err := archive.Repack(ctx, pw, body, r.f.cfg.limits(), &want)
		// A failed re-pack ends the pod's stdin (the exec's stdin copy
		// stops at the error): its tar stops at a stream without an end,
		// and the exec is waited for, so no tar of a failed extract is
		// still writing when a rollback clears /config. The failure itself
		// is the re-pack's, whatever the tar's status.
		pw.CloseWithError(err)
		done <- result{sum, err}
	}()
	execErr = r.f.pods.Exec(ctx, r.pod, extractCmd, kube.Streams{Stdin: pr})
	pr.CloseWithError(errTarStopped)
	res := <-done
	switch {
	case res.err != nil && !errors.Is(res.err, errTarStopped):
		return nil, nil, fmt.Errorf("re-pack the archive: %w", res.err)
	case execErr != nil:
		return nil, fmt.Errorf("extract into /config: %w", execErr), nil
	case res.err != nil:
		// The exec read as a success, but the pod's tar stopped reading
		// before the stream's end: the stream was cut short on its way.
		return nil, fmt.Errorf("extract into /config: %w", res.err), nil
	}
	return res.sum.Restored, nil, nil
}

// verify counts, in the pod, the restored entries that are there; every one
// must be. Files the session created meanwhile are not counted. The listing
// changes nothing, so one cut short is simply made again: one that does not
// end with a NUL, and one that lacks restored entries, since a listing cut
// between two names looks just like that (docs/restore.md).
func (r *run) verify(ctx context.Context, restored *archive.NameSet) error {
	return r.again(ctx, func(int) (error, error) {
		pr, pw := io.Pipe()
		type result struct {
			n   int
			err error
		}
		done := make(chan result, 1)
		go func() {
			n, err := restored.CountPresent(pr)
			pr.CloseWithError(err)
			done <- result{n, err}
		}()
		err := r.f.pods.Exec(ctx, r.pod, listCmd, kube.Streams{Stdout: pw})
		pw.CloseWithError(err)
		res := <-done
		switch {
		case err != nil:
			return fmt.Errorf("list /config: %w", err), nil
		case res.err != nil:
			return fmt.Errorf("list /config: cut short: %w", res.err), nil
		case res.n != restored.Len():
			return fmt.Errorf("verify: %d of %d restored entries are in /config", res.n, restored.Len()), nil
		}
		return nil, nil
	})
}

// finish records a completed job, its snapshot available again, and the
// processed event, in one transaction.
func (r *run) finish(ctx context.Context, files int64) error {
	if err := r.alive(ctx); err != nil {
		return err
	}
	_, err := r.f.svc.Once(ctx, r.e, func(tx pgx.Tx) ([]cloudevents.Event, error) {
		if _, err := tx.Exec(ctx, finishJobSQL, r.j.ID, JobCompleted, "", SnapshotAvailable,
			PhaseCompleted, "", false, false); err != nil {
			return nil, err
		}
		ev, err := completed(r.j, files)
		return []cloudevents.Event{ev}, err
	})
	if err == nil {
		r.recorded = true
	}
	return err
}

// fail ends the job as failed. After /config was cleared it first puts the
// backup back; if that fails too, every admin is notified. rejected, when
// not nil, is the vet's verdict on the snapshot, which then becomes failed:
// no later restore of it could pass.
func (r *run) fail(ctx context.Context, cause, rejected error) error {
	if errors.Is(context.Cause(ctx), db.ErrLeaseLost) {
		return cause
	}
	reason := cause.Error()
	// The phase that failed, before a rollback moves on to its own.
	failedIn := r.at
	rollbackFailed := false
	if r.cleared {
		if err := r.rollback(ctx); err != nil {
			rollbackFailed = true
			reason += "; rollback failed: " + err.Error()
			r.f.svc.Log.Error("restore rollback failed: /config is not as before the restore",
				"restoreJob", r.j.ID, "session", r.j.TargetSessionID, "backup", r.j.Backup.ID, "error", err)
		} else {
			r.rolledBack = true
			reason += "; /config was rolled back to the pre-restore snapshot " + r.j.Backup.ID
		}
	}
	if errors.Is(r.alive(ctx), db.ErrLeaseLost) {
		// Another owner took the job over during the rollback: it rolls
		// back and records the outcome; this one must not write.
		return cause
	}
	snapStatus := SnapshotAvailable
	if errors.Is(rejected, archive.ErrRejected) {
		snapStatus = SnapshotFailed
	}
	// The outcome is recorded even when the job's own time ran out.
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	_, err := r.f.svc.Once(wctx, r.e, func(tx pgx.Tx) ([]cloudevents.Event, error) {
		if _, err := tx.Exec(wctx, finishJobSQL, r.j.ID, JobFailed, truncate(reason, 4000), snapStatus,
			PhaseFailed, failedIn, r.rolledBack, rollbackFailed); err != nil {
			return nil, err
		}
		if rollbackFailed {
			data, err := json.Marshal(map[string]string{"restoreJobId": r.j.ID, "sessionId": r.j.TargetSessionID,
				"snapshotId": r.j.SnapshotID, "backupSnapshotId": r.j.Backup.ID, "userId": r.j.Target.UserID})
			if err != nil {
				return nil, err
			}
			if _, err := tx.Exec(wctx, notifyAdminsSQL, "Restore failed and could not be rolled back",
				fmt.Sprintf("Restoring snapshot %s into session %s failed after its files were cleared, and putting back the pre-restore snapshot %s failed too. The session's /config needs an operator.",
					r.j.SnapshotID, r.j.TargetSessionID, r.j.Backup.ID), data); err != nil {
				return nil, err
			}
		}
		ev, err := failed(r.j, reason, r.rolledBack, rollbackFailed)
		return []cloudevents.Event{ev}, err
	})
	if err != nil {
		return errors.Join(cause, err)
	}
	r.recorded = true
	return cause
}

// rollback puts the pre-restore backup back into /config: clear, extract
// (re-packed and checked like any archive), verify, chown. The backup is
// read as any snapshot is, through its manifest, which must describe the
// archive the job recorded.
func (r *run) rollback(ctx context.Context) error {
	b := r.j.Backup
	if b.ID == "" || b.Status != SnapshotAvailable {
		return errors.New("no pre-restore backup to roll back to")
	}
	// The rollback gets its own time, as the job's may be what ran out,
	// and keeps the lease itself, as the job's keeping ends with the job's
	// time. It stops as soon as the lease is lost: the new owner rolls back.
	ctx, stop := leased(ctx, r.lease, r.f.cfg.JobTimeout)
	defer stop()
	if err := r.phase(ctx, PhaseRollingBack); err != nil {
		return err
	}
	if r.pod.Name == "" {
		return errors.New("the session has no pod")
	}
	want, pin, err := r.f.manifests.Manifest(ctx, b.StoragePath)
	if err != nil {
		return fmt.Errorf("read the backup's manifest: %w", err)
	}
	if a := b.Archive; pin.ETag != a.ETag || pin.VersionID != a.VersionID || want.SHA256 != a.SHA256 || want.Entries != a.Entries {
		return fmt.Errorf("the backup's manifest describes another archive than the one recorded in snapshot %s", b.ID)
	}
	if err := r.clear(ctx); err != nil {
		return err
	}
	restored, err := r.extract(ctx, b.StoragePath, pin, want)
	if err != nil {
		return err
	}
	if err := r.verify(ctx, restored); err != nil {
		return err
	}
	return r.chown(ctx)
}
