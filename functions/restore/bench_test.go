package function_test

import (
	"context"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/streamspace-dev/functions/shared/archive"
	"github.com/streamspace-dev/functions/shared/homesnap"
	"github.com/streamspace-dev/functions/shared/kube"
	"github.com/streamspace-dev/functions/shared/kubetest"
	"github.com/streamspace-dev/functions/shared/objstore"
	"github.com/streamspace-dev/functions/shared/s3test"
)

// benchHomeMiB is the size of the benchmark's home: RESTORE_BENCH_MIB, by
// default 64.
func benchHomeMiB() int {
	if n, err := strconv.Atoi(os.Getenv("RESTORE_BENCH_MIB")); err == nil && n > 0 {
		return n
	}
	return 64
}

// fillHome writes a home of about mib MiB: text files and random files,
// half each, in a few directories.
func fillHome(b *testing.B, dir string, mib int) {
	b.Helper()
	rng := rand.New(rand.NewPCG(7, 8))
	words := strings.Fields("the quick brown fox jumps over the lazy dog session desktop config stream space home user")
	for i, total := 0, 0; total < mib<<20; i++ {
		n := 16<<10 + rng.IntN(512<<10)
		sub := filepath.Join(dir, "d"+strconv.Itoa(i%16))
		if err := os.MkdirAll(sub, 0o755); err != nil {
			b.Fatal(err)
		}
		buf := make([]byte, 0, n)
		if i%2 == 0 {
			for len(buf) < n {
				buf = append(buf, words[rng.IntN(len(words))]...)
				buf = append(buf, ' ')
			}
		} else {
			for len(buf) < n {
				buf = append(buf, byte(rng.Uint32()))
			}
		}
		if err := os.WriteFile(filepath.Join(sub, "f"+strconv.Itoa(i)), buf, 0o644); err != nil {
			b.Fatal(err)
		}
		total += n
	}
}

// BenchmarkRestorePasses measures each pass of a restore alone, against the
// real MinIO and the API server's test kubelet running real tar: the vet
// (read from storage, gunzip, SHA-256, checks), the backup (the pod's tar,
// gzip, SHA-256, multipart upload) and the extract (clear, read, re-check,
// re-pack, the pod's tar -x). MB/s is of the home's content.
func BenchmarkRestorePasses(b *testing.B) {
	ctx := context.Background()
	s3 := s3test.Start(b)
	bucket := s3.Bucket(b)
	store, err := objstore.New(ctx, objstore.Config{Endpoint: s3.Endpoint, Bucket: bucket, Region: s3.Region,
		ForcePathStyle: true, Concurrency: 2, AccessKeyID: s3.AccessKey, SecretAccessKey: s3.SecretKey})
	if err != nil {
		b.Fatal(err)
	}
	cluster := kubetest.Start(b)
	ns := cluster.Namespace(b)
	tpod := cluster.Kubelet(b).Pod(b, ns, kubetest.PodSpec{SessionID: "bench"})
	kc, err := kube.New(cluster.Config, kube.Auto)
	if err != nil {
		b.Fatal(err)
	}
	pod, err := kc.SessionPod(ctx, ns, "bench")
	if err != nil {
		b.Fatal(err)
	}
	fillHome(b, tpod.Dir, benchHomeMiB())
	key := homesnap.ArchiveKey("bench", "bench", "source")
	res, err := homesnap.Capture(ctx, kc, store, homesnap.Request{Pod: pod, ArchiveKey: key,
		ManifestKey: homesnap.ManifestKey(key), MaxBytes: 8 << 30, Level: 6})
	if err != nil {
		b.Fatal(err)
	}
	m := res.Manifest
	want := &archive.Expect{SHA256: m.SHA256, Entries: m.Entries, Bytes: m.ContentBytes}
	pin := objstore.Pin{ETag: m.ETag, VersionID: m.VersionID}

	b.Run("vet", func(b *testing.B) {
		b.SetBytes(m.ContentBytes)
		b.ReportAllocs()
		for b.Loop() {
			body, _, err := store.Get(ctx, key, pin)
			if err != nil {
				b.Fatal(err)
			}
			_, err = archive.Vet(ctx, body, archive.Limits{}, want)
			body.Close()
			if err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("backup", func(b *testing.B) {
		b.SetBytes(m.ContentBytes)
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			i++
			k := homesnap.ArchiveKey("bench", "bench", "backup-"+strconv.Itoa(i))
			if _, err := homesnap.Capture(ctx, kc, store, homesnap.Request{Pod: pod, ArchiveKey: k,
				ManifestKey: homesnap.ManifestKey(k), MaxBytes: 8 << 30, Level: 6}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("extract", func(b *testing.B) {
		b.SetBytes(m.ContentBytes)
		b.ReportAllocs()
		for b.Loop() {
			if err := kc.Exec(ctx, pod, []string{"find", "/config", "-xdev", "-mindepth", "1", "-delete"}, kube.Streams{}); err != nil {
				b.Fatal(err)
			}
			body, _, err := store.Get(ctx, key, pin)
			if err != nil {
				b.Fatal(err)
			}
			pr, pw := io.Pipe()
			done := make(chan error, 1)
			go func() {
				_, err := archive.Repack(ctx, pw, body, archive.Limits{}, want)
				pw.CloseWithError(err)
				done <- err
			}()
			execErr := kc.Exec(ctx, pod, []string{"tar", "-xf", "-", "-C", "/config"}, kube.Streams{Stdin: pr})
			pr.Close()
			if err := <-done; err != nil {
				b.Fatal(err)
			}
			body.Close()
			if execErr != nil {
				b.Fatal(execErr)
			}
		}
	})
}
