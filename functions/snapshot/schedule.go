package function

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"log/slog"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/errs"
	"github.com/streamspace-dev/functions/shared/homesnap"
	"github.com/streamspace-dev/functions/shared/objstore"
	"github.com/streamspace-dev/functions/shared/runtime"
)

// Bounds of one tick's work, so a tick stays within its delivery.
const (
	retentionBatch = 1000
	scheduleBatch  = 1000
	// staleUploadAge is how old an unfinished multipart upload must be for
	// the sweep to abort it: far beyond any job (SNAPSHOT_JOB_TIMEOUT).
	staleUploadAge = 24 * time.Hour
	// firstRunWindow is how far back a session that never had an automatic
	// snapshot looks for a due time, so enabling the schedule shortly after
	// its hour still takes today's.
	firstRunWindow = time.Hour
)

// onRetention is the daily snapshot-retention tick: retention, then the
// sweep of objects whose row is gone (StreamSpace's foreign keys delete a
// session's or a user's snapshot rows with it and leave the objects) or
// deleted, and of multipart uploads left unfinished.
func (f *Function) onRetention(ctx context.Context, _ cloudevents.Event) error {
	retired, err := f.enforceRetention(ctx)
	runtime.AddLogAttrs(ctx, slog.Int("snapshotsRetired", retired))
	if err != nil {
		return err
	}
	swept, aborted, err := f.sweep(ctx)
	runtime.AddLogAttrs(ctx, slog.Int("orphanObjectsDeleted", swept), slog.Int("staleUploadsAborted", aborted))
	return err
}

// enforceRetention marks what retentionSQL finds deleted and removes its
// objects; an object that cannot be removed now is swept later.
func (f *Function) enforceRetention(ctx context.Context) (int, error) {
	var ids []string
	err := db.Read(ctx, f.svc.Pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, retentionSQL, retentionBatch)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var id, path, why string
			if err := rows.Scan(&id, &path, &why); err != nil {
				return err
			}
			ids = append(ids, id)
		}
		return rows.Err()
	})
	if err != nil || len(ids) == 0 {
		return 0, db.Classify(err)
	}
	var keys []string
	n := 0
	err = f.svc.Commit(ctx, func(tx pgx.Tx) ([]cloudevents.Event, error) {
		rows, err := tx.Query(ctx, retireSQL, ids)
		if err != nil {
			return nil, err
		}
		defer rows.Close()
		for rows.Next() {
			var id, path string
			if err := rows.Scan(&id, &path); err != nil {
				return nil, err
			}
			n++
			if path != "" {
				keys = append(keys, path, homesnap.ManifestKey(path))
			}
		}
		return nil, rows.Err()
	})
	if err != nil {
		return 0, db.Classify(fmt.Errorf("retire snapshots: %w", err))
	}
	if err := f.objects.Delete(ctx, keys...); err != nil {
		f.svc.Log.Warn("retired snapshots' objects not deleted; the sweep will", "err", err)
	}
	return n, nil
}

// sweep deletes the objects under homesnap.Prefix whose snapshot row is
// deleted, or missing and older than SweepGrace, and aborts multipart
// uploads older than a day.
func (f *Function) sweep(ctx context.Context) (deleted, aborted int, err error) {
	grace := time.Now().Add(-f.cfg.SweepGrace)
	batch := make([]objstore.Object, 0, retentionBatch)
	flush := func() error {
		n, err := f.sweepBatch(ctx, batch, grace)
		deleted += n
		batch = batch[:0]
		return err
	}
	err = f.objects.List(ctx, homesnap.Prefix, func(o objstore.Object) error {
		batch = append(batch, o)
		if len(batch) == cap(batch) {
			return flush()
		}
		return nil
	})
	if err == nil && len(batch) > 0 {
		err = flush()
	}
	if err != nil {
		return deleted, 0, err
	}
	ups, err := f.objects.Uploads(ctx, homesnap.Prefix)
	if err != nil {
		return deleted, 0, err
	}
	for _, u := range ups {
		if time.Since(u.Initiated) < staleUploadAge {
			continue
		}
		n, err := f.objects.AbortUploads(ctx, u.Key)
		if err != nil {
			return deleted, aborted, err
		}
		aborted += n
	}
	return deleted, aborted, nil
}

