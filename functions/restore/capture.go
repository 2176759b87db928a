package function

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/gzip"

	"github.com/streamspace-dev/functions/shared/kube"
	"github.com/streamspace-dev/functions/shared/objstore"
)

// captureCmd archives /config uncompressed: the function compresses, so
// the user's desktop does not pay for its own backup.
var captureCmd = []string{"tar", "-cf", "-", "-C", configDir, "."}

// tarFileChanged is GNU tar's exit status for "file changed as we read it":
// the session is live, so a file being written is expected, and the archive
// is complete.
const tarFileChanged = 1

// uploader is the storage a capture writes to.
type uploader interface {
	Upload(ctx context.Context, key string, r io.Reader, o objstore.UploadOptions) (objstore.Object, error)
	Put(ctx context.Context, key string, body []byte, contentType string) (objstore.Object, error)
}

// streamCapturer archives a pod's /config into storage in one pass: the
// pod's tar stream is counted, gzipped, hashed and uploaded as it arrives,
// and the manifest is written after the archive.
type streamCapturer struct {
	store    uploader
	pods     pods
	maxBytes int64
}

func newCapturer(store uploader, p pods, cfg Config) capturer {
	return streamCapturer{store: store, pods: p, maxBytes: cfg.MaxBytes}
}

// Capture stores pod's /config under key and its manifest under
// ManifestKey(key).
func (c streamCapturer) Capture(ctx context.Context, pod kube.Pod, key string) (captured, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	tarR, tarW := io.Pipe()
	gzR, gzW := io.Pipe()
	hash := sha256.New()
	counted := make(chan tarCount, 1)
	execDone := make(chan error, 1)

	go func() {
		err := c.pods.Exec(ctx, pod, captureCmd, kube.Streams{Stdout: tarW})
		if kube.ExitCode(err) == tarFileChanged {
			err = nil
		}
		tarW.CloseWithError(err)
		execDone <- err
	}()
	go func() {
		zw, _ := gzip.NewWriterLevel(io.MultiWriter(gzW, hash), gzip.DefaultCompression)
		n, err := countTar(io.TeeReader(tarR, zw))
		if err == nil {
			err = zw.Close()
		}
		tarR.CloseWithError(err)
		gzW.CloseWithError(err)
		counted <- tarCount{entries: n.entries, bytes: n.bytes, err: err}
	}()
	obj, upErr := c.store.Upload(ctx, key, gzR, objstore.UploadOptions{ContentType: "application/gzip", MaxBytes: c.maxBytes})
	if upErr != nil {
		cancel(upErr)
	}
	gzR.CloseWithError(errors.New("upload stopped"))
	n := <-counted
	execErr := <-execDone
	if err := errors.Join(execErr, n.err, upErr); err != nil {
		return captured{}, fmt.Errorf("capture /config: %w", err)
	}
	out := captured{ETag: obj.ETag, SHA256: hex.EncodeToString(hash.Sum(nil)), Entries: n.entries, Bytes: n.bytes, Size: obj.Size}
	man, err := json.Marshal(map[string]any{
		"sha256": out.SHA256, "entries": out.Entries, "bytes": out.Bytes, "compression": "gzip",
		"pod": pod.Namespace + "/" + pod.Name, "etag": out.ETag, "size": out.Size,
	})
	if err != nil {
		return captured{}, err
	}
	if _, err := c.store.Put(ctx, ManifestKey(key), man, "application/json"); err != nil {
		return captured{}, fmt.Errorf("capture /config: manifest: %w", err)
	}
	return out, nil
}

type tarCount struct {
	entries, bytes int64
	err            error
}

// countTar reads a tar stream to its end, counting entries and content
// bytes, and drains what follows the end marker.
func countTar(r io.Reader) (tarCount, error) {
	var n tarCount
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return n, err
		}
		n.entries++
		n.bytes += h.Size
	}
	_, err := io.Copy(io.Discard, r)
	return n, err
}
