package archive_test

import (
	"bytes"
	"context"
	"io"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/archive"
)

var (
	benchOnce sync.Once
	benchData []byte
	benchSum  archive.Summary
)

// benchArchive is a 64 MiB home of text and random files, half each.
func benchArchive(b *testing.B) ([]byte, archive.Summary) {
	benchOnce.Do(func() {
		benchData = tgz(b, mixedTree(64<<20)...)
		var err error
		benchSum, err = archive.Vet(context.Background(), bytes.NewReader(benchData), archive.Limits{}, nil)
		require.NoError(b, err)
	})
	return benchData, benchSum
}

// BenchmarkVet measures the vet pass: gunzip, SHA-256 of the compressed
// stream and the entry checks. MB/s is of uncompressed content.
func BenchmarkVet(b *testing.B) {
	data, sum := benchArchive(b)
	want := &archive.Expect{SHA256: sum.SHA256, Entries: sum.Entries, Bytes: sum.Bytes}
	b.SetBytes(sum.Bytes)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := archive.Vet(context.Background(), bytes.NewReader(data), archive.Limits{}, want); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRepack measures the extract pass's work in the function: the
// same checks plus writing the plain tar stream.
func BenchmarkRepack(b *testing.B) {
	data, sum := benchArchive(b)
	want := &archive.Expect{SHA256: sum.SHA256, Entries: sum.Entries, Bytes: sum.Bytes}
	b.SetBytes(sum.Bytes)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := archive.Repack(context.Background(), io.Discard, bytes.NewReader(data), archive.Limits{}, want); err != nil {
			b.Fatal(err)
		}
	}
}
