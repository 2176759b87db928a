package function

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/jackc/pgx/v5"

	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/runtime"
)

// ListResult is the response of GET …/versions: StreamSpace's list shape
// (versions, count, totalCount, page, limit), and a cursor for the next
// page.
type ListResult struct {
	Versions []Version `json:"versions"`
	// Count is the number of versions on this page.
	Count int `json:"count"`
	// TotalCount is the number of versions the template has.
	TotalCount int `json:"totalCount"`
	// Page is the page number asked for; absent when paging by cursor.
	Page  int `json:"page,omitempty"`
	Limit int `json:"limit"`
	// NextCursor, when set, fetches the next page (?cursor=).
	NextCursor string `json:"nextCursor,omitempty"`
}

// CreateResult is the response of POST …/versions: the new version, with
// the message and versionId that StreamSpace's API answers.
type CreateResult struct {
	Message   string `json:"message"`
	VersionID int    `json:"versionId"`
	Version
}

// RestoreResult is the response of a restore: StreamSpace's message and
// version, the auto-backup saved first, and the template's content after
// the restore.
type RestoreResult struct {
	Message    string `json:"message"`
	TemplateID string `json:"templateId"`
	// Version is the version the template now matches.
	Version int `json:"version"`
	// Backup is the version saved of the content the restore replaced.
	Backup Version `json:"backup"`
	// Template is the template's content after the restore.
	Template json.RawMessage `json:"template"`
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
	in, err := req.Validate()
	if err != nil {
		return err
	}
	var v Version
	err = f.svc.Commit(r.Context(), func(tx pgx.Tx) ([]cloudevents.Event, error) {
		var err error
		if v, err = createVersion(r.Context(), tx, f.rules, who, template, in); err != nil {
			return nil, err
		}
		e, err := versionCreated(v, who.Subject)
		return []cloudevents.Event{e}, err
	})
	if err != nil {
		return fmt.Errorf("create version of %q: %w", template, err)
	}
	runtime.WriteJSON(w, http.StatusCreated, CreateResult{Message: "Version created successfully", VersionID: v.ID, Version: v})
	return nil
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
	var (
		page  []Version
		more  bool
		total int
	)
	// A read-only transaction, so the reads get the statement and lock
	// timeouts every transaction sets (docs/data.md).
	err = db.Read(r.Context(), f.svc.Pool, func(tx pgx.Tx) error {
		var err error
		page, more, total, err = listVersions(r.Context(), tx, who, template, q)
		return err
	})
	if err != nil {
		return db.Classify(err)
	}
	res := ListResult{Versions: page, Count: len(page), TotalCount: total, Page: q.Page, Limit: q.Limit}
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
	var res Restored
	err = f.svc.Commit(r.Context(), func(tx pgx.Tx) ([]cloudevents.Event, error) {
		var err error
		if res, err = restoreVersion(r.Context(), tx, f.rules, who, template, n, clientIP(r)); err != nil {
			return nil, err
		}
		return restoredEvents(res, who.Subject)
	})
	if err != nil {
		return fmt.Errorf("restore version %d of %q: %w", n, template, err)
	}
	runtime.WriteJSON(w, http.StatusOK, RestoreResult{
		Message:    "Version restored successfully",
		TemplateID: res.TemplateID,
		Version:    res.Version,
		Backup:     res.Backup,
		Template:   res.Template,
	})
	return nil
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
	var from, to []byte
	err = db.Read(r.Context(), f.svc.Pool, func(tx pgx.Tx) error {
		var err error
		from, to, err = documents(r.Context(), tx, who, template, n, against)
		return err
	})
	if err != nil {
		return db.Classify(err)
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
