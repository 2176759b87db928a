package validate_test

import (
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/streamspace-dev/functions/shared/errs"
	"github.com/streamspace-dev/functions/shared/validate"
)

func TestID(t *testing.T) {
	tests := []struct {
		id string
		ok bool
	}{
		{"sess-1", true},
		{"模板-1", true},
		{strings.Repeat("x", 255), true},
		{"", false},
		{strings.Repeat("x", 256), false},
		{"a\x00b", false},
		{"a\nb", false},
		{"\xff", false},
		{"evil\u202egnp.exe", false}, // right-to-left override
		{"a\u200bb", false},          // zero-width space
		{"👩\u200d💻", true},           // an emoji joined with ZWJ
		{"café", true},
	}
	for _, tc := range tests {
		err := validate.ID("template id", tc.id)
		if (err == nil) != tc.ok {
			t.Errorf("ID(%q) = %v, want ok %v", validate.Quote(tc.id), err, tc.ok)
		}
		if err != nil && (errs.KindOf(err) != errs.Invalid || !strings.Contains(err.Error(), "template id")) {
			t.Errorf("ID(%q): %v, want invalid naming the field", validate.Quote(tc.id), err)
		}
	}
}

func TestPathID(t *testing.T) {
	r := httptest.NewRequest("GET", "/t/abc", nil)
	r.SetPathValue("id", "abc")
	if id, err := validate.PathID(r, "id", "template id"); id != "abc" || err != nil {
		t.Errorf("got %q, %v", id, err)
	}
}

func TestTags(t *testing.T) {
	got, err := validate.Tags([]string{" dev ", "gpu", "dev", "x"}, 5, 3)
	if err != nil || !slices.Equal(got, []string{"dev", "gpu", "x"}) {
		t.Errorf("got %q, %v", got, err)
	}
	for _, tc := range []struct {
		in   []string
		want string
	}{
		{[]string{"a", "b", "c", "d", "e", "f"}, "at most 5"},
		{[]string{"ok", "  "}, "tags[1]"},
		{[]string{"toolong"}, "tags[0]"},
		{[]string{"a\tb"}, "control"},
	} {
		if _, err := validate.Tags(tc.in, 5, 3); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Tags(%q): %v, want an error with %q", tc.in, err, tc.want)
		}
	}
}

func TestQuote(t *testing.T) {
	long := strings.Repeat("é", 40) // 80 bytes
	q := validate.Quote(long)
	if !strings.HasSuffix(q, "…") || len(q) > 64 || !strings.HasPrefix(long, strings.TrimSuffix(q, "…")) {
		t.Errorf("Quote cut %q badly", q)
	}
}
