package archive

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"runtime"
	"sync"

	"github.com/klauspost/compress/gzip"
)

// A snapshot's gzip stream is a series of gzip members of MemberSize
// uncompressed bytes each but the last, which is shorter (empty when the
// stream is a multiple of MemberSize: a stream cut at a member's end is
// told from a whole one), and each member's header carries the member's
// own length in an extra subfield, so a reader can cut the stream into
// members as it arrives and inflate several at once (docs/archive.md,
// Members). It stays one gzip file to every other reader: RFC 1952 makes a
// gzip file a series of members, and `tar -xzf` reads it whole.
const (
	// MemberSize is how many uncompressed bytes Writer puts in a member.
	MemberSize = 1 << 20
	// maxMember bounds a member's length from header to trailer, so the
	// members in flight hold a bounded amount of memory whatever the
	// stream says (what one inflates to is bounded by MemberSize).
	maxMember = 2 << 20

	// The header of a member: ID1 ID2 CM FLG MTIME(4) XFL OS, then, with
	// FEXTRA, XLEN(2) and XLEN bytes of subfields, each SI1 SI2 LEN(2)
	// and LEN bytes. Ours is "SL" with LEN 4: the member's length in bytes,
	// little-endian, header and trailer included.
	headerLen   = 12
	fextra      = 1 << 2
	lenID1      = 'S'
	lenID2      = 'L'
	lenFieldLen = 4
	// trailerLen is CRC32 and ISIZE, each four bytes little-endian.
	trailerLen = 8
)

// lenField is the extra field Writer gives each member, its length zero
// until the member is complete.
var lenField = []byte{lenID1, lenID2, lenFieldLen, 0, 0, 0, 0, 0}

// Writer gzips what is written to it as members of MemberSize bytes, each
// compressed whole into memory and then written to w with its length in
// its header; Close writes the last, shorter one.
type Writer struct {
	w      io.Writer
	zw     *gzip.Writer
	member bytes.Buffer // the member being compressed
	n      int          // uncompressed bytes in it
	err    error        // the first failure, or errClosed after Close
}

var errClosed = errors.New("archive: writer closed")

// NewWriter returns a Writer at gzip level level.
func NewWriter(w io.Writer, level int) (*Writer, error) {
	out := &Writer{w: w}
	zw, err := gzip.NewWriterLevel(&out.member, level)
	if err != nil {
		return nil, err
	}
	out.zw = zw
	out.zw.Extra = lenField
	return out, nil
}

// Write compresses p, writing each member to w as it is completed. After
// a failure every call fails with it: the stream is broken.
func (w *Writer) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 && w.err == nil {
		k := min(len(p), MemberSize-w.n)
		if _, err := w.zw.Write(p[:k]); err != nil {
			w.err = err
			break
		}
		w.n += k
		written += k
		p = p[k:]
		if w.n == MemberSize {
			w.err = w.flush()
		}
	}
	return written, w.err
}

// Close writes the last member, shorter than MemberSize: the rest under
// way, or an empty one.
func (w *Writer) Close() error {
	if w.err != nil {
		return w.err
	}
	if w.err = w.flush(); w.err != nil {
		return w.err
	}
	w.err = errClosed
	return nil
}

// flush completes the member under way, writes it to w and starts the next.
func (w *Writer) flush() error {
	if err := w.zw.Close(); err != nil {
		return err
	}
	b := w.member.Bytes()
	binary.LittleEndian.PutUint32(b[headerLen+4:], uint32(len(b)))
	if _, err := w.w.Write(b); err != nil {
		return err
	}
	w.member.Reset()
	w.zw.Reset(&w.member)
	w.zw.Extra = lenField
	w.n = 0
	return nil
}

// The answers to a stream of members that does not end as Writer ends it.
var (
	errNotMember = reject("", "not a gzip member giving its length, after members that did (trailing garbage or a corrupt member)")
	errAfterLast = reject("", "data after the last gzip member (one short of %d bytes): trailing garbage or a corrupt member", MemberSize)
	errCutShort  = reject("", "truncated stream: it ends after a full gzip member, without the shorter one that ends it")
)

// ownHeader says whether h, the start of a member's header, is one that
// may give its length: gzip's magic, deflate, and extra fields.
func ownHeader(h []byte) bool {
	want := [...]byte{0x1f, 0x8b, 8, fextra}
	for i := range min(len(h), len(want)) {
		if i == 3 && h[i]&fextra == 0 || i < 3 && h[i] != want[i] {
			return false
		}
	}
	return true
}

