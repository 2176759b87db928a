package function

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/streamspace-dev/functions/events"
	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/errs"
	"github.com/streamspace-dev/functions/shared/homesnap"
	"github.com/streamspace-dev/functions/shared/kube"
	"github.com/streamspace-dev/functions/shared/runtime"
)

// jobName is the long job's name in the metrics.
const jobName = "snapshot"

// leaseName is the job_leases row of snapshot id's job.
func leaseName(id string) string { return "snapshot:" + id }

// maxReason bounds the error message stored and emitted for a failure.
const maxReason = 1000

// errSnapshotFailed counts a recorded failure as a failed job.
var errSnapshotFailed = errors.New("snapshot failed")

// onRequested is the snapshot.requested handler: the job. The delivery
// stays open while it runs, under a lease renewed every third of its TTL.
//
//   - A snapshot that is no longer creating (done, failed, deleted) is
//     acknowledged with no effect: a redelivery after the job.
//   - A lease held by another owner means the job runs elsewhere; the
//     redelivery is acknowledged. If that owner dies, its lease runs out and
//     the snapshot-schedule tick asks again (staleJobs).
//   - A lease that ran out, or one this job takes for the first time, may
//     have left a multipart upload behind: it is aborted before the capture
//     starts again.
func (f *Function) onRequested(ctx context.Context, e cloudevents.Event) error {
	var d events.SnapshotRequestedData
	if err := e.DataAs(&d); err != nil {
		return errs.Wrap(errs.Invalid, err, "snapshot.requested: undecodable data")
	}
	runtime.AddLogAttrs(ctx, slog.String("snapshotId", d.SnapshotID))
	var s Snapshot
	var sess Session
	err := db.Read(ctx, f.svc.Pool, func(tx pgx.Tx) error {
		var err error
		if s, err = snapshotByID(ctx, tx, d.SnapshotID); err != nil {
			return err
		}
		sess, err = jobSession(ctx, tx, s.SessionID)
		return err
	})
	if errs.KindOf(err) == errs.NotFound {
		// StreamSpace deleted the session (and with it the row): nothing to
		// do; the retention sweep removes any object left.
		runtime.AddLogAttrs(ctx, slog.String("outcome", "gone"))
		return nil
	}
	if err != nil {
		return db.Classify(err)
	}
	if s.Status != Creating {
		runtime.AddLogAttrs(ctx, slog.String("outcome", "already "+string(s.Status)))
		runtime.MarkDuplicate(ctx)
		return nil
	}
	// A slot before the lease: a delivery that finds every slot taken is
	// answered 503 having changed nothing, and the broker (or, once its
	// retries are spent, the snapshot-schedule tick) asks again.
	release, err := f.slots.TryStart()
	if err != nil {
		runtime.AddLogAttrs(ctx, slog.String("outcome", "no job slot"))
		return err
	}
	defer release()
	// Each delivery is its own owner: a redelivery to this same instance
	// must not renew the running job's lease and run a second copy.
	owner := f.instance + "-" + uuid.NewString()[:8]
	lease, ok, err := db.AcquireLease(ctx, f.svc.Pool, leaseName(s.ID), owner, f.cfg.LeaseTTL)
	if err != nil {
		return err
	}
	if !ok {
		runtime.AddLogAttrs(ctx, slog.String("outcome", "running elsewhere"))
		runtime.MarkDuplicate(ctx)
		return nil
	}
	keep := lease.Keep(ctx, 0)
	defer func() {
		keep()
		if err := lease.Release(context.WithoutCancel(ctx)); err != nil {
			f.svc.Log.Warn("snapshot lease not released; it runs out by itself", "snapshotId", s.ID, "err", err)
		}
	}()

	job := f.svc.Job(jobName)
	job.Start()
	outcome, err := f.run(ctx, e, lease, s, sess)
	if outcome == Failed && err == nil {
		job.Done(errSnapshotFailed)
	} else {
		job.Done(err)
	}
	if errors.Is(err, db.ErrLeaseLost) {
		runtime.AddLogAttrs(ctx, slog.String("outcome", "taken over"))
		return nil
	}
	return err
}

