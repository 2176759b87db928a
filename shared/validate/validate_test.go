package validate_test

import (
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/errs"
	"github.com/streamspace-dev/functions/shared/validate"
)

func TestID(t *testing.T) {
	tests := []struct {
		name string
		id   string
		ok   bool
	}{
		{name: "ascii", id: "sess-1", ok: true},
		{name: "cjk", id: "模板-1", ok: true},
		{name: "255 bytes", id: strings.Repeat("x", 255), ok: true},
		{name: "empty", id: "", ok: false},
		{name: "256 bytes", id: strings.Repeat("x", 256), ok: false},
		{name: "nul byte", id: "a\x00b", ok: false},
		{name: "line break", id: "a\nb", ok: false},
		{name: "invalid utf-8", id: "\xff", ok: false},
		{name: "right-to-left override", id: "evil\u202egnp.exe", ok: false},
		{name: "zero-width space", id: "a\u200bb", ok: false},
		{name: "emoji joined with ZWJ", id: "👩\u200d💻", ok: true},
		{name: "accented latin", id: "café", ok: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := validate.ID("template id", tc.id)
			if tc.ok {
				assert.NoError(t, err, "ID(%q)", validate.Quote(tc.id))
				return
			}
			require.Error(t, err, "ID(%q) accepted", validate.Quote(tc.id))
			assert.Equal(t, errs.Invalid, errs.KindOf(err), "ID(%q): %v, want invalid", validate.Quote(tc.id), err)
			assert.ErrorContains(t, err, "template id", "ID(%q): want an error naming the field", validate.Quote(tc.id))
		})
	}
}

func TestPathID(t *testing.T) {
	tests := []struct {
		name  string
		path  string
		value string
		want  string
	}{
		{name: "path value", path: "/t/abc", value: "abc", want: "abc"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", tc.path, nil)
			r.SetPathValue("id", tc.value)
			id, err := validate.PathID(r, "id", "template id")
			require.NoError(t, err)
			assert.Equal(t, tc.want, id)
		})
	}
}

func TestTags(t *testing.T) {
	tests := []struct {
		name    string
		in      []string
		want    []string
		wantErr string
	}{
		{name: "trimmed and deduplicated", in: []string{" dev ", "gpu", "dev", "x"}, want: []string{"dev", "gpu", "x"}},
		{name: "too many", in: []string{"a", "b", "c", "d", "e", "f"}, wantErr: "at most 5"},
		{name: "blank", in: []string{"ok", "  "}, wantErr: "tags[1]"},
		{name: "too long", in: []string{"toolong"}, wantErr: "tags[0]"},
		{name: "control character", in: []string{"a\tb"}, wantErr: "control"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := validate.Tags(tc.in, 5, 3)
			if tc.wantErr != "" {
				assert.ErrorContains(t, err, tc.wantErr, "Tags(%q)", tc.in)
				return
			}
			require.NoError(t, err, "Tags(%q)", tc.in)
			assert.Equal(t, tc.want, got, "Tags(%q)", tc.in)
		})
	}
}

func TestQuote(t *testing.T) {
	tests := []struct {
		name   string
		in     string
		maxLen int
	}{
		{name: "80 bytes of two-byte runes", in: strings.Repeat("é", 40), maxLen: 64},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			q := validate.Quote(tc.in)
			assert.True(t, strings.HasSuffix(q, "…"), "Quote = %q, want a trailing …", q)
			assert.LessOrEqual(t, len(q), tc.maxLen, "Quote = %q, too long", q)
			assert.True(t, strings.HasPrefix(tc.in, strings.TrimSuffix(q, "…")), "Quote = %q, want a prefix of the input", q)
		})
	}
}
