// Package chunkpipe carries a byte stream from one goroutine to another in
// chunks, in order, through a fixed set of buffers: the memory a stream
// takes is the same whatever its length, and a byte is copied only once,
// into a chunk (ReadFrom and ReadOnce read straight into one). The reading
// side takes each chunk whole (Next) and gives it back when done with it
// (Release).
//
// homesnap hands a pod's tar stream to the goroutine that gzips it, and
// archive hands an object's compressed bytes, read and hashed in one
// goroutine, to the one that decompresses and checks them.
package chunkpipe

import (
	"errors"
	"io"
	"sync"
)

// ErrStopped is what the writing side gets once the reading side has
// stopped (Stop); the cause is the reading side's own error.
var ErrStopped = errors.New("chunkpipe: the reading side stopped")

// Pipe is a chunked pipe. Its writing side (Write, ReadFrom, ReadOnce,
// CloseWrite) may be used from any goroutine and is locked; its reading
// side (Next, Release, Stop) belongs to one goroutine.
//
// A writer may outlive the reader's interest in the stream, or the reader
// may give up: a failed end (CloseWrite with an error) does not wait for a
// blocked writer, it only wakes it, and the writes it still makes fail;
// Stop does the same from the reading side.
type Pipe struct {
	full chan []byte // filled chunks, in order
	free chan []byte // chunks to fill

	mu  sync.Mutex // the writing side
	cur []byte     // the chunk being filled

	closeOnce sync.Once
	closed    chan struct{} // closed when the writing side has ended
	werr      error         // why, set before closed is closed

	stopOnce sync.Once
	stopped  chan struct{} // closed when the reading side stops
}

// New returns a pipe of n chunks of size bytes each.
func New(n, size int) *Pipe {
	p := &Pipe{full: make(chan []byte, n), free: make(chan []byte, n),
		closed: make(chan struct{}), stopped: make(chan struct{})}
	for range n {
		p.free <- make([]byte, 0, size)
	}
	return p
}

// chunk is the writer's current chunk with room left, waiting for one.
func (p *Pipe) chunk() error {
	select {
	case <-p.closed:
		return io.ErrClosedPipe
	case <-p.stopped:
		return ErrStopped
	default:
	}
	if p.cur != nil && len(p.cur) < cap(p.cur) {
		return nil
	}
	if p.cur != nil {
		if err := p.send(); err != nil {
			return err
		}
	}
	select {
	case c := <-p.free:
		p.cur = c[:0]
		return nil
	case <-p.stopped:
		return ErrStopped
	case <-p.closed:
		return io.ErrClosedPipe
	}
}

// send hands the current chunk to the reader.
func (p *Pipe) send() error {
	select {
	case p.full <- p.cur:
		p.cur = nil
		return nil
	case <-p.stopped:
		return ErrStopped
	case <-p.closed:
		return io.ErrClosedPipe
	}
}

// Write copies b into chunks. A chunk is handed over once full (or at
// CloseWrite(nil)).
func (p *Pipe) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for len(b) > 0 {
		if err := p.chunk(); err != nil {
			return n, err
		}
		k := copy(p.cur[len(p.cur):cap(p.cur)], b)
		p.cur = p.cur[:len(p.cur)+k]
		b = b[k:]
		n += k
	}
	return n, nil
}

// ReadFrom reads r straight into chunks until r ends (io.Copy uses it),
// handing each over once full. r's io.EOF is a clean end: ReadFrom returns
// a nil error then.
func (p *Pipe) ReadFrom(r io.Reader) (int64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var n int64
	for {
		if err := p.chunk(); err != nil {
			return n, err
		}
		k, err := r.Read(p.cur[len(p.cur):cap(p.cur)])
		p.cur = p.cur[:len(p.cur)+k]
		n += int64(k)
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// ReadOnce reads r once, straight into a chunk, and hands what it read
// over at once, however little: the reader then never waits for bytes
// already read, and no more than n reads of r are ever ahead of it. It
// returns r's error as r returned it, io.EOF included, or the pipe's.
func (p *Pipe) ReadOnce(r io.Reader) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.chunk(); err != nil {
		return 0, err
	}
	k, err := r.Read(p.cur[len(p.cur):cap(p.cur)])
	p.cur = p.cur[:len(p.cur)+k]
	if len(p.cur) > 0 {
		if serr := p.send(); serr != nil && err == nil {
			err = serr
		}
	}
	return k, err
}

// CloseWrite ends the stream. With err nil the writes are over and the
// chunk being filled is handed over first; otherwise the reader gets err
// after at most what was handed over, and later writes fail. Only the
// first call counts.
func (p *Pipe) CloseWrite(err error) {
	if err == nil {
		p.mu.Lock()
		if len(p.cur) > 0 && p.send() != nil {
			err = io.ErrClosedPipe
		}
		p.mu.Unlock()
	}
	p.closeOnce.Do(func() {
		p.werr = err
		close(p.closed)
	})
}

// Next is the next chunk, or the writer's error (io.EOF for a clean end)
// once every chunk handed over before it was taken. The chunk is the
// reader's until Release.
func (p *Pipe) Next() ([]byte, error) {
	select {
	case c := <-p.full:
		return c, nil
	case <-p.closed:
		// Chunks handed over before the end come first.
		select {
		case c := <-p.full:
			return c, nil
		default:
		}
		if p.werr != nil {
			return nil, p.werr
		}
		return nil, io.EOF
	}
}

// Release gives a chunk Next returned back to the writer.
func (p *Pipe) Release(c []byte) { p.free <- c }

// Stop ends the reading side: the writer's next write or wait for the
// reader fails with ErrStopped. It may be called more than once.
func (p *Pipe) Stop() { p.stopOnce.Do(func() { close(p.stopped) }) }