func (f *Function) sweepBatch(ctx context.Context, objs []objstore.Object, grace time.Time) (int, error) {
	ids := make([]string, 0, len(objs))
	for _, o := range objs {
		if id, ok := homesnap.SnapshotID(o.Key); ok {
			ids = append(ids, id)
		}
	}
	live := map[string]bool{}
	known := map[string]bool{}
	err := db.Read(ctx, f.svc.Pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, liveSQL, ids)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var id string
			var alive bool
			if err := rows.Scan(&id, &alive); err != nil {
				return err
			}
			known[id], live[id] = true, alive
		}
		return rows.Err()
	})
	if err != nil {
		return 0, db.Classify(err)
	}
	var doomed []string
	for _, o := range objs {
		id, ok := homesnap.SnapshotID(o.Key)
		switch {
		case !ok, live[id]:
		case known[id], o.LastModified.Before(grace):
			doomed = append(doomed, o.Key)
		}
	}
	if err := f.objects.Delete(ctx, doomed...); err != nil {
		return 0, err
	}
	return len(doomed), nil
}

// onSchedule is the snapshot-schedule tick (every few minutes): it asks
// again for the jobs nobody runs, and takes the automatic snapshots due.
func (f *Function) onSchedule(ctx context.Context, _ cloudevents.Event) error {
	again, abandoned, err := f.staleJobs(ctx)
	runtime.AddLogAttrs(ctx, slog.Int("jobsRequestedAgain", again), slog.Int("jobsAbandoned", abandoned))
	if err != nil {
		return err
	}
	started, err := f.automatic(ctx, time.Now())
	runtime.AddLogAttrs(ctx, slog.Int("automaticSnapshots", started))
	return err
}

