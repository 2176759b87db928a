package function

import (
	"context"
	"net/http"
	"strconv"

	"github.com/jackc/pgx/v5"

	"github.com/streamspace-dev/functions/events"
	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/runtime"
)

// ListResult is the response of GET …/versions.
type ListResult struct {
	Versions   []Version `json:"versions"`
	NextCursor string    `json:"nextCursor,omitempty"`
}

// DiffResult is the response of GET …/versions/{version}/diff.
type DiffResult struct {
	TemplateID string `json:"templateId"`
	Version    int    `json:"version"`
	// Against is "current" or the other version's number.
	Against string `json:"against"`
	Diff
}

func (f *Function) createVersion(w http.ResponseWriter, r *http.Request, who authn.Identity) error {
	template, err := templateID(r)
	if err != nil {
		return err
	}
	var req CreateRequest
	if err := runtime.DecodeJSON(r, &req); err != nil {
		return err
	}
	description, tags, err := req.Validate()
	if err != nil {
		return err
	}
	v, err := f.store.Create(r.Context(), who, template, description, tags, f.queueCreated)
	if err != nil {
		return err
	}
	f.Outbox.Kick() // the relay sends after commit; the response does not wait
	runtime.WriteJSON(w, http.StatusCreated, v)
	return nil
}

func (f *Function) queueCreated(ctx context.Context, tx pgx.Tx, v Version) error {
	e, err := events.New(Name, events.TemplateVersionCreated, events.TemplateVersionCreatedData{
		TemplateID: v.TemplateID, Version: v.Number, CreatedBy: v.CreatedBy, Tags: v.Tags,
	})
	if err != nil {
		return err
	}
	return f.Outbox.Add(ctx, tx, e)
}

func (f *Function) listVersions(w http.ResponseWriter, r *http.Request, who authn.Identity) error {
	template, err := templateID(r)
	if err != nil {
		return err
	}
	q, err := parseListQuery(r, template)
	if err != nil {
		return err
	}
	page, more, err := f.store.List(r.Context(), who, template, q)
	if err != nil {
		return err
	}
	res := ListResult{Versions: page}
	if more {
		res.NextCursor = encodeCursor(template, page[len(page)-1].Number)
	}
	runtime.WriteJSON(w, http.StatusOK, res)
	return nil
}

func (f *Function) restoreVersion(w http.ResponseWriter, r *http.Request, who authn.Identity) error {
	template, err := templateID(r)
	if err != nil {
		return err
	}
	n, err := parseVersion("version", r.PathValue("version"))
	if err != nil {
		return err
	}
	res, err := f.store.Restore(r.Context(), who, template, n, func(ctx context.Context, tx pgx.Tx, res RestoreResult) error {
		return f.queueRestored(ctx, tx, who, res)
	})
	if err != nil {
		return err
	}
	f.Outbox.Kick() // the relay sends after commit; the response does not wait
	runtime.WriteJSON(w, http.StatusOK, res)
	return nil
}

func (f *Function) queueRestored(ctx context.Context, tx pgx.Tx, who authn.Identity, res RestoreResult) error {
	restored, err := events.New(Name, events.TemplateVersionRestored, events.TemplateVersionRestoredData{
		TemplateID: res.TemplateID, Version: res.Restored, BackupVersion: res.Backup.Number, RestoredBy: who.Subject,
	})
	if err != nil {
		return err
	}
	updated, err := events.New(Name, events.TemplateUpdated, events.TemplateUpdatedData{
		TemplateID: res.TemplateID, UserID: who.Subject, Change: "restored",
	})
	if err != nil {
		return err
	}
	return f.Outbox.Add(ctx, tx, restored, updated)
}

func (f *Function) diffVersion(w http.ResponseWriter, r *http.Request, who authn.Identity) error {
	template, err := templateID(r)
	if err != nil {
		return err
	}
	n, err := parseVersion("version", r.PathValue("version"))
	if err != nil {
		return err
	}
	against, err := parseAgainst(r)
	if err != nil {
		return err
	}
	from, to, err := f.store.Documents(r.Context(), who, template, n, against)
	if err != nil {
		return err
	}
	d, err := Compare(from, to)
	if err != nil {
		return err
	}
	res := DiffResult{TemplateID: template, Version: n, Against: CurrentTemplate, Diff: d}
	if against != nil {
		res.Against = strconv.Itoa(*against)
	}
	runtime.WriteJSON(w, http.StatusOK, res)
	return nil
}
