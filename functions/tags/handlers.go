package function

import (
	"context"
	"log/slog"
	"net/http"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/runtime"
)

// Outcome is what a batch did to one session.
type Outcome string

// The outcomes of one session in a batch.
const (
	// Updated: the session now carries the tags as asked.
	Updated Outcome = "updated"
	// NotFound: the caller has no session with this id. A session of
	// another user is reported the same way, so a batch cannot be used to
	// learn which session ids exist.
	NotFound Outcome = "not_found"
)

// batchCompleted is the batch_operations status of a finished batch, as
// StreamSpace's job API reports it. A batch runs in one statement, so there
// is no pending or running state to see.
const batchCompleted = "completed"

// SessionResult is one session's outcome.
type SessionResult struct {
	SessionID string  `json:"sessionId"`
	Outcome   Outcome `json:"outcome"`
}

// BatchResult is the response of a batch tag operation. JobID, Status and
// Message are the fields StreamSpace's own batch endpoint answers with
// (JobID is BatchID, the batch_operations id), so a client of its job API
// can follow the batch there as well.
type BatchResult struct {
	BatchID   string          `json:"batchId"`
	Operation Operation       `json:"operation"`
	Tags      []string        `json:"tags"`
	Total     int             `json:"total"`
	Updated   int             `json:"updated"`
	NotFound  int             `json:"notFound"`
	JobID     string          `json:"jobId"`
	Status    string          `json:"status"`
	Message   string          `json:"message"`
	Results   []SessionResult `json:"results"`
}

// updateTags serves POST /api/v1/batch/sessions/update-tags.
func (f *Function) updateTags(w http.ResponseWriter, r *http.Request, who authn.Identity) error {
	var req BatchRequest
	if err := runtime.DecodeJSON(r, &req); err != nil {
		return err
	}
	batch, err := req.Validate()
	if err != nil {
		return err
	}
	res, err := f.apply(r.Context(), who, batch)
	if err != nil {
		return err
	}
	runtime.WriteJSON(w, http.StatusOK, res)
	return nil
}

// apply runs batch for who as one unit of work: one statement changes every
// session who may change, a batch_operations row records the outcome, and a
// session.tags.updated event is queued, all in one transaction.
func (f *Function) apply(ctx context.Context, who authn.Identity, batch Batch) (BatchResult, error) {
	var owner *string // admins may tag every session
	if !who.IsAdmin() {
		owner = &who.Subject
	}
	id := uuid.NewString()
	res := BatchResult{
		BatchID:   id,
		Operation: batch.Operation,
		Tags:      batch.Tags,
		Total:     len(batch.SessionIDs),
		JobID:     id,
		Status:    batchCompleted,
		Message:   "Batch tag update completed",
	}
	err := f.svc.Commit(ctx, func(tx pgx.Tx) ([]cloudevents.Event, error) {
		results, err := applyBatch(ctx, tx, owner, batch)
		if err != nil {
			return nil, err
		}
		res.Results, res.Updated, res.NotFound = results, 0, 0
		for _, r := range results {
			if r.Outcome == Updated {
				res.Updated++
			} else {
				res.NotFound++
			}
		}
		if err := recordBatch(ctx, tx, who.Subject, res); err != nil {
			return nil, err
		}
		return tagsUpdated(who.Subject, res)
	})
	if err != nil {
		return BatchResult{}, err
	}
	return res, nil
}

// TagCount is one tag and the number of catalog templates carrying it.
type TagCount struct {
	Tag   string `json:"tag"`
	Count int64  `json:"count"`
}

// popularTags serves GET /api/v1/search/filters/tags.
func (f *Function) popularTags(w http.ResponseWriter, r *http.Request, _ authn.Identity) error {
	p, err := PopularRequest{Query: r.URL.Query()}.Validate()
	if err != nil {
		return err
	}
	tags, err := f.cache.get(r.Context(), p.Category, p.Limit, f.loadPopular)
	if err != nil {
		return err
	}
	runtime.WriteJSON(w, http.StatusOK, tags)
	return nil
}

// loadPopular reads popular tags from catalog_tag_counts. A view found
// stale is refreshed first, unless another instance is refreshing it: then,
// as when the refresh fails, the counts already there are served.
func (f *Function) loadPopular(ctx context.Context, category *string, limit int) ([]TagCount, error) {
	tags, isStale, err := f.readView(ctx, category, limit)
	if err != nil || !isStale {
		return tags, err
	}
	outcome, err := f.refresh(ctx, true)
	if err != nil {
		f.svc.Log.WarnContext(ctx, "popular tags: refresh failed; serving the counts already there", "err", err)
		return tags, nil
	}
	if outcome == Busy {
		return tags, nil
	}
	tags, _, err = f.readView(ctx, category, limit)
	return tags, err
}

// readView reads popular tags and whether the view is stale, in a
// transaction of its own.
func (f *Function) readView(ctx context.Context, category *string, limit int) (tags []TagCount, isStale bool, err error) {
	err = f.svc.Commit(ctx, func(tx pgx.Tx) ([]cloudevents.Event, error) {
		tags, isStale, err = readPopular(ctx, tx, category, limit, f.maxStaleness)
		return nil, err
	})
	return tags, isStale, err
}

// refresh rebuilds catalog_tag_counts in a transaction of its own (with
// onlyIfStale, only when it is stale) and logs what it did.
func (f *Function) refresh(ctx context.Context, onlyIfStale bool) (Refresh, error) {
	if err := db.InTx(ctx, f.svc.Pool, func(tx pgx.Tx) error { return ensureRefreshJob(ctx, tx, f.instance) }); err != nil {
		return "", err
	}
	var outcome Refresh
	err := f.svc.Commit(ctx, func(tx pgx.Tx) ([]cloudevents.Event, error) {
		var err error
		outcome, err = refresh(ctx, tx, f.instance, onlyIfStale, f.maxStaleness)
		return nil, err
	})
	if err != nil {
		return "", err
	}
	runtime.AddLogAttrs(ctx, slog.String("refresh", string(outcome)))
	return outcome, nil
}

// onTemplateUpdated refreshes catalog_tag_counts and drops this instance's
// cached counts: a template's tags or category may have changed. When
// another instance is refreshing already, that refresh may have begun
// before the change, so the event leaves a request that makes the next
// read refresh again. A redelivered event changes nothing.
func (f *Function) onTemplateUpdated(ctx context.Context, e cloudevents.Event) error {
	if err := db.InTx(ctx, f.svc.Pool, func(tx pgx.Tx) error { return ensureRefreshJob(ctx, tx, f.instance) }); err != nil {
		return err
	}
	var outcome Refresh
	done, err := f.svc.Once(ctx, e, func(tx pgx.Tx) ([]cloudevents.Event, error) {
		var err error
		if outcome, err = refresh(ctx, tx, f.instance, false, f.maxStaleness); err != nil {
			return nil, err
		}
		if outcome == Busy {
			return nil, requestRefresh(ctx, tx, f.instance)
		}
		return nil, nil
	})
	if err != nil || !done {
		return err
	}
	runtime.AddLogAttrs(ctx, slog.String("refresh", string(outcome)))
	f.cache.clear()
	return nil
}

// onRefreshPing is the handler of the tags-refresh PingSource: it rebuilds
// catalog_tag_counts unless another instance is doing so.
func (f *Function) onRefreshPing(ctx context.Context, _ cloudevents.Event) error {
	outcome, err := f.refresh(ctx, false)
	if err != nil {
		return err
	}
	if outcome == Refreshed {
		f.cache.clear()
	}
	return nil
}
