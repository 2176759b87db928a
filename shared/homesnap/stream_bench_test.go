package homesnap

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"sync/atomic"
	"testing"

	"github.com/streamspace-dev/functions/shared/benchtest"
	"github.com/streamspace-dev/functions/shared/chunkpipe"
)

// BenchmarkInProcess measures what a capture spends in this process on a
// tar stream held in memory, without the pod, the API server or the object
// store: the handoff from the exec's side, the tar walk, gzip (level 6),
// the handoff to the upload and SHA-256 of the gzip stream. It reports
// this process's CPU seconds per GiB of tar stream (self-cpu-s/GiB), a
// figure far less sensitive than wall time to other work on the machine.
func BenchmarkInProcess(b *testing.B) {
	stream := benchStream(b, 128<<20)
	b.SetBytes(int64(len(stream)))
	b.ResetTimer()
	c0 := benchtest.CPUNow()
	for i := 0; i < b.N; i++ {
		gzR, gzW := io.Pipe()
		hashed := make(chan error)
		go func() {
			// The upload's side: part-sized reads, hashed.
			_, err := io.CopyBuffer(sha256.New(), gzR, make([]byte, 8<<20))
			hashed <- err
		}()
		p := chunkpipe.New(chunks, handoff)
		go func() {
			// The exec's side: io.Copy from a stream without WriteTo.
			_, err := io.Copy(p, struct{ io.Reader }{bytes.NewReader(stream)})
			p.CloseWrite(err)
		}()
		var tarBytes, entries, content atomic.Int64
		zout := bufio.NewWriterSize(gzW, handoff)
		err := compressChunks(p, zout, Request{Level: 6, MaxBytes: 1 << 40}, &tarBytes, &entries, &content)
		p.Stop()
		if err == nil {
			err = zout.Flush()
		}
		gzW.CloseWithError(err)
		if err != nil {
			b.Fatal(err)
		}
		if err := <-hashed; err != nil {
			b.Fatal(err)
		}
	}
	cpu := benchtest.CPUNow().Since(c0)
	b.ReportMetric(cpu.Self.Seconds()/float64(b.N)*float64(1<<30)/float64(len(stream)), "self-cpu-s/GiB")
}

// benchStream is a tar stream of about size bytes: files of 64 KiB to
// 2 MiB, alternately text and random bytes.
func benchStream(b *testing.B, size int) []byte {
	b.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	text := bytes.Repeat([]byte("The quick brown fox jumps over the lazy dog; a desktop writes its settings here.\n"), 1<<15)
	random := make([]byte, 2<<20)
	for i := 0; buf.Len() < size; i++ {
		n := (64 << 10) << (i % 6)
		src := text
		if i%2 == 1 {
			if _, err := rand.Read(random); err != nil {
				b.Fatal(err)
			}
			src = random
		}
		if err := tw.WriteHeader(&tar.Header{Name: "./f" + string(rune('a'+i%26)), Mode: 0o644, Size: int64(n), Typeflag: tar.TypeReg}); err != nil {
			b.Fatal(err)
		}
		if _, err := tw.Write(src[:n]); err != nil {
			b.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		b.Fatal(err)
	}
	return buf.Bytes()
}
