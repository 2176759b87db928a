package archive_test

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/archive"
)

// format is a way to gzip a test archive: in members, as snapshots are
// written, or as one member, as snapshots were before and as `tar -czf`
// writes them. Tests of the checks run in both, since each is inflated its
// own way.
type format struct {
	name   string
	writer func(w io.Writer, level int) io.WriteCloser
}

var (
	members = format{name: "members", writer: func(w io.Writer, level int) io.WriteCloser {
		zw, err := archive.NewWriter(w, level)
		if err != nil {
			panic(err)
		}
		return zw
	}}
	oneMember = format{name: "one member", writer: func(w io.Writer, level int) io.WriteCloser {
		zw, err := gzip.NewWriterLevel(w, level)
		if err != nil {
			panic(err)
		}
		return zw
	}}
	formats = []format{members, oneMember}
)

// compress gzips b in format f.
func (f format) compress(tb testing.TB, b []byte) []byte {
	tb.Helper()
	var buf bytes.Buffer
	zw := f.writer(&buf, gzip.DefaultCompression)
	_, err := zw.Write(b)
	require.NoError(tb, err)
	require.NoError(tb, zw.Close())
	return buf.Bytes()
}

// ent describes one tar entry for a test archive.
type ent struct {
	name string
	typ  byte
	link string
	mode int64
	body string
}

func file(name, body string) ent { return ent{name: name, typ: tar.TypeReg, mode: 0o644, body: body} }
func dir(name string) ent        { return ent{name: name, typ: tar.TypeDir, mode: 0o755} }
func symlink(name, target string) ent {
	return ent{name: name, typ: tar.TypeSymlink, link: target, mode: 0o777}
}
func hardlink(name, target string) ent {
	return ent{name: name, typ: tar.TypeLink, link: target, mode: 0o644}
}
func special(name string, typ byte) ent { return ent{name: name, typ: typ, mode: 0o600} }
func withMode(e ent, mode int64) ent    { e.mode = mode; return e }

// tgz builds a tar.gz holding ents in members, as snapshots are written.
func tgz(tb testing.TB, ents ...ent) []byte { return members.tgz(tb, ents...) }

// tgz builds a tar.gz in format f holding ents (tarOf).
func (f format) tgz(tb testing.TB, ents ...ent) []byte { return f.compress(tb, tarOf(tb, ents...)) }

// tarOf builds a tar stream holding ents, in order, as they are given (no
// sanitising: the point is to build hostile archives).
func tarOf(tb testing.TB, ents ...ent) []byte {
	tb.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC)
	for _, e := range ents {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Linkname: e.link, Mode: e.mode, ModTime: mtime,
			Size: int64(len(e.body)), Format: tar.FormatPAX}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if e.typ == tar.TypeChar || e.typ == tar.TypeBlock {
			h.Devmajor, h.Devminor = 1, 3
		}
		require.NoError(tb, tw.WriteHeader(h))
		if h.Size > 0 {
			_, err := io.WriteString(tw, e.body)
			require.NoError(tb, err)
		}
	}
	require.NoError(tb, tw.Close())
	return buf.Bytes()
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// countingWriter counts what a generator managed to produce before the
// reader gave up.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// generated streams an archive written by gen in format f through a pipe, never holding
// it: gen's tar writer is backed by gzip into the pipe. produced reports the
// uncompressed bytes gen got written before the reader stopped; done is
// closed when gen has returned.
type generated struct {
	r        *io.PipeReader
	produced *countingWriter
	done     chan struct{}
}

func generate(f format, gen func(tw *tar.Writer) error) *generated {
	pr, pw := io.Pipe()
	zw := f.writer(pw, gzip.BestSpeed)
	cw := &countingWriter{w: zw}
	g := &generated{r: pr, produced: cw, done: make(chan struct{})}
	go func() {
		defer close(g.done)
		tw := tar.NewWriter(cw)
		err := gen(tw)
		if err == nil {
			err = tw.Close()
		}
		if err == nil {
			err = zw.Close()
		}
		pw.CloseWithError(err)
	}()
	return g
}

// stop ends the generator and waits for it.
func (g *generated) stop() int64 {
	g.r.CloseWithError(io.ErrClosedPipe)
	<-g.done
	return g.produced.n
}

var zeros = make([]byte, 1<<20)

func writeZeros(w io.Writer, n int64) error {
	for n > 0 {
		chunk := min(n, int64(len(zeros)))
		if _, err := w.Write(zeros[:chunk]); err != nil {
			return err
		}
		n -= chunk
	}
	return nil
}

// mixedTree returns entries of a home-like tree of about size bytes: text
// files (compressible) and random files (not), in a few directories.
func mixedTree(size int) []ent {
	rng := rand.New(rand.NewPCG(1, 2))
	words := strings.Fields("the quick brown fox jumps over the lazy dog session desktop config stream space home user")
	ents := []ent{dir("./"), dir("./docs/"), dir("./cache/")}
	total := 0
	for i := 0; total < size; i++ {
		var b strings.Builder
		n := 4<<10 + rng.IntN(256<<10)
		if i%2 == 0 {
			for b.Len() < n {
				b.WriteString(words[rng.IntN(len(words))])
				b.WriteByte(' ')
			}
			ents = append(ents, file("./docs/f"+strconv.Itoa(i)+".txt", b.String()))
		} else {
			raw := make([]byte, n)
			for j := range raw {
				raw[j] = byte(rng.Uint32())
			}
			ents = append(ents, file("./cache/b"+strconv.Itoa(i)+".bin", string(raw)))
		}
		total += n
	}
	return ents
}
