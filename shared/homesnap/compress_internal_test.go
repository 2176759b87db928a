package homesnap

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/klauspost/compress/gzip"

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
		{name: "cut inside a file's content", stream: stream[:ends[0]+512+300], wantErr: "unexpected EOF"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var tarBytes, entries, content atomic.Int64
			err := compressChunks(&smallChunks{rest: tc.stream, size: handoff}, io.Discard, Request{Level: 1, MaxBytes: 1 << 20},
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

// smallChunks is a chunkSource over a byte slice in chunks of size, so
// headers and content straddle chunk boundaries.
type smallChunks struct {
	rest []byte
	size int
}

func (s *smallChunks) Next() ([]byte, error) {
	if len(s.rest) == 0 {
		return nil, io.EOF
	}
	n := min(s.size, len(s.rest))
	c := s.rest[:n]
	s.rest = s.rest[n:]
	return c, nil
}

func (s *smallChunks) Release([]byte) {}

// gnuTar is what GNU tar writes for dir: the archives homesnap reads.
func gnuTar(t *testing.T, dir string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command("tar", append(append([]string{"-cf", "-"}, args...), "-C", dir, ".")...)
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	require.NoError(t, cmd.Run(), "%s", stderr.String())
	return out.Bytes()
}

// walk is what archive/tar reads from stream, entry by entry: the entries
// and the regular files' sizes.
func walk(t *testing.T, stream []byte) (entries, content int64) {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(stream))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return entries, content
		}
		require.NoError(t, err)
		entries++
		if h.Typeflag == tar.TypeReg {
			content += h.Size
		}
	}
}

// TestCompressCountsEveryFormat checks the counts and the stored bytes for
// the long names and links, sizes and formats tar can write, whatever the
// chunks the stream arrives in.
func TestCompressCountsEveryFormat(t *testing.T) {
	dir := t.TempDir()
	long := strings.Repeat("a-long-folder-name-", 8) // 152 bytes: past ustar's 100
	require.NoError(t, os.MkdirAll(filepath.Join(dir, long, long), 0o755))
	for i, size := range []int{0, 1, 511, 512, 513, 10240, 300000} {
		name := filepath.Join(dir, long, long, fmt.Sprintf("%s-%d", strings.Repeat("f", 90), i))
		require.NoError(t, os.WriteFile(name, bytes.Repeat([]byte{byte('a' + i)}, size), 0o644))
	}
	require.NoError(t, os.Symlink(filepath.Join(long, long, strings.Repeat("f", 90)+"-6"), filepath.Join(dir, "link-"+long)))
	require.NoError(t, os.Link(filepath.Join(dir, long, long, strings.Repeat("f", 90)+"-6"), filepath.Join(dir, "hard")))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "ünïcödé ✓"), []byte("x"), 0o644))

	var pax bytes.Buffer
	tw := tar.NewWriter(&pax)
	for _, f := range []struct {
		name string
		size int
	}{{"./" + long + "/pax-file", 700}, {"./small", 3}, {"./" + strings.Repeat("p", 300), 0}} {
		require.NoError(t, tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: int64(f.size), Typeflag: tar.TypeReg,
			Format: tar.FormatPAX, PAXRecords: map[string]string{"SCHILY.xattr.user.note": strings.Repeat("x", 2000)}}))
		_, err := tw.Write(bytes.Repeat([]byte("p"), f.size))
		require.NoError(t, err)
	}
	require.NoError(t, tw.Close())

	streams := []struct {
		name   string
		stream []byte
	}{
		{name: "GNU tar's default format", stream: gnuTar(t, dir)},
		{name: "GNU tar, posix format", stream: gnuTar(t, dir, "--format=posix")},
		{name: "PAX records with xattrs", stream: pax.Bytes()},
	}
	for _, st := range streams {
		wantEntries, wantContent := walk(t, st.stream)
		for _, size := range []int{1, 7, 512, 1000, 4096, 1 << 20} {
			t.Run(fmt.Sprintf("%s in chunks of %d", st.name, size), func(t *testing.T) {
				var tarBytes, entries, content atomic.Int64
				var out bytes.Buffer
				err := compressChunks(&smallChunks{rest: st.stream, size: size}, &out, Request{Level: 1, MaxBytes: 1 << 30},
					&tarBytes, &entries, &content)
				require.NoError(t, err)
				assert.Equal(t, wantEntries, entries.Load())
				assert.Equal(t, wantContent, content.Load())
				assert.Equal(t, int64(len(st.stream)), tarBytes.Load())
				zr, err := gzip.NewReader(&out)
				require.NoError(t, err)
				raw, err := io.ReadAll(zr)
				require.NoError(t, err)
				assert.True(t, bytes.Equal(st.stream, raw), "the gzip holds exactly tar's stream")
			})
		}
	}
}

// TestCompressStopsAtTheLimit checks the cap holds whatever the chunks.
func TestCompressStopsAtTheLimit(t *testing.T) {
	files := map[string]string{"./a": string(bytes.Repeat([]byte("a"), 5000))}
	stream, _ := tarOf(t, files, []string{"./a"})
	tests := []struct {
		name    string
		max     int64
		wantErr bool
	}{
		{name: "exactly the stream", max: int64(len(stream))},
		{name: "one byte less", max: int64(len(stream)) - 1, wantErr: true},
		{name: "far less", max: 1024, wantErr: true},
	}
	for _, tc := range tests {
		for _, size := range []int{100, 1 << 20} {
			t.Run(fmt.Sprintf("%s in chunks of %d", tc.name, size), func(t *testing.T) {
				var tarBytes, entries, content atomic.Int64
				err := compressChunks(&smallChunks{rest: stream, size: size}, io.Discard, Request{Level: 1, MaxBytes: tc.max},
					&tarBytes, &entries, &content)
				if tc.wantErr {
					require.ErrorIs(t, err, errLimit)
					return
				}
				require.NoError(t, err)
			})
		}
	}
}
