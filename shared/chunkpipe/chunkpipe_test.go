package chunkpipe_test

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/chunkpipe"
)

// drain reads p to its end in a goroutine of its own: the bytes, and the
// error that ended it.
func drain(p *chunkpipe.Pipe) (<-chan []byte, <-chan error) {
	got, done := make(chan []byte, 1), make(chan error, 1)
	go func() {
		var b bytes.Buffer
		for {
			c, err := p.Next()
			if err != nil {
				got <- b.Bytes()
				done <- err
				return
			}
			b.Write(c)
			p.Release(c)
		}
	}()
	return got, done
}

// reads is a reader that returns its parts one per Read, then io.EOF.
type reads struct{ parts [][]byte }

func (r *reads) Read(p []byte) (int, error) {
	if len(r.parts) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.parts[0])
	r.parts[0] = r.parts[0][n:]
	if len(r.parts[0]) == 0 {
		r.parts = r.parts[1:]
	}
	return n, nil
}

// TestPipe checks the handoff between a writing goroutine and a reading
// one, including a writer that outlives a failed stream and a reader that
// gives up.
func TestPipe(t *testing.T) {
	data := make([]byte, 10000)
	for i := range data {
		data[i] = byte(i * 7)
	}
	errWriter := errors.New("the writer failed")
	tests := []struct {
		name string
		run  func(t *testing.T, p *chunkpipe.Pipe)
	}{
		{name: "a clean end delivers every byte in order", run: func(t *testing.T, p *chunkpipe.Pipe) {
			got, done := drain(p)
			_, err := io.Copy(p, struct{ io.Reader }{bytes.NewReader(data)})
			require.NoError(t, err)
			_, err = p.Write(data[:10])
			require.NoError(t, err)
			p.CloseWrite(nil)
			require.ErrorIs(t, <-done, io.EOF)
			assert.True(t, bytes.Equal(append(append([]byte{}, data...), data[:10]...), <-got))
		}},
		{name: "a failed end reaches the reader after the chunks before it", run: func(t *testing.T, p *chunkpipe.Pipe) {
			_, err := p.Write(data[:250]) // two full chunks handed over, one being filled
			require.NoError(t, err)
			p.CloseWrite(errWriter)
			for range 2 {
				c, err := p.Next()
				require.NoError(t, err)
				assert.Len(t, c, 100)
			}
			_, err = p.Next()
			require.ErrorIs(t, err, errWriter)
		}},
		{name: "a writer blocked on a full pipe is released by a failed end", run: func(t *testing.T, p *chunkpipe.Pipe) {
			done := make(chan error)
			go func() {
				_, err := p.Write(data) // more than the chunks hold: blocks
				done <- err
			}()
			p.CloseWrite(errWriter)
			require.ErrorIs(t, <-done, io.ErrClosedPipe)
			_, err := p.Write(data[:1])
			require.ErrorIs(t, err, io.ErrClosedPipe, "writes after the end fail")
		}},
		{name: "a writer blocked on a full pipe is released when the reader stops", run: func(t *testing.T, p *chunkpipe.Pipe) {
			done := make(chan error)
			go func() {
				_, err := p.ReadFrom(struct{ io.Reader }{bytes.NewReader(data)})
				done <- err
			}()
			p.Stop()
			require.ErrorIs(t, <-done, chunkpipe.ErrStopped)
		}},
		{name: "each read is handed over at once, however small", run: func(t *testing.T, p *chunkpipe.Pipe) {
			r := &reads{parts: [][]byte{data[:5], data[5:7], data[7:300]}}
			for _, want := range [][]byte{data[:5], data[5:7], data[7:107]} {
				n, err := p.ReadOnce(r)
				require.NoError(t, err)
				assert.Equal(t, len(want), n)
				c, err := p.Next()
				require.NoError(t, err)
				assert.Equal(t, want, c, "the chunk holds that one read")
				p.Release(c)
			}
		}},
		{name: "reads ahead of the reader stop at the chunks", run: func(t *testing.T, p *chunkpipe.Pipe) {
			r := &reads{parts: [][]byte{data[:1], data[1:2], data[2:3], data[3:4]}}
			for range 3 {
				_, err := p.ReadOnce(r)
				require.NoError(t, err)
			}
			done := make(chan error)
			go func() {
				_, err := p.ReadOnce(r) // every chunk is the reader's: blocks
				done <- err
			}()
			p.Stop()
			require.ErrorIs(t, <-done, chunkpipe.ErrStopped)
			assert.Len(t, r.parts, 1, "the fourth read was not made")
		}},
		{name: "after Stop no read is made", run: func(t *testing.T, p *chunkpipe.Pipe) {
			r := &reads{parts: [][]byte{data[:1]}}
			p.Stop()
			_, err := p.ReadOnce(r)
			require.ErrorIs(t, err, chunkpipe.ErrStopped)
			_, err = p.ReadFrom(r)
			require.ErrorIs(t, err, chunkpipe.ErrStopped)
			assert.Len(t, r.parts, 1)
		}},
		{name: "ReadOnce passes on the reader's end", run: func(t *testing.T, p *chunkpipe.Pipe) {
			got, done := drain(p)
			r := &reads{parts: [][]byte{data[:150]}}
			var err error
			for err == nil {
				_, err = p.ReadOnce(r)
			}
			require.ErrorIs(t, err, io.EOF)
			p.CloseWrite(nil)
			require.ErrorIs(t, <-done, io.EOF)
			assert.Equal(t, data[:150], <-got)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.run(t, chunkpipe.New(3, 100))
		})
	}
}