// run takes snapshot s of sess and records the outcome, which it returns.
// A failure of the capture is recorded (row failed, snapshot.failed) and
// answered 2xx: a retry would fail the same way. Only a failure to record
// is returned as an error.
func (f *Function) run(ctx context.Context, e cloudevents.Event, lease *db.Lease, s Snapshot, sess Session) (Status, error) {
	// The job ends before the revision's timeoutSeconds would cut the
	// delivery, so the failure is recorded rather than retried forever.
	bounded, stop := context.WithTimeout(ctx, f.cfg.JobTimeout)
	defer stop()
	jobCtx, cancel := lease.Context(bounded)
	defer cancel()
	if n, err := f.objects.AbortUploads(jobCtx, s.StoragePath); err != nil {
		return Creating, fmt.Errorf("abort a stale upload of %s: %w", s.ID, err)
	} else if n > 0 {
		runtime.AddLogAttrs(ctx, slog.Int("staleUploadsAborted", n))
	}

	res, capErr := f.capture(jobCtx, s, sess)
	if context.Cause(jobCtx) == db.ErrLeaseLost {
		return Creating, db.ErrLeaseLost
	}
	if capErr != nil {
		if ctx.Err() != nil {
			// The delivery ended (the instance is stopping): the broker
			// retries, and the next owner takes over once the lease ends.
			return Creating, errs.Wrap(errs.Unavailable, capErr, "snapshot interrupted")
		}
		if errors.Is(bounded.Err(), context.DeadlineExceeded) {
			capErr = &homesnap.Error{Stage: homesnap.StageOf(capErr), Err: errs.E(errs.Conflict,
				"the snapshot did not finish within SNAPSHOT_JOB_TIMEOUT (%s)", f.cfg.JobTimeout)}
		}
		return Failed, f.fail(ctx, e, lease.Owner, s, capErr)
	}
	return Available, f.complete(ctx, e, lease.Owner, s, res)
}

// capture finds the session's pod and streams its /config to storage.
func (f *Function) capture(ctx context.Context, s Snapshot, sess Session) (homesnap.Result, error) {
	ns := kube.Namespace(sess.Namespace, f.cfg.Namespace)
	pod, err := f.pods.SessionPod(ctx, ns, sess.ID)
	if err != nil {
		return homesnap.Result{}, &homesnap.Error{Stage: homesnap.StagePod, Err: err}
	}
	runtime.AddLogAttrs(ctx, slog.String("pod", pod.Namespace+"/"+pod.Name))
	return homesnap.Capture(ctx, f.pods, f.objects, homesnap.Request{
		Pod:         pod,
		ArchiveKey:  s.StoragePath,
		ManifestKey: homesnap.ManifestKey(s.StoragePath),
		MaxBytes:    f.cfg.MaxBytes,
		MaxEntries:  f.cfg.MaxEntries,
		Level:       sess.Config.GzipLevel(),
		Progress: func(p homesnap.Progress) {
			err := f.svc.Commit(ctx, func(pgx.Tx) ([]cloudevents.Event, error) {
				e, err := progressed(s, p)
				return []cloudevents.Event{e}, err
			})
			if err != nil {
				f.svc.Log.Warn("snapshot progress not recorded", "snapshotId", s.ID, "err", err)
			}
		},
		ProgressEvery: f.cfg.ProgressInterval,
		Labels:        map[string]string{"snapshot-id": s.ID, "session-id": s.SessionID, "user-id": s.UserID},
	})
}

