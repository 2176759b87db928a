package function

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/mod/modfile"
)

// registry is every place a function must be named for the repository to
// build, deploy and document it (README "Adding a function").
type registry struct {
	goWork    []string // go.work use directives
	allInOne  []string // members of New()
	deployDir []string // folders under deploy/functions
	overlay   string   // deploy/overlays/functions/kustomization.yaml
	readme    []string // functions in the README's function table
}

// readmeRow is a row of the README's function table: | `name` | ... |
var readmeRow = regexp.MustCompile("(?m)^\\| `([a-z0-9]+)` \\|")

func loadRegistry(t *testing.T) registry {
	t.Helper()
	var r registry
	raw, err := os.ReadFile("go.work")
	require.NoError(t, err)
	work, err := modfile.ParseWork("go.work", raw, nil)
	require.NoError(t, err)
	for _, u := range work.Use {
		r.goWork = append(r.goWork, filepath.Clean(u.Path))
	}
	r.allInOne = New().Functions()
	entries, err := os.ReadDir(filepath.Join("deploy", "functions"))
	require.NoError(t, err)
	for _, e := range entries {
		if e.IsDir() {
			r.deployDir = append(r.deployDir, e.Name())
		}
	}
	overlay, err := os.ReadFile(filepath.Join("deploy", "overlays", "functions", "kustomization.yaml"))
	require.NoError(t, err)
	r.overlay = string(overlay)
	readme, err := os.ReadFile("README.md")
	require.NoError(t, err)
	for _, m := range readmeRow.FindAllStringSubmatch(functionTable(string(readme)), -1) {
		r.readme = append(r.readme, m[1])
	}
	return r
}

// functionTable is the README's section "## Functions", where the table is.
func functionTable(readme string) string {
	_, rest, _ := strings.Cut(readme, "\n## Functions\n")
	section, _, _ := strings.Cut(rest, "\n## ")
	return section
}

// missing lists where fn is not registered.
func (r registry) missing(fn string) []string {
	var out []string
	if !slices.Contains(r.goWork, filepath.Join("functions", fn)) {
		out = append(out, "go.work (go work use ./functions/"+fn+")")
	}
	if !slices.Contains(r.allInOne, fn) {
		out = append(out, "the all-in-one (a New() member in function.go)")
	}
	if !slices.Contains(r.deployDir, fn) {
		out = append(out, "deploy/functions/"+fn)
	}
	if !regexp.MustCompile(`(?m)^  - \.\./\.\./functions/` + regexp.QuoteMeta(fn) + `$`).MatchString(r.overlay) {
		out = append(out, "deploy/overlays/functions/kustomization.yaml (- ../../functions/"+fn+")")
	}
	if !slices.Contains(r.readme, fn) {
		out = append(out, "the README's function table")
	}
	return out
}

// TestEveryFunctionIsRegistered: each folder under functions/ is in
// go.work, in the all-in-one, in deploy/ (its folder and the functions
// overlay) and in the README's function table, and nothing is registered
// that has no folder.
func TestEveryFunctionIsRegistered(t *testing.T) {
	r := loadRegistry(t)
	entries, err := os.ReadDir("functions")
	require.NoError(t, err)
	var fns []string
	for _, e := range entries {
		if e.IsDir() {
			fns = append(fns, e.Name())
		}
	}
	require.NotEmpty(t, fns)
	for _, fn := range fns {
		t.Run(fn, func(t *testing.T) {
			assert.Empty(t, r.missing(fn), "functions/%s is missing from these", fn)
		})
	}
	t.Run("nothing without a folder", func(t *testing.T) {
		for _, list := range [][]string{r.allInOne, r.deployDir, r.readme} {
			for _, fn := range list {
				assert.Contains(t, fns, fn, "%s is registered but functions/%s does not exist", fn, fn)
			}
		}
	})
}

// TestRegistryCheckBites: a function named nowhere is reported missing from
// every place, and one named everywhere from none.
func TestRegistryCheckBites(t *testing.T) {
	full := registry{
		goWork:    []string{"functions/x"},
		allInOne:  []string{"x"},
		deployDir: []string{"x"},
		overlay:   "resources:\n  - ../../functions/x\n",
		readme:    []string{"x"},
	}
	tests := []struct {
		name     string
		reg      registry
		wantMiss int
	}{
		{"registered everywhere", full, 0},
		{"registered nowhere", registry{overlay: "resources:\n  - ../../functions/xy\n"}, 5},
		{"missing from go.work only", func() registry { r := full; r.goWork = nil; return r }(), 1},
		{"missing from the README only", func() registry { r := full; r.readme = []string{"y"}; return r }(), 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Len(t, tc.reg.missing("x"), tc.wantMiss, "%v", tc.reg.missing("x"))
		})
	}
}
