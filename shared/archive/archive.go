// Package archive vets tar.gz streams from an untrusted source and re-packs
// them into plain tar streams of checked entries only.
//
// A session's snapshot is a tar.gz of the user's home that a pod produced, so
// its content is the user's to shape. Before any of it reaches a pod's
// `tar -xf`, every entry is checked: a local name with no `..`, no link that
// leads out of the root (including through chains of earlier links), no
// device, FIFO or socket, no setuid, setgid or sticky bit, and caps on the
// number of entries and the bytes they expand to. The SHA-256 of the
// compressed stream and the entry count are compared with what the snapshot's
// manifest recorded, and a truncated stream or trailing garbage is an error.
//
// Everything is streamed: nothing is written to disk and no archive is held
// in memory. The model of the tree kept while checking holds only symlinks
// and the paths their targets pass through, and the restored-name index holds
// eight bytes per entry. docs/archive.md describes the rules.
package archive

import (
	"errors"
	"fmt"
)

// Limits bounds what a stream may expand to. A zero field takes its default.
type Limits struct {
	// MaxBytes caps the total size of all entries' contents, as their
	// headers declare them (the decompression-bomb guard).
	MaxBytes int64
	// MaxEntries caps the number of tar entries.
	MaxEntries int64
	// MaxPadding caps the zero bytes allowed after the tar end marker
	// (tar pads its output to whole records).
	MaxPadding int64
}

// Defaults for Limits.
const (
	DefaultMaxBytes   int64 = 64 << 30
	DefaultMaxEntries int64 = 500_000
	DefaultMaxPadding int64 = 1 << 20
	// MaxNameLen is the longest entry name or link target accepted (PATH_MAX).
	MaxNameLen = 4096
	// maxHops bounds symlink expansions while resolving one path, as the
	// kernel's ELOOP does.
	maxHops = 40
)

func (l Limits) withDefaults() Limits {
	if l.MaxBytes <= 0 {
		l.MaxBytes = DefaultMaxBytes
	}
	if l.MaxEntries <= 0 {
		l.MaxEntries = DefaultMaxEntries
	}
	if l.MaxPadding <= 0 {
		l.MaxPadding = DefaultMaxPadding
	}
	return l
}

// Expect is what the snapshot's manifest says about the stored object. All
// three are compared; Bytes also lowers the byte cap, so an archive that
// claims more than its manifest is stopped at the first header past it.
type Expect struct {
	// SHA256 is the lowercase hex SHA-256 of the compressed object.
	SHA256 string
	// Entries is the number of tar entries, the root directory's included.
	Entries int64
	// Bytes is the total content size of the entries.
	Bytes int64
}

// Summary describes a stream that passed.
type Summary struct {
	// Entries counts every tar entry, as the manifest counts them.
	Entries int64
	// Bytes is the total content size of the entries.
	Bytes int64
	// CompressedBytes is the size of the compressed stream read.
	CompressedBytes int64
	// SHA256 is the lowercase hex SHA-256 of the compressed stream.
	SHA256 string
	// Restored indexes the names written by Repack (the root excluded); nil
	// after Vet.
	Restored *NameSet
}

// ErrRejected is matched by every Rejection.
var ErrRejected = errors.New("archive rejected")

// ErrTooManyEntries and ErrTooLarge are matched, besides ErrRejected, by the
// Rejection of a stream over Limits.MaxEntries or Limits.MaxBytes, so a
// caller can name the setting that holds the cap.
var (
	ErrTooManyEntries = errors.New("archive has more entries than its cap")
	ErrTooLarge       = errors.New("archive expands to more bytes than its cap")
)

// Rejection says why a stream failed the vet. It is final: reading the same
// object again gives the same answer. Errors that are not Rejections came from
// reading the source (a dropped connection) or writing the output, and may
// succeed on a retry.
type Rejection struct {
	// Entry is the offending entry's name as stored, empty for stream-level
	// faults (checksum, truncation, caps on the whole stream).
	Entry string
	// Reason says what is wrong, in words an operator can act on.
	Reason string
	// over is ErrTooManyEntries or ErrTooLarge for a cap's rejection.
	over error
}

func (r *Rejection) Error() string {
	if r.Entry == "" {
		return "archive rejected: " + r.Reason
	}
	return fmt.Sprintf("archive rejected: entry %q: %s", r.Entry, r.Reason)
}

// Is makes errors.Is(err, ErrRejected) true for every Rejection, and
// errors.Is(err, ErrTooManyEntries) or (err, ErrTooLarge) for a cap's.
func (r *Rejection) Is(target error) bool {
	return target == ErrRejected || (r.over != nil && target == r.over)
}

func reject(entry, format string, args ...any) *Rejection {
	return &Rejection{Entry: entry, Reason: fmt.Sprintf(format, args...)}
}
