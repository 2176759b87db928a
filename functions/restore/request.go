package function

import (
	"net/http"

	"github.com/streamspace-dev/functions/shared/runtime"
	"github.com/streamspace-dev/functions/shared/validate"
)

// RestoreRequest is the body of POST …/snapshots/{snapshotId}/restore. The
// body may be absent: the snapshot is then restored into its own session.
type RestoreRequest struct {
	// TargetSessionID is the session to restore into; empty means the
	// snapshot's own session.
	TargetSessionID string `json:"targetSessionId"`
}

// RestoreInput is a validated restore request.
type RestoreInput struct {
	SessionID  string
	SnapshotID string
	// TargetSessionID is never empty: the path session when the body
	// named none.
	TargetSessionID string
}

// readRestoreRequest takes the path values and the optional body.
func readRestoreRequest(r *http.Request) (RestoreRequest, PathIDs, error) {
	var req RestoreRequest
	if r.ContentLength != 0 {
		if err := runtime.DecodeJSON(r, &req); err != nil {
			return req, PathIDs{}, err
		}
	}
	return req, PathIDs{SessionID: r.PathValue("sessionId"), SnapshotID: r.PathValue("snapshotId")}, nil
}

// Validate checks the ids and returns the input; the error names the field.
func (q RestoreRequest) Validate(ids PathIDs) (RestoreInput, error) {
	p, err := ids.Validate()
	if err != nil {
		return RestoreInput{}, err
	}
	in := RestoreInput{SessionID: p.SessionID, SnapshotID: p.SnapshotID, TargetSessionID: p.SessionID}
	if q.TargetSessionID != "" {
		if err := validate.ID("targetSessionId", q.TargetSessionID); err != nil {
			return RestoreInput{}, err
		}
		in.TargetSessionID = q.TargetSessionID
	}
	return in, nil
}

// PathIDs are the {sessionId} and {snapshotId} path values of both routes.
type PathIDs struct {
	SessionID  string
	SnapshotID string
}

// readPathIDs takes the path values of GET …/restore/status.
func readPathIDs(r *http.Request) PathIDs {
	return PathIDs{SessionID: r.PathValue("sessionId"), SnapshotID: r.PathValue("snapshotId")}
}

// Validate checks both ids; the error names the field.
func (p PathIDs) Validate() (PathIDs, error) {
	if err := validate.ID("sessionId", p.SessionID); err != nil {
		return PathIDs{}, err
	}
	if err := validate.ID("snapshotId", p.SnapshotID); err != nil {
		return PathIDs{}, err
	}
	return p, nil
}
