package function_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	function "github.com/streamspace-dev/functions/functions/versioning"
	"github.com/streamspace-dev/functions/shared/errs"
)

// diffCase is one file of testdata/diff: two documents, and the patch and
// summary written by hand from the rules in diff.go (object keys sorted;
// arrays compared index by index, shrinking by removals at the first index
// past the shorter length, growing by appends at "-").
type diffCase struct {
	From    json.RawMessage  `json:"from"`
	To      json.RawMessage  `json:"to"`
	Patch   json.RawMessage  `json:"patch"`
	Summary function.Summary `json:"summary"`
}

func TestCompareMatchesHandWrittenPatches(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "diff", "*.json"))
	require.NoError(t, err)
	require.NotEmpty(t, files, "no golden cases")
	tests := make([]struct{ name, file string }, len(files))
	for i, f := range files {
		tests[i].name, tests[i].file = strings.TrimSuffix(filepath.Base(f), ".json"), f
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			raw, err := os.ReadFile(tc.file)
			require.NoError(t, err)
			var c diffCase
			require.NoError(t, json.Unmarshal(raw, &c), tc.file)
			d, err := function.Compare(c.From, c.To)
			require.NoError(t, err)
			got, err := json.Marshal(d.Patch)
			require.NoError(t, err)
			assertSameJSON(t, c.Patch, got, "patch")
			assert.Equal(t, c.Summary, d.Summary, "summary")
			// Both the computed and the hand-written patch, applied by an
			// independent RFC 6902 implementation, turn from into to.
			assertSameJSON(t, c.To, applyPatch(t, c.From, got), "computed patch applied")
			assertSameJSON(t, c.To, applyPatch(t, c.From, c.Patch), "hand-written patch applied")
		})
	}
}

func TestCompareRefusesWhatIsNotJSON(t *testing.T) {
	tests := []struct{ name, from, to string }{
		{"first side", `{`, `{}`},
		{"second side", `{}`, `nope`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := function.Compare([]byte(tc.from), []byte(tc.to))
			assert.Error(t, err)
		})
	}
}

// objects returns two documents whose configuration objects differ in n
// keys, each key's value changed.
func objects(n int) (from, to []byte) {
	a, b := make(map[string]int, n), make(map[string]int, n)
	for i := range n {
		k := fmt.Sprintf("key%06d", i)
		a[k], b[k] = i+1, -(i + 1)
	}
	from, _ = json.Marshal(map[string]any{"configuration": a})
	to, _ = json.Marshal(map[string]any{"configuration": b})
	return from, to
}

// TestCompareCapsTheOperations: a diff of up to MaxOperations operations is
// returned with one summary entry per field; one more is Unprocessable.
func TestCompareCapsTheOperations(t *testing.T) {
	tests := []struct {
		name     string
		changes  int
		wantKind errs.Kind
	}{
		{"at the cap", function.MaxOperations, ""},
		{"one over the cap", function.MaxOperations + 1, errs.Unprocessable},
		{"the 40,000 changed keys of the review", 40000, errs.Unprocessable},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			from, to := objects(tc.changes)
			d, err := function.Compare(from, to)
			if tc.wantKind != "" {
				require.Error(t, err)
				assert.Equal(t, tc.wantKind, errs.KindOf(err))
				assert.Contains(t, errs.Message(err), fmt.Sprintf("differ in %d places", tc.changes))
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.changes, len(d.Patch), "operations")
			assert.Equal(t, tc.changes, len(d.Summary.Changed), "each changed field once")
			assert.Equal(t, "configuration.key000000", d.Summary.Changed[0], "sorted")
			assert.Empty(t, d.Summary.Added)
			assert.Empty(t, d.Summary.Removed)
		})
	}
}
