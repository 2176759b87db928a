package function

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/robfig/cron/v3"

	"github.com/streamspace-dev/functions/shared/errs"
	"github.com/streamspace-dev/functions/shared/validate"
)

// Limits of the snapshot routes.
const (
	MaxName        = 255  // characters, session_snapshots.name is varchar(255)
	MaxDescription = 1000 // characters, as the snapshot.requested schema allows
	MaxMetadata    = 16 << 10
	MaxExpiresIn   = 10 * 365 * 24 * time.Hour
	MinExpiresIn   = time.Hour
	DefaultLimit   = 50
	MaxLimit       = 100
	MaxPage        = 10000
)

// Type is session_snapshots.type.
type Type string

// The snapshot types. A user asks for manual (the default) or automatic;
// the schedule makes automatic ones and a restore makes pre-restore ones.
const (
	Manual     Type = "manual"
	Automatic  Type = "automatic"
	PreRestore Type = "pre-restore"
)

// Status is session_snapshots.status.
type Status string

// The snapshot statuses, StreamSpace's.
const (
	Creating  Status = "creating"
	Available Status = "available"
	Restoring Status = "restoring"
	Failed    Status = "failed"
	Deleted   Status = "deleted"
)

// reservedMetadata are the metadata keys the function writes itself
// (store.go): a client cannot set them.
var reservedMetadata = []string{archiveKey, failureKey}

// CreateRequest is the body of POST /sessions/{sessionId}/snapshots.
type CreateRequest struct {
	Name        string          `json:"name"`
	Description string          `json:"description"`
	Type        string          `json:"type"`
	ExpiresIn   string          `json:"expiresIn"`
	Metadata    json.RawMessage `json:"metadata"`
}

// CreateInput is a validated CreateRequest.
type CreateInput struct {
	Name, Description string
	Type              Type
	// ExpiresIn is zero when the snapshot does not expire.
	ExpiresIn time.Duration
	// Metadata is a JSON object, "{}" when none was given.
	Metadata []byte
}

// Validate checks the body; the error names the field.
func (r CreateRequest) Validate() (CreateInput, error) {
	in := CreateInput{Name: strings.TrimSpace(r.Name), Description: r.Description, Type: Manual, Metadata: []byte("{}")}
	if n := utf8.RuneCountInString(in.Name); n == 0 || n > MaxName {
		return CreateInput{}, errs.E(errs.Invalid, "name: want 1-%d characters", MaxName)
	}
	if validate.HasControl(in.Name) {
		return CreateInput{}, errs.E(errs.Invalid, "name %q: control, bidirectional and zero-width characters are not allowed", validate.Quote(in.Name))
	}
	if n := utf8.RuneCountInString(r.Description); n > MaxDescription {
		return CreateInput{}, errs.E(errs.Invalid, "description: %d characters, at most %d", n, MaxDescription)
	}
	if strings.ContainsFunc(r.Description, func(c rune) bool { return c < 0x20 && c != '\n' && c != '\r' && c != '\t' }) {
		return CreateInput{}, errs.E(errs.Invalid, "description: control characters other than line breaks and tabs are not allowed")
	}
	switch Type(r.Type) {
	case "":
	case Manual, Automatic:
		in.Type = Type(r.Type)
	default:
		return CreateInput{}, errs.E(errs.Invalid, "type %q: want manual or automatic", validate.Quote(r.Type))
	}
	if r.ExpiresIn != "" {
		d, err := ParseExpiresIn(r.ExpiresIn)
		if err != nil {
			return CreateInput{}, err
		}
		in.ExpiresIn = d
	}
	if len(r.Metadata) > 0 && string(r.Metadata) != "null" {
		if len(r.Metadata) > MaxMetadata {
			return CreateInput{}, errs.E(errs.Invalid, "metadata: %d bytes, at most %d", len(r.Metadata), MaxMetadata)
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(r.Metadata, &m); err != nil || m == nil {
			return CreateInput{}, errs.E(errs.Invalid, "metadata: want a JSON object")
		}
		for _, k := range reservedMetadata {
			if _, ok := m[k]; ok {
				return CreateInput{}, errs.E(errs.Invalid, "metadata.%s: reserved for the function's own record", k)
			}
		}
		// PostgreSQL's jsonb refuses \u0000; say so as a 400, not a 500.
		if strings.Contains(string(r.Metadata), `\u0000`) {
			return CreateInput{}, errs.E(errs.Invalid, "metadata: NUL characters are not allowed")
		}
		in.Metadata = r.Metadata
	}
	return in, nil
}

// ParseExpiresIn reads a lifetime: a number of days ("7d", as StreamSpace's
// UI sends) or a Go duration ("36h"), from an hour to ten years.
func ParseExpiresIn(s string) (time.Duration, error) {
	bad := errs.E(errs.Invalid, "expiresIn %q: want days (\"7d\") or a duration (\"36h\") from 1h to 3650d", validate.Quote(s))
	var d time.Duration
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n < 1 || n > 3650 || days[0] == '+' {
			return 0, bad
		}
		d = time.Duration(n) * 24 * time.Hour
	} else {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			return 0, bad
		}
	}
	if d < MinExpiresIn || d > MaxExpiresIn {
		return 0, bad
	}
	return d, nil
}

// sessionID is the {sessionId} path value.
func sessionID(r *http.Request) (string, error) {
	return validate.PathID(r, "sessionId", "sessionId")
}