// complete records the stored archive: available, snapshot.completed.
// If the lease was lost, or the snapshot was deleted meanwhile, nothing is
// recorded; in the second case the objects just written are removed.
func (f *Function) complete(ctx context.Context, e cloudevents.Event, owner string, s Snapshot, res homesnap.Result) error {
	m := res.Manifest
	rec, err := json.Marshal(m.Record(res.ManifestObject.Key))
	if err != nil {
		return err
	}
	gone := false
	_, err = f.svc.Once(ctx, e, func(tx pgx.Tx) ([]cloudevents.Event, error) {
		if err := holdLease(ctx, tx, s.ID, owner); err != nil {
			return nil, err
		}
		tag, err := tx.Exec(ctx, completeSQL, s.ID, m.SizeBytes, rec)
		if err != nil {
			return nil, err
		}
		if tag.RowsAffected() == 0 {
			gone = true
			return nil, nil
		}
		ev, err := completed(s, m)
		return []cloudevents.Event{ev}, err
	})
	if err != nil {
		return err
	}
	if gone {
		runtime.AddLogAttrs(ctx, slog.String("outcome", "deleted while running"))
		return f.objects.Delete(ctx, s.StoragePath, res.ManifestObject.Key)
	}
	runtime.AddLogAttrs(ctx, slog.String("outcome", string(Available)), slog.Int64("sizeBytes", m.SizeBytes),
		slog.Int64("entries", m.Entries), slog.Int("warnings", len(m.Warnings)))
	if len(res.Broken) > 0 {
		runtime.AddLogAttrs(ctx, slog.Any("brokenStreams", res.Broken))
	}
	return nil
}

// fail records a failed capture: failed with the stage and the error,
// snapshot.failed.
func (f *Function) fail(ctx context.Context, e cloudevents.Event, owner string, s Snapshot, capErr error) error {
	stage := homesnap.StageOf(capErr)
	reason := failureMessage(capErr)
	rec, err := json.Marshal(homesnap.FailureRecord{Stage: stage, Error: reason})
	if err != nil {
		return err
	}
	message := fmt.Sprintf("%s: %s", stage, reason)
	_, err = f.svc.Once(ctx, e, func(tx pgx.Tx) ([]cloudevents.Event, error) {
		if err := holdLease(ctx, tx, s.ID, owner); err != nil {
			return nil, err
		}
		tag, err := tx.Exec(ctx, failSQL, s.ID, message, rec)
		if err != nil || tag.RowsAffected() == 0 {
			return nil, err
		}
		ev, err := failedEvent(s, message)
		return []cloudevents.Event{ev}, err
	})
	runtime.AddLogAttrs(ctx, slog.String("outcome", string(Failed)), slog.String("stage", string(stage)), slog.String("reason", reason))
	return err
}

// failureMessage is what a failed snapshot says: the message of a kinded
// error, and the cause of the others (a tar's stderr, the store's answer),
// bounded. It never holds a secret: neither the pod's streams nor the
// store's errors carry credentials.
func failureMessage(err error) string {
	var inner error = err
	var he *homesnap.Error
	if errors.As(err, &he) {
		inner = he.Err
	}
	msg := inner.Error()
	var ke *errs.Error
	if errors.As(inner, &ke) && ke.Kind != errs.Internal && ke.Kind != errs.Unavailable {
		msg = ke.Message
	}
	msg = strings.ToValidUTF8(msg, "?")
	if len(msg) > maxReason {
		msg = msg[:maxReason]
		msg = strings.ToValidUTF8(msg, "")
	}
	return msg
}

// holdLease fails with db.ErrLeaseLost unless owner still holds the lease of
// snapshot id, and keeps it held until the transaction ends.
func holdLease(ctx context.Context, tx pgx.Tx, id, owner string) error {
	var one int
	err := tx.QueryRow(ctx, leaseHeldSQL, leaseName(id), owner).Scan(&one)
	if errors.Is(err, pgx.ErrNoRows) {
		return db.ErrLeaseLost
	}
	return err
}