// staleJobs emits snapshot.requested again for each snapshot creating with
// no live lease, and fails those too old to try again: a snapshot is never
// left creating.
func (f *Function) staleJobs(ctx context.Context) (again, abandoned int, err error) {
	wait := max(2*f.cfg.LeaseTTL, 5*time.Minute)
	giveUp := 3 * f.cfg.JobTimeout
	err = f.svc.Commit(ctx, func(tx pgx.Tx) ([]cloudevents.Event, error) {
		rows, err := tx.Query(ctx, staleSQL, wait.Seconds(), giveUp.Seconds())
		if err != nil {
			return nil, err
		}
		var stale []Snapshot
		var old []bool
		for rows.Next() {
			var s Snapshot
			var meta []byte
			var tooOld bool
			if err := rows.Scan(&s.ID, &s.SessionID, &s.UserID, &s.Name, &s.Description, &s.Type, &s.Status,
				&s.StoragePath, &s.SizeBytes, &meta, &s.CreatedAt, &s.CompletedAt, &s.ExpiresAt, &s.ErrorMessage, &tooOld); err != nil {
				rows.Close()
				return nil, err
			}
			stale, old = append(stale, s), append(old, tooOld)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
		var evs []cloudevents.Event
		for i, s := range stale {
			var e cloudevents.Event
			var err error
			if _, perr := uuid.Parse(s.ID); perr != nil {
				// A row StreamSpace's own API left creating (its ids are
				// not UUIDs, so no event can name it): failed, silently.
				msg := fmt.Sprintf("%s: created by another producer and never finished", stageAbandoned)
				rec, err := json.Marshal(homesnap.FailureRecord{Stage: stageAbandoned, Error: msg})
				if err != nil {
					return nil, err
				}
				if _, err := tx.Exec(ctx, failSQL, s.ID, msg, rec); err != nil {
					return nil, err
				}
				abandoned++
				continue
			}
			if old[i] {
				msg := fmt.Sprintf("%s: no job finished it within %s", stageAbandoned, giveUp)
				rec, err := json.Marshal(homesnap.FailureRecord{Stage: stageAbandoned, Error: msg})
				if err != nil {
					return nil, err
				}
				if _, err := tx.Exec(ctx, failSQL, s.ID, msg, rec); err != nil {
					return nil, err
				}
				e, err = failedEvent(s, msg)
				abandoned++
			} else {
				e, err = requested(s)
				again++
			}
			if err != nil {
				return nil, err
			}
			evs = append(evs, e)
		}
		return evs, nil
	})
	return again, abandoned, db.Classify(err)
}

// stageAbandoned is the stage of a snapshot no job finished.
const stageAbandoned homesnap.Stage = "abandoned"

// automatic creates, in one transaction, the automatic snapshots due at
// now, at most as many as SNAPSHOT_AUTO_CONCURRENCY leaves room for; the
// others stay due and are taken on a later tick.
func (f *Function) automatic(ctx context.Context, now time.Time) (int, error) {
	started := 0
	err := f.svc.Commit(ctx, func(tx pgx.Tx) ([]cloudevents.Event, error) {
		if _, err := tx.Exec(ctx, scheduleLockSQL); err != nil {
			return nil, err
		}
		type candidate struct {
			session, user string
			config        []byte
			sinceLast     *float64
		}
		rows, err := tx.Query(ctx, dueSQL, scheduleBatch)
		if err != nil {
			return nil, err
		}
		var cands []candidate
		var running int64
		for rows.Next() {
			var c candidate
			if err := rows.Scan(&c.session, &c.user, &c.config, &c.sinceLast, &running); err != nil {
				rows.Close()
				return nil, err
			}
			cands = append(cands, c)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, err
		}
		room := int64(f.cfg.AutoConcurrency) - running
		var evs []cloudevents.Event
		for _, c := range cands {
			if room <= 0 {
				break
			}
			cfg := readConfig(c.config)
			var last time.Time
			if c.sinceLast != nil {
				last = now.Add(-time.Duration(*c.sinceLast * float64(time.Second)))
			}
			due, at := Due(cfg.AutomaticSnapshots, c.session, last, now, f.cfg.AutoJitter)
			if !due {
				continue
			}
			s, err := f.autoSnapshot(ctx, tx, c.session, c.user, at)
			if errs.KindOf(err) == errs.Conflict {
				// Over quota: skipped until the user makes room.
				f.svc.Log.Info("automatic snapshot skipped", "sessionId", c.session, "reason", errs.Message(err))
				continue
			}
			if err != nil {
				return nil, err
			}
			e, err := requested(s)
			if err != nil {
				return nil, err
			}
			evs = append(evs, e)
			room--
			started++
		}
		return evs, nil
	})
	return started, db.Classify(err)
}

// autoSnapshot writes the row of an automatic snapshot of session, in a
// savepoint so a refused one (quota) leaves the tick's transaction usable.
func (f *Function) autoSnapshot(ctx context.Context, tx pgx.Tx, session, user string, at time.Time) (Snapshot, error) {
	var s Snapshot
	err := pgx.BeginFunc(ctx, tx, func(sp pgx.Tx) error {
		if err := checkQuota(ctx, sp, user, f.quota); err != nil {
			return err
		}
		id := uuid.NewString()
		s = Snapshot{
			ID: id, SessionID: session, UserID: user, Type: Automatic,
			Name:        "Automatic snapshot " + at.UTC().Format("2006-01-02 15:04 UTC"),
			StoragePath: homesnap.ArchiveKey(user, session, id),
		}
		return insertSnapshot(ctx, sp, &s, CreateInput{Metadata: []byte("{}")})
	})
	return s, err
}

// Due reports whether an automatic snapshot of session is due at now, and
// the scheduled time it is for: the first time the schedule (in its zone)
// names after the last automatic snapshot (or, for a session that never
// had one, after firstRunWindow ago), plus the session's fixed jitter.
func Due(c AutomaticConfig, session string, last, now time.Time, jitter time.Duration) (bool, time.Time) {
	if !c.Enabled {
		return false, time.Time{}
	}
	sched, loc, err := c.schedule()
	if err != nil {
		return false, time.Time{}
	}
	offset := Jitter(session, jitter)
	from := last
	if from.IsZero() {
		from = now.Add(-firstRunWindow - offset)
	} else {
		// The last one ran at its scheduled time plus the offset; look from
		// that scheduled time.
		from = from.Add(-offset)
	}
	next := sched.Next(from.In(loc))
	if next.IsZero() {
		return false, time.Time{}
	}
	at := next.Add(offset)
	return !at.After(now), next
}

// Jitter is session's fixed offset within window: the same on every tick,
// different across sessions, so their automatic snapshots spread out.
func Jitter(session string, window time.Duration) time.Duration {
	if window <= 0 {
		return 0
	}
	h := fnv.New64a()
	_, _ = h.Write([]byte(session))
	return time.Duration(h.Sum64() % uint64(window))
}
