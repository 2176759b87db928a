// Package homesnap streams a session pod's home directory (/config) to
// object storage as a .tar.gz with a manifest: the capture both the
// snapshot function and the restore function's pre-restore backup use.
//
// The pod runs only `tar -cf - -C /config .`, with no compression, so the
// user's desktop does not pay for its own backup. In one pass the function
// then counts the tar stream's entries and bytes (and stops at a cap),
// gzips it, hashes the gzip stream with SHA-256 and uploads it as a
// multipart upload. Nothing is held in memory beyond a few upload parts and
// nothing touches local disk. The manifest is written last, as the marker
// that the archive is complete (docs/snapshots.md).
package homesnap

import (
	"archive/tar"
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/streamspace-dev/functions/shared/chunkpipe"
	"github.com/streamspace-dev/functions/shared/errs"
	"github.com/streamspace-dev/functions/shared/kube"
	"github.com/streamspace-dev/functions/shared/objstore"
)

// Home is the mount point of a session's home directory.
const Home = "/config"

// Command is what the pod runs: an uncompressed tar of /config's contents
// on stdout.
var Command = []string{"tar", "-cf", "-", "-C", Home, "."}

// Tool names the producer in the manifest, so a restore can tell how an
// archive was made.
const Tool = "streamspace-functions/homesnap v1 (GNU tar -cf, klauspost/compress gzip)"

// ManifestVersion is the manifest format's version.
const ManifestVersion = 1

// handoff is the chunk one stage passes to the next.
const handoff = 1 << 20

// tarChangedStatus is GNU tar's exit status for "file changed as we read
// it": the archive is complete, one file in it may be inconsistent.
const tarChangedStatus = 1

// Stage names the part of a capture that failed.
type Stage string

// The stages.
const (
	StagePod      Stage = "pod"      // finding or reaching the pod
	StageTar      Stage = "tar"      // the pod's tar, or its stream
	StageLimit    Stage = "limit"    // the home is larger than the cap
	StageCompress Stage = "compress" // gzip
	StageUpload   Stage = "upload"   // the multipart upload
	StageManifest Stage = "manifest" // writing the manifest
)

// Error is a capture that failed at Stage.
type Error struct {
	Stage Stage
	Err   error
}

func (e *Error) Error() string { return fmt.Sprintf("%s: %v", e.Stage, e.Err) }
func (e *Error) Unwrap() error { return e.Err }

// StageOf is the stage of a capture error, or "" for other errors.
func StageOf(err error) Stage {
	var e *Error
	if errors.As(err, &e) {
		return e.Stage
	}
	return ""
}

// Execer runs a command in a pod (kube.Client).
type Execer interface {
	Exec(ctx context.Context, pod kube.Pod, cmd []string, s kube.Streams) error
}

// Store is the object storage a capture writes to (objstore.Store).
type Store interface {
	Upload(ctx context.Context, key string, r io.Reader, o objstore.UploadOptions) (objstore.Object, error)
	Put(ctx context.Context, key string, body []byte, contentType string) (objstore.Object, error)
	Delete(ctx context.Context, keys ...string) error
}

// Progress is how far a capture got.
type Progress struct {
	// Bytes is the uncompressed tar stream read so far.
	Bytes int64
	// Entries is the tar entries read so far.
	Entries int64
	// Stored is the compressed bytes produced so far.
	Stored int64
}

// Request is one capture.
type Request struct {
	Pod         kube.Pod
	ArchiveKey  string
	ManifestKey string
	// MaxBytes caps the uncompressed tar stream; past it the capture fails
	// at StageLimit. It also sizes the upload's parts.
	MaxBytes int64
	// MaxEntries, when positive, caps the tar stream's entries; past it
	// the capture fails at StageLimit. A restore refuses an archive with
	// more entries than its own cap, so the two are kept equal.
	MaxEntries int64
	// Level is the gzip level, 0 (stored, still .tar.gz) to 9.
	Level int
	// Progress, when set, is called every ProgressEvery while the capture
	// runs, from another goroutine.
	Progress      func(Progress)
	ProgressEvery time.Duration
	// Labels are copied into the manifest (snapshot, session and user ids);
	// not into the object's metadata, whose headers allow only ASCII.
	Labels map[string]string
}

// Manifest describes a stored archive; it is written next to it, last.
type Manifest struct {
	Version int    `json:"version"`
	Archive string `json:"archive"`
	// ETag and VersionID pin the archive for a restore.
	ETag      string `json:"etag"`
	VersionID string `json:"versionId,omitempty"`
	// SHA256 is the hash of the stored (gzip) object.
	SHA256 string `json:"sha256"`
	// SizeBytes is the stored object's size.
	SizeBytes int64 `json:"sizeBytes"`
	// Entries is the number of tar entries, "./" included.
	Entries int64 `json:"entries"`
	// TarBytes is the uncompressed tar stream's size; ContentBytes the sum
	// of the regular files' sizes in it.
	TarBytes     int64             `json:"tarBytes"`
	ContentBytes int64             `json:"contentBytes"`
	Compression  string            `json:"compression"`
	Level        int               `json:"level"`
	Source       string            `json:"source"`
	Pod          ManifestPod       `json:"pod"`
	StartedAt    time.Time         `json:"startedAt"`
	FinishedAt   time.Time         `json:"finishedAt"`
	Seconds      float64           `json:"seconds"`
	Tool         string            `json:"tool"`
	Warnings     []string          `json:"warnings,omitempty"`
	Labels       map[string]string `json:"labels,omitempty"`
}

