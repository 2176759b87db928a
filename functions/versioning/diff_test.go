package function_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"

	function "github.com/streamspace-dev/functions/functions/versioning"
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
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden cases: %v", err)
	}
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".json"), func(t *testing.T) {
			raw, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			var tc diffCase
			if err := json.Unmarshal(raw, &tc); err != nil {
				t.Fatalf("%s: %v", file, err)
			}
			d, err := function.Compare(tc.From, tc.To)
			if err != nil {
				t.Fatal(err)
			}
			got, err := json.Marshal(d.Patch)
			if err != nil {
				t.Fatal(err)
			}
			if !sameJSON(t, got, tc.Patch) {
				t.Errorf("patch\n got %s\nwant %s", got, compact(t, tc.Patch))
			}
			if !reflect.DeepEqual(d.Summary, tc.Summary) {
				t.Errorf("summary\n got %+v\nwant %+v", d.Summary, tc.Summary)
			}
			// Both the computed and the hand-written patch, applied by an
			// independent RFC 6902 implementation, turn from into to.
			for name, p := range map[string][]byte{"computed": got, "expected": tc.Patch} {
				if out := applyPatch(t, tc.From, p); !sameJSON(t, out, tc.To) {
					t.Errorf("%s patch applied to from gives %s, want %s", name, out, compact(t, tc.To))
				}
			}
		})
	}
}

func TestCompareRefusesWhatIsNotJSON(t *testing.T) {
	for _, tc := range []struct{ from, to string }{{`{`, `{}`}, {`{}`, `nope`}} {
		if _, err := function.Compare([]byte(tc.from), []byte(tc.to)); err == nil {
			t.Errorf("Compare(%q, %q): no error", tc.from, tc.to)
		}
	}
}

func applyPatch(t *testing.T, doc, patch []byte) []byte {
	t.Helper()
	p, err := jsonpatch.DecodePatch(patch)
	if err != nil {
		t.Fatalf("decode patch %s: %v", patch, err)
	}
	out, err := p.Apply(doc)
	if err != nil {
		t.Fatalf("apply %s to %s: %v", patch, doc, err)
	}
	return out
}

// sameJSON compares two JSON texts as values, numbers by their digits.
func sameJSON(t *testing.T, a, b []byte) bool {
	t.Helper()
	return reflect.DeepEqual(decode(t, a), decode(t, b))
}

func decode(t *testing.T, b []byte) any {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	return v
}

func compact(t *testing.T, b []byte) string {
	t.Helper()
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}
