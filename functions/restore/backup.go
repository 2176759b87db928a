package function

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/streamspace-dev/functions/shared/archive"
	"github.com/streamspace-dev/functions/shared/objstore"
)

// manifests reads a snapshot's manifest, stored next to its archive.
type manifests struct {
	store objects
}

// manifest is the part of a snapshot's manifest a restore checks.
type manifest struct {
	SHA256  string `json:"sha256"`
	Entries int64  `json:"entries"`
	Bytes   int64  `json:"bytes"`
}

// maxManifest bounds the manifest read: it is a few hundred bytes.
const maxManifest = 1 << 20

// Manifest reads the manifest of the archive at archiveKey.
func (m manifests) Manifest(ctx context.Context, archiveKey string) (archive.Expect, error) {
	body, _, err := m.store.Get(ctx, ManifestKey(archiveKey), objstore.Pin{})
	if err != nil {
		return archive.Expect{}, err
	}
	defer body.Close()
	raw, err := io.ReadAll(io.LimitReader(body, maxManifest))
	if err != nil {
		return archive.Expect{}, fmt.Errorf("read manifest: %w", err)
	}
	var man manifest
	if err := json.Unmarshal(raw, &man); err != nil {
		return archive.Expect{}, fmt.Errorf("manifest %s: %w", ManifestKey(archiveKey), err)
	}
	if len(man.SHA256) != 64 || man.Entries < 1 || man.Bytes < 0 {
		return archive.Expect{}, fmt.Errorf("manifest %s: sha256, entries and bytes are required", ManifestKey(archiveKey))
	}
	return archive.Expect{SHA256: man.SHA256, Entries: man.Entries, Bytes: man.Bytes}, nil
}