// memberLen returns the length a member's header gives in its extra
// field, when it has one of ours. h is the header's first headerLen bytes
// followed by its XLEN bytes of subfields.
func memberLen(h []byte) (int, bool) {
	if len(h) < headerLen || !ownHeader(h) {
		return 0, false
	}
	x := h[headerLen:]
	for len(x) >= 4 {
		n := int(binary.LittleEndian.Uint16(x[2:]))
		if len(x) < 4+n {
			return 0, false
		}
		if x[0] == lenID1 && x[1] == lenID2 && n == lenFieldLen {
			return int(binary.LittleEndian.Uint32(x[4:])), true
		}
		x = x[4+n:]
	}
	return 0, false
}

// hasMembers says whether the stream br reads starts with a member that
// gives its length, without consuming anything.
func hasMembers(br *bufio.Reader) bool {
	h, err := br.Peek(headerLen)
	if err != nil {
		return false
	}
	h, err = br.Peek(headerLen + int(binary.LittleEndian.Uint16(h[headerLen-2:])))
	if err != nil {
		return false
	}
	_, ok := memberLen(h)
	return ok
}

// member is one member in flight: its bytes as read, and once done is
// closed, what it inflates to or why it failed.
type member struct {
	in, out []byte
	err     error
	end     bool // it stands for the stream's end: err is why reading it stopped
	done    chan struct{}
}

// inflater cuts a stream of members into members in a goroutine of its
// own and inflates them in workers, at most window members ahead of the
// reader of their output, which gets them in order.
type inflater struct {
	order chan *member // the members in the stream's order, closed at its end
	jobs  chan *member // the members to inflate
	free  chan []byte  // buffers of members released
	quit  chan struct{}
	once  sync.Once
	wg    sync.WaitGroup

	cur *member // the member being read
	buf []byte  // its unread rest
	err error   // the end met, once met
	end bool    // whether that end was the stream's: read to its end, or failing to read
}

// window is how many members may wait to be read, inflated or not.
const window = 4

// inflateWorkers is how many members are inflated at once: one per core
// the process may use, at most window.
func inflateWorkers() int { return max(1, min(runtime.GOMAXPROCS(0), window)) }

// newInflater starts cutting r into members and inflating them.
func newInflater(r io.Reader) *inflater {
	f := &inflater{
		order: make(chan *member, window),
		jobs:  make(chan *member, window),
		free:  make(chan []byte, 2*(window+2)),
		quit:  make(chan struct{}),
	}
	workers := inflateWorkers()
	f.wg.Add(1 + workers)
	go func() {
		defer f.wg.Done()
		defer close(f.jobs)
		defer close(f.order)
		f.cut(r)
	}()
	for range workers {
		go func() {
			defer f.wg.Done()
			f.work()
		}()
	}
	return f
}

// cut reads r a member at a time and hands each on, ending with the
// stream's end or with a member that holds why the stream failed. It
// stops reading as soon as the reader of the output has stopped.
func (f *inflater) cut(r io.Reader) {
	last := -1 // what the member before inflates to, by its trailer
	for {
		select {
		case <-f.quit:
			return
		default:
		}
		in := f.buffer(headerLen)
		n, err := io.ReadFull(r, in)
		switch {
		case err == io.EOF && last == MemberSize:
			err = errCutShort
		case err == io.EOF:
			return
		case n == 0:
			// A failure to read, as it is.
		case last >= 0 && last < MemberSize:
			in, err = in[:n], errAfterLast
		case !ownHeader(in[:n]):
			in, err = in[:n], errNotMember
		case err == nil:
			in, err = f.readMember(r, in)
		default:
			in = in[:n]
		}
		if err == nil {
			last = int(binary.LittleEndian.Uint32(in[len(in)-4:]))
			if last > MemberSize {
				err = reject("", "gzip member's trailer says it inflates to %d bytes, more than %d", last, MemberSize)
			}
		}
		m := &member{in: in, done: make(chan struct{})}
		if err != nil {
			m.err, m.end = err, true
			close(m.done)
		}
		select {
		case f.order <- m:
		case <-f.quit:
			return
		}
		if err != nil {
			return
		}
		select {
		case f.jobs <- m:
		case <-f.quit:
			return
		}
	}
}