// ManifestPod is the pod an archive was taken from.
type ManifestPod struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Node      string `json:"node,omitempty"`
	UID       int    `json:"uid"`
	GID       int    `json:"gid"`
}

// Result is a capture that completed: its manifest, as stored.
type Result struct {
	Manifest Manifest
	// ManifestObject is the manifest's object.
	ManifestObject objstore.Object
	// Broken holds the errors of the attempts whose exec stream broke, for
	// the caller's log. The manifest, which the snapshot's owner reads in
	// its metadata, only says which attempts broke: the errors name the
	// cluster's addresses.
	Broken []string
}

// errLimit is the cap being passed, recorded as the tar stage's failure.
var errLimit = errors.New("the home directory is larger than the snapshot limit")

// Capture runs the pod's tar and stores its gzip with a manifest. It
// returns only after every goroutine it started has ended. On failure the
// multipart upload has been aborted and no archive or manifest is left;
// the error is an *Error naming the stage.
//
// An attempt whose exec stream broke (StageTar and kube.StreamBroke: no
// exit status from tar, the connection was reset or the stream ended
// without tar's end-of-archive blocks) is cleaned up and made again from
// the start, up to kube.Attempts in all, while ctx lasts. Progress then
// starts again from zero, and the manifest's warnings record the broken
// attempts. Any other failure, tar's own exit status and a malformed
// stream included, ends the capture at once.
func Capture(ctx context.Context, ex Execer, st Store, req Request) (Result, error) {
	var broken []string
	for attempt := 1; ; attempt++ {
		res, err := capture(ctx, ex, st, req, len(broken))
		res.Broken = broken
		if err == nil || !streamBroke(ctx, err) || attempt == kube.Attempts {
			var e *Error
			if len(broken) > 0 && errors.As(err, &e) {
				err = &Error{Stage: e.Stage, Err: fmt.Errorf("%w (attempt %d of %d; the first: %s)", e.Err, attempt, kube.Attempts, broken[0])}
			}
			return res, err
		}
		broken = append(broken, err.Error())
	}
}

// streamBroke says whether a capture failed because its exec stream broke
// (kube.StreamBroke) in the tar stage, rather than because the stream was
// malformed: a broken stream is cut short, never garbled.
func streamBroke(ctx context.Context, err error) bool {
	return StageOf(err) == StageTar && kube.StreamBroke(ctx, err) && !errors.Is(err, tar.ErrHeader)
}

