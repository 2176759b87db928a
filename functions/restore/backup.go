package function

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"

	"github.com/streamspace-dev/functions/shared/archive"
	"github.com/streamspace-dev/functions/shared/homesnap"
	"github.com/streamspace-dev/functions/shared/kube"
	"github.com/streamspace-dev/functions/shared/objstore"
	"github.com/streamspace-dev/functions/shared/runtime"
)

// backupLevel is the gzip level of pre-restore backups, gzip's default
// (the snapshot configuration's default level too).
const backupLevel = 6

// homeCapturer takes pre-restore backups with the capture the snapshot
// function uses (shared/homesnap), so a backup is a snapshot like any other.
type homeCapturer struct {
	pods     homesnap.Execer
	store    homesnap.Store
	maxBytes int64
	// maxEntries is RESTORE_MAX_ENTRIES: a backup the rollback could not
	// restore is not taken.
	maxEntries int64
}

// Capture stores pod's /config under key, its manifest beside it.
func (c homeCapturer) Capture(ctx context.Context, pod kube.Pod, key string, labels map[string]string) (homesnap.Manifest, error) {
	res, err := homesnap.Capture(ctx, c.pods, c.store, homesnap.Request{
		Pod: pod, ArchiveKey: key, ManifestKey: homesnap.ManifestKey(key),
		MaxBytes: c.maxBytes, MaxEntries: c.maxEntries, Level: backupLevel, Labels: labels,
	})
	if len(res.Broken) > 0 {
		runtime.AddLogAttrs(ctx, slog.Any("backupBrokenStreams", res.Broken))
	}
	if err != nil {
		return homesnap.Manifest{}, err
	}
	return res.Manifest, nil
}

// manifests reads a snapshot's manifest, stored next to its archive.
type manifests struct {
	store objects
}

// maxManifest bounds the manifest read: it is a few hundred bytes.
const maxManifest = 1 << 20

// Manifest reads the manifest of the archive at archiveKey: what the vet
// compares with, and the ETag (and version) both reads are pinned to.
func (m manifests) Manifest(ctx context.Context, archiveKey string) (archive.Expect, objstore.Pin, error) {
	key := homesnap.ManifestKey(archiveKey)
	body, _, err := m.store.Get(ctx, key, objstore.Pin{})
	if err != nil {
		return archive.Expect{}, objstore.Pin{}, err
	}
	defer body.Close()
	raw, err := io.ReadAll(io.LimitReader(body, maxManifest))
	if err != nil {
		return archive.Expect{}, objstore.Pin{}, fmt.Errorf("read manifest %s: %w", key, err)
	}
	var man homesnap.Manifest
	if err := json.Unmarshal(raw, &man); err != nil {
		return archive.Expect{}, objstore.Pin{}, fmt.Errorf("manifest %s: %w", key, err)
	}
	if len(man.SHA256) != 64 || man.Entries < 1 || man.ContentBytes < 0 || man.ETag == "" {
		return archive.Expect{}, objstore.Pin{}, fmt.Errorf("manifest %s: etag, sha256, entries and contentBytes are required", key)
	}
	return archive.Expect{SHA256: man.SHA256, Entries: man.Entries, Bytes: man.ContentBytes},
		objstore.Pin{ETag: man.ETag, VersionID: man.VersionID}, nil
}
