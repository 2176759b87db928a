package archive

import (
	"archive/tar"
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"time"

	"github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/gzip"

	"github.com/streamspace-dev/functions/shared/chunkpipe"
)

// Vet reads the tar.gz stream r to its end and checks every entry, the caps,
// and, when want is not nil, the manifest's checksum, entry count and bytes. It returns a *Rejection for
// anything wrong with the stream itself, and another error when reading r
// failed.
func Vet(ctx context.Context, r io.Reader, lim Limits, want *Expect) (Summary, error) {
	return scan(ctx, r, lim, want, nil)
}

// Repack reads the tar.gz stream r, checks every entry as Vet does, and
// writes a plain tar stream of the checked entries to w. Entries are named by
// their real paths (no symlink in their directories), without the root
// directory, with permission bits only, no owner and no extended attributes;
// symlink targets are kept as stored.
//
// The stream is checked as it is copied, so when it fails, w has received
// the entries before the failing one but never that entry, and no tar end
// marker: the reader at the other end sees a truncated archive. The checksum
// is known only at the end, so a mismatch there is reported after every
// entry was written; callers re-pack an object that already passed Vet.
func Repack(ctx context.Context, w io.Writer, r io.Reader, lim Limits, want *Expect) (Summary, error) {
	bw := bufio.NewWriterSize(w, 256<<10)
	out := &repacker{tw: tar.NewWriter(bw), names: newNameSetBuilder(), buf: make([]byte, 64<<10)}
	sum, err := scan(ctx, r, lim, want, out)
	if errors.Is(err, ErrRejected) {
		// The entries before the failing one were checked; passing them on
		// keeps what the other end sees the same however the buffer fell.
		_ = bw.Flush()
	}
	if err != nil {
		return sum, err
	}
	if err := out.tw.Close(); err != nil {
		return sum, fmt.Errorf("repack: finish tar: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return sum, fmt.Errorf("repack: flush: %w", err)
	}
	sum.Restored = out.names.build()
	return sum, nil
}

type repacker struct {
	tw    *tar.Writer
	names *nameSetBuilder
	buf   []byte // one copy buffer for every entry
}

func (p *repacker) write(h *tar.Header, e entry, body io.Reader) error {
	if e.key == "" {
		return nil
	}
	out := &tar.Header{
		Name:    e.key,
		Mode:    h.Mode & modePerm,
		ModTime: h.ModTime.Truncate(time.Second),
		Format:  tar.FormatUnknown,
	}
	switch h.Typeflag {
	case tar.TypeDir:
		out.Typeflag = tar.TypeDir
		out.Name += "/"
	case tar.TypeSymlink:
		out.Typeflag = tar.TypeSymlink
		out.Linkname = e.link
	case tar.TypeLink:
		out.Typeflag = tar.TypeLink
		out.Linkname = e.link
	default:
		out.Typeflag = tar.TypeReg
		out.Size = h.Size
	}
	if err := p.tw.WriteHeader(out); err != nil {
		return fmt.Errorf("repack: write header %q: %w", e.key, err)
	}
	if out.Size > 0 {
		if _, err := io.CopyBuffer(p.tw, body, p.buf); err != nil {
			return err
		}
	}
	p.names.add(e.key)
	return nil
}

// The compressed stream is read and hashed in a goroutine of its own, so
// the object store's read and SHA-256 overlap gunzip and the tar walk
// instead of adding to them (docs/restore.md, Benchmarks). A stream of
// members is cut into members there and inflated by workers (members.go);
// any other is handed to the goroutine that inflates and checks it through
// a chunkpipe.
//
// A cap that stops the checks must stop the reading as soon (a bomb's
// bytes are not fetched past it), so the reading is kept close to the
// checks. In a stream of members, at most window members wait for them
// (members.go). In any other, a chunk holds a 64th of what was read before
// it, between minRead and readChunk, and at most readChunks of them are
// ahead: the reading is at most 64 KiB ahead of the checks over the first
// MiB, about 6% of what was read after, never more than 1 MiB, besides the
// peekSize buffer in front of it (docs/archive.md, Reading).
// A chunk is filled before it is handed over, fewer bytes only at the
// body's end or failure: an HTTP body's reads bring what the connection
// holds, often a few KiB, and handing each over by itself costs the
// decompressing goroutine, the pipeline's longest, a wake-up per read.
const (
	readChunks = 4
	readChunk  = 256 << 10
	minRead    = 16 << 10
)

// readSize is the size of the next chunk once read bytes of the body were
// read.
func readSize(read int64) int { return int(min(max(read/64, minRead), readChunk)) }

// source counts and hashes (when h is set) the compressed bytes and
// remembers the first error of the underlying reader, so that a failure to
// read (transient) is told apart from a malformed stream (a Rejection). A cancelled ctx ends
// the reading without counting as a failure to read.
type source struct {
	ctx context.Context
	r   io.Reader
	h   hash.Hash
	n   int64
	err error
}

func (s *source) Read(p []byte) (int, error) {
	if err := s.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := s.r.Read(p)
	s.n += int64(n)
	if s.h != nil {
		s.h.Write(p[:n])
	}
	if err != nil && err != io.EOF && s.err == nil {
		s.err = err
	}
	return n, err
}

// readAll reads src to its end into p, a chunk at a time, and ends p's
// writing side with src's error, nil at its end. (source records any other
// error than io.EOF itself as a failure to read, wrapped ones included.)
func readAll(p *chunkpipe.Pipe, src *source) {
	full := &fullReads{r: src}
	for {
		full.n = readSize(src.n)
		if _, err := p.ReadOnce(full); err != nil {
			if err == io.EOF {
				err = nil
			}
			p.CloseWrite(err)
			return
		}
	}
}

// fullReads reads n bytes from r in each Read, fewer only when r ends or
// fails.
type fullReads struct {
	r io.Reader
	n int
}

func (f *fullReads) Read(p []byte) (int, error) {
	p = p[:min(len(p), f.n)]
	n := 0
	for n < len(p) {
		k, err := f.r.Read(p[n:])
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// chunkReader reads the chunks of a pipe.
type chunkReader struct {
	p     *chunkpipe.Pipe
	chunk []byte // the current chunk, released when consumed
	buf   []byte // its unread rest
	err   error  // the pipe's end, once seen
}

func (r *chunkReader) Read(b []byte) (int, error) {
	for len(r.buf) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		if r.chunk != nil {
			r.p.Release(r.chunk)
			r.chunk = nil
		}
		c, err := r.p.Next()
		if err != nil {
			r.err = err
			return 0, err
		}
		r.chunk, r.buf = c, c
	}
	n := copy(b, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

// tarStream is the tar stream a scan walks: the gzip stream read from the
// source, inflated.
type tarStream interface {
	io.Reader
	// stop ends the reading and inflating and waits for them: the source
	// is the caller's again.
	stop()
	// reachedEnd says whether the walk met the end of what was read,
	// where a failure to read shows.
	reachedEnd() bool
}

// gunzip inflates a gzip stream that does not give its members' lengths
// (snapshots taken before they did) in one goroutine, as it is read.
type gunzip struct {
	pipe *chunkpipe.Pipe
	read chan struct{} // closed when the reading goroutine has ended
	in   *chunkReader
	zr   *gzip.Reader
}

// newGunzip starts reading src and reads the gzip header.
func newGunzip(src *source) (*gunzip, error) {
	g := &gunzip{pipe: chunkpipe.New(readChunks, readChunk), read: make(chan struct{})}
	g.in = &chunkReader{p: g.pipe}
	go func() {
		defer close(g.read)
		readAll(g.pipe, src)
	}()
	// A bufio.Reader in front makes the gzip reader use it as its
	// ByteReader (and its fast path). gzip reads its members to the
	// stream's end, so on success every byte was read and hashed.
	zr, err := gzip.NewReader(bufio.NewReaderSize(g.in, 256<<10))
	g.zr = zr
	return g, err
}

func (g *gunzip) Read(p []byte) (int, error) { return g.zr.Read(p) }

func (g *gunzip) stop() {
	g.pipe.Stop()
	<-g.read
}

func (g *gunzip) reachedEnd() bool { return g.in.err != nil }

// open starts inflating the gzip stream r, read through src: in members
// at once when its first member gives its length, in one goroutine
// otherwise. On an error the stream is still to be stopped.
func open(src *source, r io.Reader) (tarStream, error) {
	br := bufio.NewReaderSize(r, peekSize)
	src.r = br
	if src.ctx.Err() == nil && hasMembers(br) {
		return newInflater(src), nil
	}
	return newGunzip(src)
}

// Reader is the inflating that Vet and Repack do, on its own: the tar
// stream of a gzip stream, with neither checks nor hash.
type Reader struct{ in tarStream }

// NewReader starts inflating the gzip stream r. Close the Reader to stop.
func NewReader(r io.Reader) (*Reader, error) {
	in, err := open(&source{ctx: context.Background()}, r)
	if err != nil {
		in.stop()
		return nil, err
	}
	return &Reader{in: in}, nil
}

func (r *Reader) Read(p []byte) (int, error) { return r.in.Read(p) }

// Close stops the inflating and waits for it; the stream r is the
// caller's again.
func (r *Reader) Close() error {
	r.in.stop()
	return nil
}

// peekSize is the buffer that lets a scan look at the first member's
// header before choosing how to inflate the stream.
const peekSize = 64 << 10

func scan(ctx context.Context, r io.Reader, lim Limits, want *Expect, out *repacker) (Summary, error) {
	lim = lim.withDefaults()
	if want != nil && want.Bytes >= 0 && want.Bytes < lim.MaxBytes {
		lim.MaxBytes = want.Bytes
	}
	src := &source{ctx: ctx, h: sha256.New()}
	in, openErr := open(src, r)
	// On every return the reading goroutine is stopped and waited for: r is
	// the caller's again, and src may be looked at. A read under way ends
	// first; an object store's body ends its reads when ctx is cancelled.
	defer in.stop()
	// readFailed says whether a failure to read the body reached the
	// checks; one met by a read ahead of them, after they gave up, does not
	// count.
	readFailed := func() bool {
		in.stop()
		return in.reachedEnd() && src.err != nil
	}
	var sum Summary
	fail := func(err error) (Summary, error) {
		if readFailed() {
			return sum, fmt.Errorf("read archive: %w", src.err)
		}
		if ctx.Err() != nil {
			return sum, ctx.Err()
		}
		return sum, err
	}
	if openErr != nil {
		return fail(streamFault("gzip header", openErr))
	}
	tr := tar.NewReader(in)
	t := newTree()
	for {
		if err := ctx.Err(); err != nil {
			return sum, err
		}
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil && !errors.Is(err, tar.ErrInsecurePath) {
			return fail(streamFault("tar", err))
		}
		sum.Entries++
		if sum.Entries > lim.MaxEntries {
			rej := reject("", "more than %d entries", lim.MaxEntries)
			rej.over = ErrTooManyEntries
			return fail(rej)
		}
		e, rej := t.check(h)
		if rej != nil {
			return fail(rej)
		}
		if h.Size > lim.MaxBytes-sum.Bytes {
			rej := reject(h.Name, "contents exceed %d bytes in total", lim.MaxBytes)
			rej.over = ErrTooLarge
			return fail(rej)
		}
		sum.Bytes += h.Size
		if out != nil {
			if err := out.write(h, e, tr); err != nil {
				if readFailed() || isStreamErr(err) {
					return fail(streamFault("entry "+h.Name, err))
				}
				return sum, err
			}
		}
	}
	// tar stops at its end marker; what follows in the gzip stream must be
	// the zero padding of the last record, and the gzip stream must end
	// cleanly with nothing after it.
	pad, err := io.Copy(zeroChecker{}, io.LimitReader(in, lim.MaxPadding+1))
	if err != nil {
		return fail(streamFault("after the tar end", err))
	}
	if pad > lim.MaxPadding {
		return fail(reject("", "more than %d bytes after the tar end", lim.MaxPadding))
	}
	in.stop()
	sum.CompressedBytes = src.n
	sum.SHA256 = hex.EncodeToString(src.h.Sum(nil))
	if want == nil {
		return sum, nil
	}
	if want.SHA256 != sum.SHA256 {
		return fail(reject("", "sha256 %s does not match the manifest's %s", sum.SHA256, want.SHA256))
	}
	if want.Entries != sum.Entries {
		return fail(reject("", "%d entries, the manifest says %d", sum.Entries, want.Entries))
	}
	if want.Bytes != sum.Bytes {
		return fail(reject("", "%d bytes, the manifest says %d", sum.Bytes, want.Bytes))
	}
	return sum, nil
}

var errNonZeroPadding = errors.New("data after the tar end marker")

type zeroChecker struct{}

func (zeroChecker) Write(p []byte) (int, error) {
	for _, b := range p {
		if b != 0 {
			return 0, errNonZeroPadding
		}
	}
	return len(p), nil
}

// isStreamErr says whether err came from decoding the input rather than from
// writing the output.
func isStreamErr(err error) bool {
	var corrupt flate.CorruptInputError
	return errors.Is(err, ErrRejected) || errors.As(err, &corrupt) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, gzip.ErrChecksum) ||
		errors.Is(err, gzip.ErrHeader) || errors.Is(err, tar.ErrHeader)
}

func streamFault(where string, err error) *Rejection {
	var rej *Rejection
	switch {
	case errors.As(err, &rej):
		return rej
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return reject("", "%s: truncated stream", where)
	case errors.Is(err, gzip.ErrHeader):
		return reject("", "%s: not gzip data (trailing garbage or a corrupt member)", where)
	case errors.Is(err, gzip.ErrChecksum):
		return reject("", "%s: gzip checksum mismatch", where)
	}
	return reject("", "%s: %v", where, err)
}