// snapshotPath is the {sessionId} and {snapshotId} path values.
func snapshotPath(r *http.Request) (sessionID, snapshotID string, err error) {
	if sessionID, err = validate.PathID(r, "sessionId", "sessionId"); err != nil {
		return "", "", err
	}
	snapshotID, err = validate.PathID(r, "snapshotId", "snapshotId")
	return sessionID, snapshotID, err
}

// Page is a validated page of a list: limit and 1-based page number.
type Page struct {
	Limit, Number int
}

// Offset is how many rows come before the page.
func (p Page) Offset() int { return (p.Number - 1) * p.Limit }

// parsePage reads limit (1-100, default 50) and page (1-10000, default 1).
func parsePage(q url.Values) (Page, error) {
	limit, err := validate.Limit(q, DefaultLimit, MaxLimit)
	if err != nil {
		return Page{}, err
	}
	p := Page{Limit: limit, Number: 1}
	if q.Has("page") {
		v := q.Get("page")
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxPage {
			return Page{}, errs.E(errs.Invalid, "page %q: want an integer from 1 to %d", validate.Quote(v), MaxPage)
		}
		p.Number = n
	}
	return p, nil
}

// SnapshotConfig is sessions.snapshot_config, in StreamSpace's shape.
type SnapshotConfig struct {
	AutomaticSnapshots AutomaticConfig   `json:"automaticSnapshots"`
	Retention          RetentionConfig   `json:"retention"`
	Compression        CompressionConfig `json:"compression"`
}

// AutomaticConfig is when automatic snapshots are taken.
type AutomaticConfig struct {
	Enabled bool `json:"enabled"`
	// Schedule is a five-field cron expression.
	Schedule string `json:"schedule"`
	// Timezone is an IANA zone the schedule is read in; UTC when empty.
	Timezone string `json:"timezone,omitempty"`
}

// RetentionConfig is how long a session's snapshots are kept.
type RetentionConfig struct {
	// MaxSnapshots is the most manual and automatic snapshots the session
	// keeps; older ones go. Pre-restore backups are not counted.
	MaxSnapshots int `json:"maxSnapshots"`
	// RetentionDays is how long automatic snapshots are kept when
	// DeleteExpiredAuto is set, and how long pre-restore backups are kept.
	RetentionDays     int  `json:"retentionDays"`
	DeleteExpiredAuto bool `json:"deleteExpiredAuto"`
}

// CompressionConfig is the archive's gzip level; disabled stores it
// uncompressed inside gzip (level 0), so the format stays .tar.gz.
type CompressionConfig struct {
	Enabled bool `json:"enabled"`
	Level   int  `json:"level"`
}

// DefaultConfig is a session's config until it is set: StreamSpace's
// defaults, automatic snapshots off.
func DefaultConfig() SnapshotConfig {
	return SnapshotConfig{
		AutomaticSnapshots: AutomaticConfig{Enabled: false, Schedule: "0 2 * * *"},
		Retention:          RetentionConfig{MaxSnapshots: 10, RetentionDays: 30, DeleteExpiredAuto: true},
		Compression:        CompressionConfig{Enabled: true, Level: 6},
	}
}

// GzipLevel is the level the archive is written with.
func (c SnapshotConfig) GzipLevel() int {
	if !c.Compression.Enabled {
		return 0
	}
	return c.Compression.Level
}

// cronParser reads five-field schedules.
var cronParser = cron.NewParser(cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// Schedule is the parsed schedule in its zone.
func (c AutomaticConfig) schedule() (cron.Schedule, *time.Location, error) {
	loc := time.UTC
	if c.Timezone != "" {
		l, err := time.LoadLocation(c.Timezone)
		if err != nil {
			return nil, nil, errs.E(errs.Invalid, "automaticSnapshots.timezone %q: not an IANA time zone", validate.Quote(c.Timezone))
		}
		loc = l
	}
	if strings.Contains(c.Schedule, "TZ=") {
		return nil, nil, errs.E(errs.Invalid, "automaticSnapshots.schedule: name the zone in automaticSnapshots.timezone")
	}
	s, err := cronParser.Parse(c.Schedule)
	if err != nil {
		return nil, nil, errs.E(errs.Invalid, "automaticSnapshots.schedule %q: want a five-field cron expression", validate.Quote(c.Schedule))
	}
	return s, loc, nil
}

// Validate checks a config as PUT sends it; the error names the field.
func (c SnapshotConfig) Validate() (SnapshotConfig, error) {
	if _, _, err := c.AutomaticSnapshots.schedule(); err != nil {
		return c, err
	}
	if n := c.Retention.MaxSnapshots; n < 1 || n > 1000 {
		return c, errs.E(errs.Invalid, "retention.maxSnapshots %d: want 1 to 1000", n)
	}
	if n := c.Retention.RetentionDays; n < 1 || n > 3650 {
		return c, errs.E(errs.Invalid, "retention.retentionDays %d: want 1 to 3650", n)
	}
	if l := c.Compression.Level; l < 1 || l > 9 {
		return c, errs.E(errs.Invalid, "compression.level %d: want 1 to 9", l)
	}
	return c, nil
}

// readConfig decodes a stored snapshot_config over the defaults, so a key
// it lacks keeps its default. A stored value that does not decode (written
// by hand or by another client) reads as the defaults.
func readConfig(raw []byte) SnapshotConfig {
	c := DefaultConfig()
	if len(raw) == 0 {
		return c
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		return DefaultConfig()
	}
	if _, err := c.Validate(); err != nil {
		return DefaultConfig()
	}
	return c
}
