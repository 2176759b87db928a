package homesnap

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/streamspace-dev/functions/shared/archive"
)

// The tar stream crosses from the exec's goroutine to the compressing one
// in chunks of handoff bytes, and no byte of it is copied on the way but
// once into a chunk: the exec's stdout is read straight into a chunk
// (chunkpipe.Pipe.ReadFrom), gzip takes each chunk whole, in one large write,
// and archive/tar reads only the header blocks out of it, skipping the
// content by seeking (tarSource). The capture shares two cores with the
// pod's tar, the API server and the object store, so every extra pass over
// the stream (a copy through bufio and io.Pipe, 8 KiB reads teed into gzip
// as small writes) slows the snapshot (docs/snapshots.md).

// chunks is how many chunks a capture's tar stream uses: 8 MiB whatever
// the home's size. Over WebSocket client-go hands each message on through
// an io.Pipe, so when the compressing goroutine waits (for the upload to
// take a part, or for a core) the whole exec path stalls back to the pod's
// tar, and on a busy machine it does not catch up. The chunks waiting
// between the two absorb those waits: for 1 GiB on a busy machine, 3
// chunks took 9.2 s, 8 took 7.2 s and 16 7.4 s, each MiB of them costing
// about two of peak RSS (docs/restore.md, Benchmarks).
const chunks = 8

// chunkSource yields a byte stream a chunk at a time (a chunkpipe.Pipe).
type chunkSource interface {
	Next() ([]byte, error)
	Release([]byte)
}

// tarSource is the reader archive/tar walks the stream with. Each chunk is
// counted (failing past the cap) and gzipped whole as it is taken from the
// source, before tar reads from it; tar's skipping of a file's content is a
// Seek, which passes over the bytes without copying them.
type tarSource struct {
	src   chunkSource
	chunk []byte // the current chunk, released when consumed
	buf   []byte // its unread rest
	pos   int64  // how far tar has read or skipped
	skip  int64  // a skip not yet applied: Seek is lazy, Read applies it
	eof   error  // the source's end, once seen

	zw       io.Writer
	tarBytes *atomic.Int64
	max      int64
}

// fill makes buf non-empty, taking the next chunk.
func (s *tarSource) fill() error {
	if len(s.buf) > 0 {
		return nil
	}
	if s.eof != nil {
		return s.eof
	}
	if s.chunk != nil {
		s.src.Release(s.chunk)
		s.chunk = nil
	}
	c, err := s.src.Next()
	if err != nil {
		s.eof = err
		return err
	}
	if total := s.tarBytes.Add(int64(len(c))); s.max > 0 && total > s.max {
		s.src.Release(c)
		s.eof = fmt.Errorf("%w (%d bytes)", errLimit, s.max)
		return s.eof
	}
	if _, err := s.zw.Write(c); err != nil {
		s.src.Release(c)
		s.eof = &compressError{err}
		return s.eof
	}
	s.chunk, s.buf = c, c
	return nil
}

// Read applies a pending skip, then reads.
func (s *tarSource) Read(p []byte) (int, error) {
	for s.skip > 0 {
		if err := s.fill(); err != nil {
			return 0, err
		}
		k := int(min(s.skip, int64(len(s.buf))))
		s.buf, s.skip, s.pos = s.buf[k:], s.skip-int64(k), s.pos+int64(k)
	}
	if len(p) == 0 {
		return 0, nil
	}
	if err := s.fill(); err != nil {
		return 0, err
	}
	n := copy(p, s.buf)
	s.buf, s.pos = s.buf[n:], s.pos+int64(n)
	return n, nil
}

// Seek moves forward from the current position only (what archive/tar asks
// for to skip content); the bytes are passed over on the next Read, which
// reports a stream that ends before them.
func (s *tarSource) Seek(offset int64, whence int) (int64, error) {
	if whence != io.SeekCurrent || offset < 0 {
		return 0, errors.New("tar stream: only forward seeks")
	}
	s.skip += offset
	return s.pos + s.skip, nil
}

// drain compresses the rest of the stream, after tar's end-of-archive.
func (s *tarSource) drain() error {
	for {
		s.buf = nil
		err := s.fill()
		if errors.Is(err, io.EOF) {
			if s.chunk != nil {
				s.src.Release(s.chunk)
				s.chunk = nil
			}
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// compressError is gzip's failure (its output refused), apart from the
// stream's.
type compressError struct{ err error }

func (e *compressError) Error() string { return e.err.Error() }
func (e *compressError) Unwrap() error { return e.err }

// compressChunks reads the tar stream from src, counting entries and bytes
// and stopping past req.MaxBytes, and writes its gzip to w. Every byte of
// the stream is compressed, the end-of-archive blocks and padding included,
// so the stored archive is exactly what tar wrote.
func compressChunks(src chunkSource, w io.Writer, req Request, tarBytes, entries, contentBytes *atomic.Int64) error {
	zw, err := archive.NewWriter(w, req.Level)
	if err != nil {
		return err
	}
	s := &tarSource{src: src, zw: zw, tarBytes: tarBytes, max: req.MaxBytes}
	tr := tar.NewReader(s)
	var dataEnd int64 // where the last entry's content and padding end in the stream
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			// tar ends an archive with two zero blocks. A stream that stops
			// right after an entry was cut short, and its exit status may
			// have been lost with its end (docs/snapshots.md).
			if s.pos < dataEnd+2*tarBlock {
				return errors.New("read tar stream: it ends without tar's end-of-archive blocks, so it was cut short")
			}
			break
		}
		if err != nil {
			return readError(err)
		}
		if n := entries.Add(1); req.MaxEntries > 0 && n > req.MaxEntries {
			return fmt.Errorf("%w (more than %d entries)", errLimit, req.MaxEntries)
		}
		dataEnd = s.pos
		if h.Typeflag == tar.TypeReg {
			contentBytes.Add(h.Size)
			dataEnd += (h.Size + tarBlock - 1) / tarBlock * tarBlock
		}
	}
	if err := s.drain(); err != nil {
		return readError(err)
	}
	return zw.Close()
}

// readError words a failure met while reading the stream: the cap and
// gzip's own failures as they are, the rest as the stream's.
func readError(err error) error {
	var ce *compressError
	if errors.Is(err, errLimit) || errors.As(err, &ce) {
		return err
	}
	return fmt.Errorf("read tar stream: %w", err)
}
