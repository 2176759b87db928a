package homesnap

import (
	"archive/tar"
	"bytes"
	"io"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// tarOf returns a tar stream of files and where each entry's padded
// content ends in it.
func tarOf(t *testing.T, files map[string]string, order []string) ([]byte, []int) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	var ends []int
	for _, name := range order {
		require.NoError(t, tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(files[name])), Typeflag: tar.TypeReg}))
		_, err := tw.Write([]byte(files[name]))
		require.NoError(t, err)
		require.NoError(t, tw.Flush())
		ends = append(ends, buf.Len())
	}
	require.NoError(t, tw.Close())
	return buf.Bytes(), ends
}

func TestCompressWantsTheEndOfArchive(t *testing.T) {
	files := map[string]string{"./a.txt": "first file", "./b.txt": string(bytes.Repeat([]byte("b"), 700))}
	stream, ends := tarOf(t, files, []string{"./a.txt", "./b.txt"})
	tests := []struct {
		name    string
		stream  []byte
		wantErr string
	}{
		{name: "a whole archive", stream: stream},
		{name: "cut right after an entry", stream: stream[:ends[1]], wantErr: "end-of-archive"},
		{name: "cut after the first entry", stream: stream[:ends[0]], wantErr: "end-of-archive"},
		{name: "cut inside an entry", stream: stream[:ends[0]+100], wantErr: "read tar stream"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var tarBytes, entries, content atomic.Int64
			err := compress(bytes.NewReader(tc.stream), io.Discard, Request{Level: 1, MaxBytes: 1 << 20},
				&tarBytes, &entries, &content)
			if tc.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, int64(2), entries.Load())
			assert.Equal(t, int64(len(stream)), tarBytes.Load())
		})
	}
}
