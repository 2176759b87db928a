package function

import (
	"fmt"
	"net/url"

	"github.com/streamspace-dev/functions/shared/errs"
	"github.com/streamspace-dev/functions/shared/validate"
)

// Limits of one batch request.
const (
	MaxTags       = 50
	MaxTagLength  = 50
	MaxSessionIDs = 10000
)

// Operation is what a batch does to each session's tags.
type Operation string

// The operations a batch can apply.
const (
	OpAdd     Operation = "add"
	OpRemove  Operation = "remove"
	OpReplace Operation = "replace"
)

// BatchRequest is the body of POST /api/v1/batch/sessions/update-tags.
type BatchRequest struct {
	Operation  Operation `json:"operation"`
	SessionIDs []string  `json:"sessionIds"`
	Tags       []string  `json:"tags"`
}

// Batch is a validated BatchRequest: repeated ids folded, tags trimmed and
// folded, both in request order.
type Batch struct {
	Operation  Operation
	SessionIDs []string
	Tags       []string
}

// Validate checks r and returns the batch to apply. The error names the
// offending field.
func (r BatchRequest) Validate() (Batch, error) {
	switch r.Operation {
	case OpAdd, OpRemove, OpReplace:
	case "":
		return Batch{}, errs.E(errs.Invalid, "operation is required: add, remove or replace")
	default:
		return Batch{}, errs.E(errs.Invalid, "operation %q: want add, remove or replace", validate.Quote(string(r.Operation)))
	}
	ids, err := foldIDs(r.SessionIDs)
	if err != nil {
		return Batch{}, err
	}
	tags, err := validate.Tags(r.Tags, MaxTags, MaxTagLength)
	if err != nil {
		return Batch{}, err
	}
	if len(tags) == 0 && r.Operation != OpReplace {
		return Batch{}, errs.E(errs.Invalid, "tags: at least one tag is required to %s", r.Operation)
	}
	return Batch{Operation: r.Operation, SessionIDs: ids, Tags: tags}, nil
}

// foldIDs checks every id and drops repeats, keeping the first occurrence.
func foldIDs(in []string) ([]string, error) {
	if len(in) == 0 {
		return nil, errs.E(errs.Invalid, "sessionIds: at least one session id is required")
	}
	seen := make(map[string]struct{}, len(in))
	out := make([]string, 0, len(in))
	for i, id := range in {
		if err := validate.ID(fmt.Sprintf("sessionIds[%d]", i), id); err != nil {
			return nil, err
		}
		if _, dup := seen[id]; dup {
			continue
		}
		seen[id] = struct{}{}
		out = append(out, id)
	}
	if len(out) > MaxSessionIDs {
		return nil, errs.E(errs.Invalid, "sessionIds: %d distinct ids, at most %d per request", len(out), MaxSessionIDs)
	}
	return out, nil
}

// Limits of GET /api/v1/search/filters/tags.
const (
	DefaultPopularLimit = 50
	MaxPopularLimit     = 200
	MaxCategoryLength   = 100 // catalog_templates.category is varchar(100)
)

// PopularRequest is the query of GET /api/v1/search/filters/tags.
type PopularRequest struct {
	Query url.Values
}

// Popular is a validated PopularRequest. A nil Category means every
// category.
type Popular struct {
	Category *string
	Limit    int
}

// Validate checks the limit and category parameters; the error names the
// parameter.
func (r PopularRequest) Validate() (Popular, error) {
	limit, err := validate.Limit(r.Query, DefaultPopularLimit, MaxPopularLimit)
	if err != nil {
		return Popular{}, err
	}
	p := Popular{Limit: limit}
	if r.Query.Has("category") {
		c := r.Query.Get("category")
		if err := validate.Text("category", c, MaxCategoryLength); err != nil {
			return Popular{}, err
		}
		p.Category = &c
	}
	return p, nil
}
