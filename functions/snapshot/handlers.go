package function

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/errs"
	"github.com/streamspace-dev/functions/shared/homesnap"
	"github.com/streamspace-dev/functions/shared/runtime"
)

// CreateResult is the answer of POST …/snapshots, StreamSpace's.
type CreateResult struct {
	Message    string `json:"message"`
	SnapshotID string `json:"snapshotId"`
	Status     Status `json:"status"`
}

// ListResult is a page of snapshots: StreamSpace's {snapshots, count}, with
// the page asked for and the total.
type ListResult struct {
	Snapshots []Snapshot `json:"snapshots"`
	Count     int        `json:"count"`
	// SessionID is set on a session's list, as StreamSpace answers it.
	SessionID  string `json:"sessionId,omitempty"`
	TotalCount int    `json:"totalCount"`
	Page       int    `json:"page"`
	Limit      int    `json:"limit"`
}

// DeleteResult is the answer of DELETE …/snapshots/{snapshotId}.
type DeleteResult struct {
	Message    string `json:"message"`
	SnapshotID string `json:"snapshotId"`
}

// ConfigResult is the answer of PUT …/snapshots/config.
type ConfigResult struct {
	Message string         `json:"message"`
	Config  SnapshotConfig `json:"config"`
}

func (f *Function) createSnapshot(w http.ResponseWriter, r *http.Request, who authn.Identity) error {
	sid, err := sessionID(r)
	if err != nil {
		return err
	}
	var req CreateRequest
	if err := runtime.DecodeJSON(r, &req); err != nil {
		return err
	}
	in, err := req.Validate()
	if err != nil {
		return err
	}
	var s Snapshot
	err = f.svc.Commit(r.Context(), func(tx pgx.Tx) ([]cloudevents.Event, error) {
		var err error
		s, err = f.newSnapshot(r.Context(), tx, who, sid, in)
		if err != nil {
			return nil, err
		}
		e, err := requested(s)
		return []cloudevents.Event{e}, err
	})
	if err != nil {
		return fmt.Errorf("create snapshot of %s: %w", sid, err)
	}
	runtime.AddLogAttrs(r.Context(), slog.String("snapshotId", s.ID))
	runtime.WriteJSON(w, http.StatusCreated, CreateResult{Message: "Snapshot creation initiated", SnapshotID: s.ID, Status: Creating})
	return nil
}

// newSnapshot checks that who may snapshot session sid now and writes its
// row, in tx. The session is locked so its state cannot change under the
// check; the user's quota is checked under its own lock.
func (f *Function) newSnapshot(ctx context.Context, tx pgx.Tx, who authn.Identity, sid string, in CreateInput) (Snapshot, error) {
	sess, err := session(ctx, tx, who, sid, true)
	if err != nil {
		return Snapshot{}, err
	}
	if sess.State != runningState {
		state := sess.State
		if state == "" {
			state = "unknown"
		}
		return Snapshot{}, errs.E(errs.Conflict, "session %s is not running (state %s): a snapshot needs its pod", sid, state)
	}
	if sess.UserID == "" {
		return Snapshot{}, errs.E(errs.Conflict, "session %s has no owner to keep its snapshots", sid)
	}
	if err := checkQuota(ctx, tx, sess.UserID, f.quota); err != nil {
		return Snapshot{}, err
	}
	id := uuid.NewString()
	s := Snapshot{
		ID: id, SessionID: sid, UserID: sess.UserID, Name: in.Name, Description: in.Description,
		Type: in.Type, StoragePath: homesnap.ArchiveKey(sess.UserID, sid, id),
	}
	if err := insertSnapshot(ctx, tx, &s, in); err != nil {
		return Snapshot{}, err
	}
	return s, nil
}

func (f *Function) listSessionSnapshots(w http.ResponseWriter, r *http.Request, who authn.Identity) error {
	sid, err := sessionID(r)
	if err != nil {
		return err
	}
	p, err := parsePage(r.URL.Query())
	if err != nil {
		return err
	}
	var list []Snapshot
	var total int
	err = db.Read(r.Context(), f.svc.Pool, func(tx pgx.Tx) error {
		if _, err := session(r.Context(), tx, who, sid, false); err != nil {
			return err
		}
		var err error
		list, total, err = listSnapshots(r.Context(), tx, listSession, sid, p)
		return err
	})
	if err != nil {
		return db.Classify(err)
	}
	runtime.WriteJSON(w, http.StatusOK, ListResult{Snapshots: list, Count: len(list), SessionID: sid, TotalCount: total, Page: p.Number, Limit: p.Limit})
	return nil
}