// capture is one attempt of Capture, after broken attempts whose streams
// broke, which the manifest's warnings count.
func capture(ctx context.Context, ex Execer, st Store, req Request, broken int) (Result, error) {
	if req.Level < 0 || req.Level > 9 {
		return Result{}, &Error{Stage: StageCompress, Err: fmt.Errorf("gzip level %d: want 0 to 9", req.Level)}
	}
	started := time.Now().UTC()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var first firstError
	var tarBytes, entries, contentBytes, stored atomic.Int64
	var warnings []string
	for i := range broken {
		warnings = append(warnings, fmt.Sprintf("exec stream broke in attempt %d of %d; the capture was made again", i+1, kube.Attempts))
	}

	tarStream := chunkpipe.New(chunks, handoff)
	gzR, gzW := io.Pipe()
	var wg sync.WaitGroup

	// The pod's tar writes its stream into chunks.
	wg.Add(1)
	go func() {
		defer wg.Done()
		err := ex.Exec(ctx, req.Pod, Command, kube.Streams{Stdout: tarStream})
		if code := kube.ExitCode(err); code == tarChangedStatus {
			var ee *kube.ExitError
			errors.As(err, &ee)
			warnings = append(warnings, "tar: a file changed while it was read (exit status 1): "+lastLine(ee.Stderr))
			err = nil
		}
		if err != nil {
			stage := StageTar
			if k := errs.KindOf(err); kube.ExitCode(err) < 0 && (k == errs.NotFound || k == errs.Forbidden) {
				stage = StagePod
			}
			first.set(stage, err)
			cancel()
		}
		tarStream.CloseWrite(err)
	}()

	// One goroutine counts the tar stream and gzips it into gzW, handing
	// the gzip stream over a MiB at a time.
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer tarStream.Stop()
		zout := bufio.NewWriterSize(gzW, handoff)
		err := compressChunks(tarStream, zout, req, &tarBytes, &entries, &contentBytes)
		if err == nil {
			err = zout.Flush()
		}
		if err != nil {
			// A stream that is cut short or malformed is tar's failure, even
			// when its exec ended without an error: the exit status of a
			// pod that went away can be lost, or be tar's 1 for files that
			// vanished as it read them. Only gzip's own output failing is
			// the compress stage's.
			var ce *compressError
			switch {
			case errors.Is(err, errLimit):
				first.set(StageLimit, err)
			case errors.As(err, &ce), errors.Is(err, io.ErrClosedPipe):
				first.set(StageCompress, err)
			default:
				first.set(StageTar, err)
			}
			cancel()
		}
		gzW.CloseWithError(err)
	}()

	if req.Progress != nil && req.ProgressEvery > 0 {
		done := make(chan struct{})
		defer close(done)
		go func() {
			t := time.NewTicker(req.ProgressEvery)
			defer t.Stop()
			for {
				select {
				case <-done:
					return
				case <-ctx.Done():
					return
				case <-t.C:
					req.Progress(Progress{Bytes: tarBytes.Load(), Entries: entries.Load(), Stored: stored.Load()})
				}
			}
		}()
	}

	// This goroutine hashes the gzip stream as the upload reads it.
	hash := sha256.New()
	body := io.TeeReader(gzR, writerFunc(func(p []byte) (int, error) {
		stored.Add(int64(len(p)))
		return hash.Write(p)
	}))
	obj, err := st.Upload(ctx, req.ArchiveKey, body, objstore.UploadOptions{
		ContentType: "application/gzip",
		MaxBytes:    req.MaxBytes + req.MaxBytes/100 + 1<<20,
	})
	if err != nil {
		first.set(StageUpload, err)
		cancel()
	}
	gzR.CloseWithError(errors.Join(err, io.ErrClosedPipe))
	wg.Wait()
	if err := first.get(); err != nil {
		if obj.Key != "" {
			// The upload completed from a stream that then failed (a tar
			// exit status after its last byte): the archive is not kept.
			_ = st.Delete(context.WithoutCancel(ctx), req.ArchiveKey)
		}
		return Result{}, err
	}

	finished := time.Now().UTC()
	m := Manifest{
		Version: ManifestVersion, Archive: req.ArchiveKey, ETag: obj.ETag, VersionID: obj.VersionID,
		SHA256: hex.EncodeToString(hash.Sum(nil)), SizeBytes: stored.Load(),
		Entries: entries.Load(), TarBytes: tarBytes.Load(), ContentBytes: contentBytes.Load(),
		Compression: "gzip", Level: req.Level, Source: Home,
		Pod:       ManifestPod{Namespace: req.Pod.Namespace, Name: req.Pod.Name, Node: req.Pod.Node, UID: req.Pod.UID, GID: req.Pod.GID},
		StartedAt: started, FinishedAt: finished, Seconds: finished.Sub(started).Seconds(),
		Tool: Tool, Warnings: warnings, Labels: req.Labels,
	}
	doc, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return Result{}, &Error{Stage: StageManifest, Err: err}
	}
	mo, err := st.Put(ctx, req.ManifestKey, doc, "application/json")
	if err != nil {
		// Without its manifest the archive is incomplete by definition.
		_ = st.Delete(context.WithoutCancel(ctx), req.ArchiveKey)
		return Result{}, &Error{Stage: StageManifest, Err: err}
	}
	return Result{Manifest: m, ManifestObject: mo}, nil
}

// tarBlock is tar's block size.
const tarBlock = 512

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// firstError keeps the first failure of a capture: the cause, not the
// broken pipes it leads to elsewhere.
type firstError struct {
	mu  sync.Mutex
	err *Error
}

func (f *firstError) set(stage Stage, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err == nil {
		f.err = &Error{Stage: stage, Err: err}
	}
}

func (f *firstError) get() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err == nil {
		return nil
	}
	return f.err
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return s
}

// Prefix is where every archive and manifest is stored.
const Prefix = "snapshots/"

// ArchiveKey is where snapshot id of user's session is stored:
// snapshots/{userId}/{sessionId}/{snapshotId}.tar.gz.
func ArchiveKey(user, session, id string) string {
	return Prefix + user + "/" + session + "/" + id + ".tar.gz"
}

// ManifestKey is the manifest beside the archive at archiveKey.
func ManifestKey(archiveKey string) string {
	return strings.TrimSuffix(archiveKey, ".tar.gz") + ".json"
}

// SnapshotID is the snapshot id of an archive or manifest key, and false
// for any other key.
func SnapshotID(key string) (string, bool) {
	if !strings.HasPrefix(key, Prefix) {
		return "", false
	}
	base := key[strings.LastIndexByte(key, '/')+1:]
	for _, ext := range []string{".tar.gz", ".json"} {
		if id, ok := strings.CutSuffix(base, ext); ok && id != "" {
			return id, true
		}
	}
	return "", false
}
