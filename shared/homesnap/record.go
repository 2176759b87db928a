package homesnap

// ArchiveRecord is metadata.archive of an available snapshot row
// (docs/snapshots.md): the manifest's key and what a restore needs to read
// exactly this archive and check it. The snapshot function writes it for a
// snapshot, the restore function for its pre-restore backup.
type ArchiveRecord struct {
	Manifest  string   `json:"manifest"`
	ETag      string   `json:"etag"`
	VersionID string   `json:"versionId,omitempty"`
	SHA256    string   `json:"sha256"`
	Entries   int64    `json:"entries"`
	TarBytes  int64    `json:"tarBytes"`
	Level     int      `json:"level"`
	Pod       string   `json:"pod"`
	Warnings  []string `json:"warnings,omitempty"`
}

// Record is the ArchiveRecord of the archive m describes, whose manifest
// is stored under manifestKey.
func (m Manifest) Record(manifestKey string) ArchiveRecord {
	return ArchiveRecord{
		Manifest: manifestKey, ETag: m.ETag, VersionID: m.VersionID, SHA256: m.SHA256,
		Entries: m.Entries, TarBytes: m.TarBytes, Level: m.Level,
		Pod: m.Pod.Namespace + "/" + m.Pod.Name, Warnings: m.Warnings,
	}
}

// FailureRecord is metadata.failure of a failed snapshot row: the stage
// that failed and why.
type FailureRecord struct {
	Stage Stage  `json:"stage"`
	Error string `json:"error"`
}