func (f *Function) listUserSnapshots(w http.ResponseWriter, r *http.Request, who authn.Identity) error {
	p, err := parsePage(r.URL.Query())
	if err != nil {
		return err
	}
	var list []Snapshot
	var total int
	err = db.Read(r.Context(), f.svc.Pool, func(tx pgx.Tx) error {
		var err error
		list, total, err = listSnapshots(r.Context(), tx, listUser, who.Subject, p)
		return err
	})
	if err != nil {
		return db.Classify(err)
	}
	runtime.WriteJSON(w, http.StatusOK, ListResult{Snapshots: list, Count: len(list), TotalCount: total, Page: p.Number, Limit: p.Limit})
	return nil
}

func (f *Function) snapshotStats(w http.ResponseWriter, r *http.Request, who authn.Identity) error {
	var st Stats
	err := db.Read(r.Context(), f.svc.Pool, func(tx pgx.Tx) error {
		var err error
		st, err = stats(r.Context(), tx, who.Subject)
		return err
	})
	if err != nil {
		return db.Classify(err)
	}
	runtime.WriteJSON(w, http.StatusOK, st)
	return nil
}

func (f *Function) getSnapshot(w http.ResponseWriter, r *http.Request, who authn.Identity) error {
	sid, id, err := snapshotPath(r)
	if err != nil {
		return err
	}
	var s Snapshot
	err = db.Read(r.Context(), f.svc.Pool, func(tx pgx.Tx) error {
		if _, err := session(r.Context(), tx, who, sid, false); err != nil {
			return err
		}
		var err error
		s, err = getSnapshot(r.Context(), tx, sid, id, false)
		return err
	})
	if err != nil {
		return db.Classify(err)
	}
	runtime.WriteJSON(w, http.StatusOK, s)
	return nil
}

func (f *Function) deleteSnapshot(w http.ResponseWriter, r *http.Request, who authn.Identity) error {
	sid, id, err := snapshotPath(r)
	if err != nil {
		return err
	}
	var s Snapshot
	err = f.svc.Commit(r.Context(), func(tx pgx.Tx) ([]cloudevents.Event, error) {
		if _, err := session(r.Context(), tx, who, sid, false); err != nil {
			return nil, err
		}
		var err error
		if s, err = getSnapshot(r.Context(), tx, sid, id, true); err != nil {
			return nil, err
		}
		switch s.Status {
		case Deleted:
			return nil, errs.E(errs.NotFound, "snapshot %s not found", id)
		case Restoring:
			return nil, errs.E(errs.Conflict, "snapshot %s is being restored; delete it when the restore has finished", id)
		}
		_, err = tx.Exec(r.Context(), markDeletedSQL, id)
		return nil, err
	})
	if err != nil {
		return fmt.Errorf("delete snapshot %s: %w", id, db.Classify(err))
	}
	// A snapshot still being created has its objects removed by its job
	// when it finds the row deleted; the retention sweep removes whatever a
	// failure here leaves.
	if s.StoragePath != "" {
		if err := f.objects.Delete(r.Context(), s.StoragePath, homesnap.ManifestKey(s.StoragePath)); err != nil {
			runtime.Logger(r.Context()).Warn("snapshot objects not deleted; the retention sweep will", "snapshotId", id, "err", err)
		}
	}
	runtime.WriteJSON(w, http.StatusOK, DeleteResult{Message: "Snapshot deleted", SnapshotID: id})
	return nil
}

func (f *Function) getConfig(w http.ResponseWriter, r *http.Request, who authn.Identity) error {
	sid, err := sessionID(r)
	if err != nil {
		return err
	}
	var sess Session
	err = db.Read(r.Context(), f.svc.Pool, func(tx pgx.Tx) error {
		var err error
		sess, err = session(r.Context(), tx, who, sid, false)
		return err
	})
	if err != nil {
		return db.Classify(err)
	}
	runtime.WriteJSON(w, http.StatusOK, sess.Config)
	return nil
}

func (f *Function) putConfig(w http.ResponseWriter, r *http.Request, who authn.Identity) error {
	sid, err := sessionID(r)
	if err != nil {
		return err
	}
	// A key the body leaves out keeps its default.
	c := DefaultConfig()
	if err := runtime.DecodeJSON(r, &c); err != nil {
		return err
	}
	if c, err = c.Validate(); err != nil {
		return err
	}
	raw, err := json.Marshal(c)
	if err != nil {
		return err
	}
	err = f.svc.Commit(r.Context(), func(tx pgx.Tx) ([]cloudevents.Event, error) {
		if _, err := session(r.Context(), tx, who, sid, true); err != nil {
			return nil, err
		}
		_, err := tx.Exec(r.Context(), setConfigSQL, sid, raw)
		return nil, err
	})
	if err != nil {
		return fmt.Errorf("set snapshot config of %s: %w", sid, db.Classify(err))
	}
	runtime.WriteJSON(w, http.StatusOK, ConfigResult{Message: "Snapshot configuration updated", Config: c})
	return nil
}
