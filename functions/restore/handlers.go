package function

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/errs"
	"github.com/streamspace-dev/functions/shared/runtime"
)

// RestoreResult is the answer of POST …/restore: StreamSpace's shape.
type RestoreResult struct {
	Message         string    `json:"message"`
	RestoreJobID    string    `json:"restoreJobId"`
	SnapshotID      string    `json:"snapshotId"`
	TargetSessionID string    `json:"targetSessionId"`
	Status          JobStatus `json:"status"`
}

// StatusResult is the answer of GET …/restore/status: the snapshot's ten
// newest restore jobs, newest first.
type StatusResult struct {
	RestoreJobs []JobView `json:"restoreJobs"`
	Count       int       `json:"count"`
}

// canSee says whether who may see and restore the sessions and snapshots
// of owner: the owner and admins. Anyone else is answered 404.
func canSee(who authn.Identity, owner string) bool {
	return who.Role == authn.Admin || (owner != "" && who.Subject == owner)
}

// restore queues a restore job. In one transaction: the snapshot must be
// available and is marked restoring, the target must be a running session of
// the snapshot's owner with no restore pending or running, and the job row
// and its snapshot.restore.requested event are written. Any refusal rolls
// all of it back.
func (f *Function) restore(w http.ResponseWriter, r *http.Request, who authn.Identity) error {
	req, ids, err := readRestoreRequest(r)
	if err != nil {
		return err
	}
	in, err := req.Validate(ids)
	if err != nil {
		return err
	}
	ctx := r.Context()
	jobID := uuid.NewString()
	err = f.svc.Commit(ctx, func(tx pgx.Tx) ([]cloudevents.Event, error) {
		src, err := loadSession(ctx, tx, in.SessionID)
		if err != nil {
			return nil, err
		}
		if !canSee(who, src.UserID) {
			return nil, errs.E(errs.NotFound, "session %s not found", in.SessionID)
		}
		snap, err := loadSnapshot(ctx, tx, in.SnapshotID, in.SessionID)
		if err != nil {
			return nil, err
		}
		target := src
		if in.TargetSessionID != in.SessionID {
			if target, err = loadSession(ctx, tx, in.TargetSessionID); err != nil {
				return nil, errs.E(errs.NotFound, "targetSessionId: session %s not found", in.TargetSessionID)
			}
			// Another user's session is answered like a missing one.
			if target.UserID != src.UserID {
				return nil, errs.E(errs.NotFound, "targetSessionId: session %s not found", in.TargetSessionID)
			}
		}
		if snap.Status != SnapshotAvailable {
			return nil, errs.E(errs.Conflict, "snapshot %s is not available (status: %s)", in.SnapshotID, snap.Status)
		}
		if _, err := tx.Exec(ctx, lockSessionSQL, target.ID); err != nil {
			return nil, err
		}
		if target.State != SessionRunning {
			return nil, errs.E(errs.Conflict, "session %s is not running (state: %s): start it, then restore", target.ID, orNone(target.State))
		}
		var busy bool
		if err := tx.QueryRow(ctx, activeJobSQL, target.ID).Scan(&busy); err != nil {
			return nil, err
		}
		if busy {
			return nil, errs.E(errs.Conflict, "session %s already has a restore in progress", target.ID)
		}
		tag, err := tx.Exec(ctx, claimSnapshotSQL, snap.ID)
		if err != nil {
			return nil, err
		}
		if tag.RowsAffected() == 0 {
			return nil, errs.E(errs.Conflict, "snapshot %s is not available", in.SnapshotID)
		}
		if _, err := tx.Exec(ctx, insertJobSQL, jobID, snap.ID, src.ID, target.ID, src.UserID); err != nil {
			return nil, err
		}
		ev, err := requested(jobID, in, src.UserID)
		return []cloudevents.Event{ev}, err
	})
	if err != nil {
		return fmt.Errorf("restore snapshot %s: %w", in.SnapshotID, err)
	}
	runtime.WriteJSON(w, http.StatusAccepted, RestoreResult{
		Message: "Restore job initiated", RestoreJobID: jobID, SnapshotID: in.SnapshotID,
		TargetSessionID: in.TargetSessionID, Status: JobPending,
	})
	return nil
}

// status lists a snapshot's restore jobs.
func (f *Function) status(w http.ResponseWriter, r *http.Request, who authn.Identity) error {
	ids, err := readPathIDs(r).Validate()
	if err != nil {
		return err
	}
	ctx := r.Context()
	var jobs []JobView
	err = db.Read(ctx, f.svc.Pool, func(tx pgx.Tx) error {
		s, err := loadSession(ctx, tx, ids.SessionID)
		if err != nil {
			return err
		}
		if !canSee(who, s.UserID) {
			return errs.E(errs.NotFound, "session %s not found", ids.SessionID)
		}
		if _, err := loadSnapshot(ctx, tx, ids.SnapshotID, ids.SessionID); err != nil {
			return err
		}
		jobs, err = listJobs(ctx, tx, ids.SnapshotID)
		return err
	})
	if err != nil {
		return db.Classify(err)
	}
	runtime.WriteJSON(w, http.StatusOK, StatusResult{RestoreJobs: jobs, Count: len(jobs)})
	return nil
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// drain is the outbox-drain PingSource's handler: it sends what the outbox
// holds, and asks again for every stale job (staleJobsSQL) with a fresh
// snapshot.restore.requested, in one transaction with the restart of its
// clock. The job's lease makes a second ask harmless: a job that runs is
// acknowledged, one whose owner died is taken over, one that ended is not
// run again.
func (f *Function) drain(ctx context.Context, e cloudevents.Event) error {
	if err := f.svc.DrainOutbox(ctx, e); err != nil {
		return err
	}
	var asked int
	err := f.svc.Commit(ctx, func(tx pgx.Tx) ([]cloudevents.Event, error) {
		jobs, err := staleJobs(ctx, tx, f.cfg.JobTimeout+f.cfg.LeaseTTL)
		if err != nil {
			return nil, err
		}
		var evs []cloudevents.Event
		for _, j := range jobs {
			if _, err := tx.Exec(ctx, touchJobSQL, j.ID); err != nil {
				return nil, err
			}
			ev, err := requested(j.ID, RestoreInput{SnapshotID: j.SnapshotID, TargetSessionID: j.TargetSessionID}, j.UserID)
			if err != nil {
				return nil, err
			}
			evs = append(evs, ev)
		}
		asked = len(evs)
		return evs, nil
	})
	runtime.AddLogAttrs(ctx, slog.Int("staleRestoreJobsAsked", asked))
	return err
}