// readMember reads the rest of the member whose first headerLen bytes are
// in in, after checking its header gives a length that holds it.
func (f *inflater) readMember(r io.Reader, in []byte) ([]byte, error) {
	xlen := int(binary.LittleEndian.Uint16(in[headerLen-2:]))
	in = grow(in, headerLen+xlen)
	if _, err := io.ReadFull(r, in[headerLen:]); err != nil {
		return in, noEOF(err)
	}
	size, ok := memberLen(in)
	if !ok {
		return in, errNotMember
	}
	if size < len(in)+trailerLen || size > maxMember {
		return in, reject("", "gzip member length %d out of bounds (%d to %d bytes)", size, len(in)+trailerLen, maxMember)
	}
	k := len(in)
	in = grow(in, size)
	_, err := io.ReadFull(r, in[k:])
	return in, noEOF(err)
}

// noEOF is err, with a stream that ends inside a member truncated.
func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// work inflates members until there are no more.
func (f *inflater) work() {
	zr := new(gzip.Reader)
	for {
		select {
		case m, ok := <-f.jobs:
			if !ok {
				return
			}
			select {
			case <-f.quit:
				return
			default:
			}
			m.out, m.err = f.inflate(zr, m.in)
			close(m.done)
		case <-f.quit:
			return
		}
	}
}

// inflate inflates one member whole, checking it is one gzip member that
// ends where its length says and inflates to what its trailer says (which
// cut bounded). The member is all there, so any failure is its own: a
// Rejection.
func (f *inflater) inflate(zr *gzip.Reader, in []byte) ([]byte, error) {
	size := int(binary.LittleEndian.Uint32(in[len(in)-4:]))
	src := bytes.NewReader(in)
	if err := zr.Reset(src); err != nil {
		return nil, streamFault("gzip member", noEOF(err))
	}
	zr.Multistream(false)
	out := f.buffer(size)
	if _, err := io.ReadFull(zr, out); err != nil {
		return out, streamFault("gzip member", noEOF(err))
	}
	// The member must end here: its deflate data, its trailer's checks
	// (CRC-32 and size, which gzip compares) and its length.
	var one [1]byte
	if n, err := zr.Read(one[:]); n > 0 || err != io.EOF {
		if err == nil || err == io.EOF {
			return out, reject("", "gzip member inflates to more than its trailer's %d bytes", size)
		}
		return out, streamFault("gzip member", err)
	}
	if src.Len() > 0 {
		return out, reject("", "gzip member ends %d bytes before its length", src.Len())
	}
	return out, nil
}

// buffer returns a buffer of n bytes, one released if there is one.
func (f *inflater) buffer(n int) []byte {
	select {
	case b := <-f.free:
		return grow(b[:0], n)
	default:
		return make([]byte, n)
	}
}

func (f *inflater) release(b []byte) {
	if cap(b) == 0 {
		return
	}
	select {
	case f.free <- b:
	default:
	}
}

// grow returns b extended to n bytes, its content kept.
func grow(b []byte, n int) []byte {
	if cap(b) >= n {
		return b[:n]
	}
	c := make([]byte, n, max(n, MemberSize+MemberSize/8))
	copy(c, b)
	return c
}

// Read reads the inflated stream.
func (f *inflater) Read(p []byte) (int, error) {
	for len(f.buf) == 0 {
		if f.err != nil {
			return 0, f.err
		}
		if f.cur != nil {
			f.release(f.cur.in)
			f.release(f.cur.out)
			f.cur = nil
		}
		m, ok := <-f.order
		if !ok {
			f.err, f.end = io.EOF, true
			return 0, f.err
		}
		<-m.done
		if m.err != nil {
			f.err, f.end = m.err, m.end
			return 0, f.err
		}
		f.cur, f.buf = m, m.out
	}
	n := copy(p, f.buf)
	f.buf = f.buf[n:]
	return n, nil
}

// stop ends the cutting and inflating and waits for them: a read of r
// under way ends first.
func (f *inflater) stop() {
	f.once.Do(func() { close(f.quit) })
	f.wg.Wait()
	if f.err == nil {
		f.err = errStopped
	}
}

var errStopped = errors.New("archive: reading stopped")

// reachedEnd says whether the reader met the end of what was read, where
// a failure to read shows.
func (f *inflater) reachedEnd() bool { return f.end }
