package function

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/wI2L/jsondiff"

	"github.com/streamspace-dev/functions/shared/errs"
)

// MaxOperations is the most operations a diff returns. Two templates that
// differ in more are refused with 422: such a patch is no use to a person
// reading it, and its size would be the client's to choose.
const MaxOperations = 10000

// Diff is the change from one saved template to another.
type Diff struct {
	// Patch is an RFC 6902 JSON Patch that turns the first document into
	// the second: add, remove and replace operations only, object keys in
	// sorted order, arrays compared index by index with the growth or
	// shrinkage at the tail.
	Patch []Operation `json:"patch"`
	// Summary names the fields the patch touches.
	Summary Summary `json:"summary"`
}

// Operation is one RFC 6902 operation: add, remove or replace.
type Operation struct {
	Op   string
	Path string // an RFC 6901 JSON Pointer
	// Value is the new value of add and replace; nil is JSON null.
	Value any
}

// MarshalJSON writes op, path and value in that order, with value present
// (null included) exactly when the operation takes one.
func (o Operation) MarshalJSON() ([]byte, error) {
	if o.Op == jsondiff.OperationRemove {
		return json.Marshal(struct {
			Op   string `json:"op"`
			Path string `json:"path"`
		}{o.Op, o.Path})
	}
	return json.Marshal(struct {
		Op    string `json:"op"`
		Path  string `json:"path"`
		Value any    `json:"value"`
	}{o.Op, o.Path, o.Value})
}

// Summary is a short human account of a Diff. Fields are named by their
// object keys joined with dots (config.memory); a change anywhere inside an
// array counts as a change of the array.
type Summary struct {
	Added   []string `json:"added"`
	Removed []string `json:"removed"`
	Changed []string `json:"changed"`
	Text    string   `json:"text"`
}

// Compare returns the diff from the JSON document from to the document to.
//
// jsondiff (github.com/wI2L/jsondiff) computes the patch. With no options it
// emits no move or copy and compares arrays element-wise, which keeps each
// operation readable on its own. Numbers are decoded as json.Number, so an
// integer beyond 2^53 in a template's config is reported exactly.
func Compare(from, to []byte) (Diff, error) {
	src, err := decodeJSON(from)
	if err != nil {
		return Diff{}, fmt.Errorf("decode the first document: %w", err)
	}
	tgt, err := decodeJSON(to)
	if err != nil {
		return Diff{}, fmt.Errorf("decode the second document: %w", err)
	}
	patch, err := jsondiff.CompareWithoutMarshal(src, tgt)
	if err != nil {
		return Diff{}, err
	}
	if len(patch) > MaxOperations {
		return Diff{}, errs.E(errs.Unprocessable,
			"the versions differ in %d places, more than the %d a diff returns; compare versions closer together", len(patch), MaxOperations)
	}
	ops := make([]Operation, 0, len(patch))
	for _, op := range patch {
		switch op.Type {
		case jsondiff.OperationAdd, jsondiff.OperationRemove, jsondiff.OperationReplace:
			ops = append(ops, Operation{Op: op.Type, Path: op.Path, Value: op.Value})
		default:
			// move, copy and test come only with options Compare does not set.
			return Diff{}, fmt.Errorf("diff: unexpected %q operation at %q", op.Type, op.Path)
		}
	}
	return Diff{Patch: ops, Summary: summarize(src, ops)}, nil
}

func decodeJSON(b []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	return v, nil
}

// summarize names the field each operation of patch touches, walking its
// path through src (the document the patch applies to) to tell object keys
// from array indexes. Each list is collected in a set, so a patch of n
// operations costs n log n, not n².
func summarize(src any, patch []Operation) Summary {
	added, removed, changed := map[string]bool{}, map[string]bool{}, map[string]bool{}
	for _, op := range patch {
		field, inArray := fieldOf(src, op.Path)
		switch {
		case inArray:
			changed[field] = true
		case op.Op == jsondiff.OperationAdd:
			added[field] = true
		case op.Op == jsondiff.OperationRemove:
			removed[field] = true
		default:
			changed[field] = true
		}
	}
	s := Summary{Added: sortedKeys(added), Removed: sortedKeys(removed), Changed: sortedKeys(changed)}
	var parts []string
	for _, p := range []struct {
		verb   string
		fields []string
	}{{"changed", s.Changed}, {"added", s.Added}, {"removed", s.Removed}} {
		if len(p.fields) > 0 {
			parts = append(parts, p.verb+" "+strings.Join(p.fields, ", "))
		}
	}
	s.Text = "no changes"
	if len(parts) > 0 {
		s.Text = strings.Join(parts, "; ")
	}
	return s
}

// sortedKeys returns set's members in order; never nil, so an empty list is
// written [].
func sortedKeys(set map[string]bool) []string {
	out := make([]string, 0, len(set))
	for k := range set {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// fieldOf returns the dotted object-key path of pointer in doc, cut at the
// first array on the way; inArray reports that cut.
func fieldOf(doc any, pointer string) (field string, inArray bool) {
	if pointer == "" {
		return "(whole document)", false
	}
	var keys []string
	node := doc
	for _, tok := range strings.Split(pointer[1:], "/") {
		obj, ok := node.(map[string]any)
		if !ok {
			// An array, or a scalar being replaced by a container: either way
			// the field is the path so far.
			_, inArray = node.([]any)
			break
		}
		key := strings.ReplaceAll(strings.ReplaceAll(tok, "~1", "/"), "~0", "~")
		node = obj[key]
		if key == "" {
			key = `""` // so an empty key is visible in the summary
		}
		keys = append(keys, key)
	}
	return strings.Join(keys, "."), inArray
}
