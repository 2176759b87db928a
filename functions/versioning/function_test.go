package function_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/events"
	function "github.com/streamspace-dev/functions/functions/versioning"
	"github.com/streamspace-dev/functions/shared/access"
	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/fntest"
)

func TestCreateSnapshotsTheTemplatesContent(t *testing.T) {
	h := start(t, nil)
	alice := h.Token("alice", authn.User)
	seedTemplate(t, h, "tpl", "alice", "Firefox", `{"image":"firefox:118","resources":{"cpu":"1"}}`)
	exec(t, h, `update user_session_templates set icon = 'ff.png', resources = '{"memory":"2Gi"}', environment = '{"TZ":"UTC"}',
		visibility = 'team', is_default = true, usage_count = 7 where id = 'tpl'`)
	// Content only: no id, owner, group, visibility, default flag, counter or timestamps.
	wantData := `{"name":"Firefox","description":null,"icon":"ff.png","category":"browsers","tags":["web"],
		"base_template":"firefox","configuration":{"image":"firefox:118","resources":{"cpu":"1"}},
		"resources":{"memory":"2Gi"},"environment":{"TZ":"UTC"},"version":"1.0.0"}`

	tests := []struct {
		name            string
		token           string
		body            any
		wantNumber      int
		wantDescription string
		wantTags        []string
		wantCreatedBy   string
	}{
		{"described and tagged", alice, map[string]any{"description": "first cut", "tags": []string{" v1.0 ", "stable", "v1.0"}}, 1, "first cut", []string{"v1.0", "stable"}, "alice"},
		{"without tags or description", alice, map[string]any{}, 2, "", []string{}, "alice"},
		// A token from another issuer names no StreamSpace user: created_by
		// references users, so it stays empty rather than failing.
		{"caller who is not a StreamSpace user", h.Token("outsider", authn.Admin), map[string]any{}, 3, "", []string{}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, v := create(t, h, tc.token, "tpl", tc.body)
			require.Equal(t, http.StatusCreated, status)
			assert.Equal(t, "Version created successfully", v.Message)
			assert.Equal(t, v.ID, v.VersionID)
			assert.Positive(t, v.ID)
			assert.Equal(t, tc.wantNumber, v.Number)
			assert.Equal(t, "tpl", v.TemplateID)
			assert.Equal(t, tc.wantCreatedBy, v.CreatedBy)
			assert.Equal(t, tc.wantDescription, v.Description)
			assert.Equal(t, tc.wantTags, v.Tags)
			assert.Nil(t, v.RestoredFrom)
			assert.False(t, v.CreatedAt.IsZero())
			assertSameJSON(t, []byte(wantData), v.Data)
			assertSameJSON(t, []byte(wantData), versionData(t, h, "tpl", tc.wantNumber))
		})
	}

	t.Run("events", func(t *testing.T) {
		got := sent(t, h, events.TemplateVersionCreated, len(tests))
		var numbers []int
		for _, e := range got {
			assert.Equal(t, events.SourceOf(function.Name), e.Source())
			d, err := events.Decode[events.TemplateVersionCreatedData](e)
			require.NoError(t, err)
			assert.Equal(t, "tpl", d.TemplateID)
			want := tests[d.Version-1]
			assert.Equal(t, want.wantTags, d.Tags, "version %d", d.Version)
			if want.wantCreatedBy == "" {
				assert.Equal(t, "outsider", d.CreatedBy, "the event names the caller")
			} else {
				assert.Equal(t, want.wantCreatedBy, d.CreatedBy)
			}
			numbers = append(numbers, d.Version)
		}
		slices.Sort(numbers)
		assert.Equal(t, []int{1, 2, 3}, numbers)
	})
}

func TestCreateRejectsBadInputAndChangesNothing(t *testing.T) {
	h := start(t, nil)
	alice := h.Token("alice", authn.User)
	seedTemplate(t, h, "tpl", "alice", "T", `{}`)
	tooMany := make([]string, function.MaxTags+1)
	for i := range tooMany {
		tooMany[i] = fmt.Sprintf("t%d", i)
	}
	tests := []struct {
		name, path string
		body       any
		want       string
	}{
		{"description too long", versionsPath("tpl"), map[string]any{"description": strings.Repeat("é", 1001)}, "at most 1000"},
		{"description with NUL", versionsPath("tpl"), map[string]any{"description": "a\x00b"}, "control"},
		{"too many tags", versionsPath("tpl"), map[string]any{"tags": tooMany}, "at most 20"},
		{"blank tag", versionsPath("tpl"), map[string]any{"tags": []string{"ok", "  "}}, "tags[1]"},
		{"long tag", versionsPath("tpl"), map[string]any{"tags": []string{strings.Repeat("x", 51)}}, "tags[0]"},
		{"control character in tag", versionsPath("tpl"), map[string]any{"tags": []string{"a\tb"}}, "control"},
		{"reserved tag", versionsPath("tpl"), map[string]any{"tags": []string{"auto-backup"}}, "reserved"},
		{"reserved tag in capitals", versionsPath("tpl"), map[string]any{"tags": []string{"Auto-Backup"}}, "reserved"},
		{"unknown field", versionsPath("tpl"), `{"description":"x","version":7}`, "version"},
		{"wrong type", versionsPath("tpl"), `{"tags":"v1"}`, "tags"},
		{"malformed json", versionsPath("tpl"), `{"description":`, "malformed"},
		{"no body", versionsPath("tpl"), nil, "empty"},
		{"template id with a control character", versionsPath("tp%01l"), map[string]any{}, "template id"},
		{"template id too long", versionsPath(strings.Repeat("t", 256)), map[string]any{}, "template id"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, raw := h.Do(http.MethodPost, tc.path, alice, tc.body)
			require.Equal(t, http.StatusBadRequest, status, "%s", raw)
			_, msg := fntest.ErrorBody(t, raw)
			assert.Contains(t, msg, tc.want)
		})
	}
	t.Run("the limits themselves", func(t *testing.T) {
		atLimits := map[string]any{"description": strings.Repeat("é", 1000), "tags": tooMany[:20]}
		status, v := create(t, h, alice, "tpl", atLimits)
		require.Equal(t, http.StatusCreated, status)
		assert.Len(t, v.Tags, 20)
		assert.Equal(t, 1, h.Count(`select count(*) from user_session_template_versions`), "only the version at the limits")
	})
}

// TestConcurrentCreatesNumberWithoutGaps: many creates at once on one
// template get 1..n, each once. Nothing in it depends on how fast the
// machine is: the writers are awaited, and so are their events (start's
// cleanup), so stopping the function has nothing left to flush.
func TestConcurrentCreatesNumberWithoutGaps(t *testing.T) {
	tests := []struct {
		name    string
		writers int
	}{
		{"50 writers", 50},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := start(t, nil)
			seedTemplate(t, h, "tpl", "alice", "T", `{}`)
			token := h.Token("alice", authn.User)
			var wg sync.WaitGroup
			results := make([]function.CreateResult, tc.writers)
			failures := make([]error, tc.writers)
			for i := range tc.writers {
				wg.Go(func() {
					status, raw, err := request(http.MethodPost, h.URL+versionsPath("tpl"), token, fmt.Sprintf(`{"description":"writer %d"}`, i), nil)
					switch {
					case err != nil:
						failures[i] = err
					case status != http.StatusCreated:
						failures[i] = fmt.Errorf("status %d: %s", status, raw)
					default:
						failures[i] = json.Unmarshal(raw, &results[i])
					}
				})
			}
			wg.Wait()
			want := make([]int, tc.writers)
			for i := range want {
				want[i] = i + 1
			}
			var got []int
			for i, err := range failures {
				if assert.NoError(t, err, "writer %d", i) {
					got = append(got, results[i].Number)
				}
			}
			slices.Sort(got)
			assert.Equal(t, want, got, "numbers returned")
			assert.Equal(t, want, numbers(t, h, "tpl"), "numbers stored")
			assert.Len(t, sent(t, h, events.TemplateVersionCreated, tc.writers), tc.writers)
		})
	}
}

func TestListPagesNewestFirst(t *testing.T) {
	h := start(t, nil)
	alice := h.Token("alice", authn.User)
	seedTemplate(t, h, "tpl", "alice", "T", `{}`)
	seedTemplate(t, h, "empty", "alice", "E", `{}`)
	seedVersions(t, h, "tpl", 45)
	// A version StreamSpace's API saved with NULL description, tags and author.
	exec(t, h, `update user_session_template_versions set description = null, tags = null, created_by = null
		where template_id = 'tpl' and version_number = 44`)

	t.Run("walking the cursor", func(t *testing.T) {
		var seen []int
		query := "?limit=10"
		for pages := 1; ; pages++ {
			require.LessOrEqual(t, pages, 5, "pagination does not end")
			res := list(t, h, alice, "tpl", query)
			assert.Equal(t, len(res.Versions), res.Count)
			assert.Equal(t, 45, res.TotalCount)
			assert.Equal(t, 10, res.Limit)
			for _, v := range res.Versions {
				seen = append(seen, v.Number)
			}
			if res.NextCursor == "" {
				break
			}
			query = "?limit=10&cursor=" + res.NextCursor
		}
		want := make([]int, 45)
		for i := range want {
			want[i] = 45 - i
		}
		assert.Equal(t, want, seen)
	})

	tests := []struct {
		name       string
		template   string
		query      string
		wantCount  int
		wantFirst  int
		wantPage   int
		wantCursor bool
	}{
		{"default page", "tpl", "", function.DefaultLimit, 45, 0, true},
		{"largest page", "tpl", "?limit=100", 45, 45, 0, false},
		{"template without versions", "empty", "", 0, 0, 0, false},
		// StreamSpace's own API pages by number; its clients keep working.
		{"page 1 by number", "tpl", "?page=1&limit=10", 10, 45, 1, true},
		{"page 2 by number", "tpl", "?page=2&limit=10", 10, 35, 2, true},
		{"last page by number", "tpl", "?page=5&limit=10", 5, 5, 5, false},
		{"past the last page", "tpl", "?page=6&limit=10", 0, 0, 6, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := list(t, h, alice, tc.template, tc.query)
			require.Len(t, res.Versions, tc.wantCount)
			assert.Equal(t, tc.wantCount, res.Count)
			assert.Equal(t, tc.wantPage, res.Page)
			assert.Equal(t, tc.wantCursor, res.NextCursor != "")
			assert.NotNil(t, res.Versions, "versions is [] when empty")
			if tc.wantCount > 0 {
				assert.Equal(t, tc.wantFirst, res.Versions[0].Number)
			}
		})
	}

	t.Run("version fields", func(t *testing.T) {
		page := list(t, h, alice, "tpl", "?limit=2").Versions
		require.Len(t, page, 2)
		top := page[0]
		assert.Equal(t, 45, top.Number)
		assert.Positive(t, top.ID)
		assert.Equal(t, "author-0", top.CreatedBy)
		assert.Equal(t, "version 45", top.Description)
		assert.Equal(t, []string{"release-45"}, top.Tags)
		require.NotNil(t, top.RestoredFrom)
		assert.Equal(t, 1, *top.RestoredFrom)
		assert.False(t, top.CreatedAt.IsZero())
		assertSameJSON(t, []byte(`{"name":"v45"}`), top.Data, "templateData, as StreamSpace's list carries it")

		nulls := page[1]
		assert.Equal(t, 44, nulls.Number)
		assert.Nil(t, nulls.RestoredFrom)
		assert.Equal(t, []string{}, nulls.Tags, "NULL tags read as []")
		assert.Equal(t, "", nulls.Description)
		assert.Equal(t, "", nulls.CreatedBy)
	})
}

func TestListRejectsBadQueries(t *testing.T) {
	h := start(t, nil)
	alice := h.Token("alice", authn.User)
	seedTemplate(t, h, "tpl", "alice", "T", `{}`)
	seedTemplate(t, h, "other", "alice", "O", `{}`)
	seedVersions(t, h, "tpl", 5)
	seedVersions(t, h, "other", 5)
	cursor := list(t, h, alice, "tpl", "?limit=2").NextCursor
	raw, err := base64.RawURLEncoding.DecodeString(cursor)
	require.NoError(t, err)
	edited := base64.RawURLEncoding.EncodeToString([]byte(strings.Replace(string(raw), "4.", "5.", 1)))

	tests := []struct {
		name, template, query string
	}{
		{"limit zero", "tpl", "?limit=0"},
		{"limit too large", "tpl", "?limit=101"},
		{"negative limit", "tpl", "?limit=-1"},
		{"limit not a number", "tpl", "?limit=abc"},
		{"empty limit", "tpl", "?limit="},
		{"fractional limit", "tpl", "?limit=1.5"},
		{"cursor not base64", "tpl", "?cursor=not-base64!"},
		{"cursor without check", "tpl", "?cursor=" + base64.RawURLEncoding.EncodeToString([]byte("3"))},
		{"edited cursor", "tpl", "?cursor=" + edited},
		{"truncated cursor", "tpl", "?cursor=" + cursor[:len(cursor)-2]},
		{"long cursor", "tpl", "?cursor=" + strings.Repeat("A", 100)},
		{"another template's cursor", "other", "?cursor=" + cursor},
		{"page zero", "tpl", "?page=0"},
		{"page not a number", "tpl", "?page=two"},
		{"page too large", "tpl", "?page=10001"},
		{"page and cursor", "tpl", "?page=2&cursor=" + cursor},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, body := h.Do(http.MethodGet, versionsPath(tc.template)+tc.query, alice, nil)
			assert.Equal(t, http.StatusBadRequest, status, "%s", body)
		})
	}
	t.Run("the real cursor", func(t *testing.T) {
		got := list(t, h, alice, "tpl", "?limit=2&cursor="+cursor)
		require.Len(t, got.Versions, 2)
		assert.Equal(t, 3, got.Versions[0].Number)
	})
}

func TestRestoreSavesABackupAndOverwritesTheContent(t *testing.T) {
	h := start(t, nil)
	alice, bob := h.Token("alice", authn.User), h.Token("bob", authn.User)
	seedTemplate(t, h, "tpl", "alice", "Firefox", `{"image":"firefox:118"}`)
	seedUsers(t, h, "bob")
	exec(t, h, `insert into template_shares (id, template_id, shared_by, shared_with_user_id, permission_level) values ('sh-1', 'tpl', 'alice', 'bob', 'write')`)
	status, _ := create(t, h, alice, "tpl", map[string]any{"description": "good", "tags": []string{"stable"}})
	require.Equal(t, http.StatusCreated, status)
	v1 := templateNow(t, h, "tpl")
	exec(t, h, `update user_session_templates set name = 'Broken', category = null, icon = 'x.png', configuration = '{"image":"firefox:999"}',
		tags = '[]', environment = '{"A":"1"}', version = '2.0.0' where id = 'tpl'`)
	broken := templateNow(t, h, "tpl")

	tests := []struct {
		name       string
		token      string
		version    int
		header     http.Header
		wantBackup int
		wantNow    []byte
		wantActor  string
		wantIP     any
	}{
		{"a write sharer restores version 1", bob, 1, http.Header{"X-Forwarded-For": {"203.0.113.9, 10.0.0.1"}}, 2, v1, "bob", "203.0.113.9"},
		{"restoring the backup undoes it", alice, 2, nil, 3, broken, "alice", "127.0.0.1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := templateNow(t, h, "tpl")
			status, raw, err := request(http.MethodPost, h.URL+restorePath("tpl", tc.version), tc.token, nil, tc.header)
			require.NoError(t, err)
			require.Equal(t, http.StatusOK, status, "%s", raw)
			var res function.RestoreResult
			require.NoError(t, json.Unmarshal(raw, &res))

			assertSameJSON(t, tc.wantNow, templateNow(t, h, "tpl"), "template after the restore")
			assertSameJSON(t, tc.wantNow, res.Template, "template in the response")
			assert.Equal(t, "Version restored successfully", res.Message)
			assert.Equal(t, tc.version, res.Version)
			b := res.Backup
			assert.Equal(t, tc.wantBackup, b.Number)
			assert.Equal(t, tc.wantActor, b.CreatedBy)
			assert.Equal(t, fmt.Sprintf("Auto-backup before restoring version %d", tc.version), b.Description)
			assert.Equal(t, []string{function.AutoBackupTag}, b.Tags)
			if assert.NotNil(t, b.RestoredFrom) {
				assert.Equal(t, tc.version, *b.RestoredFrom)
			}
			assertSameJSON(t, before, versionData(t, h, "tpl", tc.wantBackup), "the backup saves the content the restore replaced")

			var actor, action, resourceType, changes string
			var ip any
			require.NoError(t, h.Pool.QueryRow(context.Background(),
				`select user_id, action, resource_type, changes::text, ip_address from audit_log
				 where resource_id = 'tpl' order by id desc limit 1`).Scan(&actor, &action, &resourceType, &changes, &ip))
			assert.Equal(t, tc.wantActor, actor)
			assert.Equal(t, string(function.ActionVersionRestored), action)
			assert.Equal(t, access.ResourceType, resourceType)
			assert.Equal(t, tc.wantIP, ip)
			assertSameJSON(t, fmt.Appendf(nil, `{"version":%d,"backupVersion":%d}`, tc.version, tc.wantBackup), []byte(changes))
		})
	}

	t.Run("events", func(t *testing.T) {
		restored := sent(t, h, events.TemplateVersionRestored, 2)
		updated := sent(t, h, events.TemplateUpdated, 2)
		var gotRestored []events.TemplateVersionRestoredData
		for _, e := range restored {
			d, err := events.Decode[events.TemplateVersionRestoredData](e)
			require.NoError(t, err)
			gotRestored = append(gotRestored, d)
		}
		assert.ElementsMatch(t, []events.TemplateVersionRestoredData{
			{TemplateID: "tpl", Version: 1, BackupVersion: 2, RestoredBy: "bob"},
			{TemplateID: "tpl", Version: 2, BackupVersion: 3, RestoredBy: "alice"},
		}, gotRestored)
		for _, e := range updated {
			d, err := events.Decode[events.TemplateUpdatedData](e)
			require.NoError(t, err)
			assert.Equal(t, "tpl", d.TemplateID)
			assert.Equal(t, string(function.ChangeRestored), d.Change)
		}
	})
}

// TestRestoreWritesOnlyContent: the columns that say whose a template is,
// who sees it and how it is used keep their values whatever the version
// holds, including a version StreamSpace's API saved with those keys.
func TestRestoreWritesOnlyContent(t *testing.T) {
	h := start(t, nil)
	alice := h.Token("alice", authn.User)
	seedTemplate(t, h, "tpl", "alice", "Now", `{"a":1}`)
	seedTemplate(t, h, "other", "alice", "Other", `{}`)
	exec(t, h, `insert into groups (id, name) values ('g-1', 'team-one')`)
	exec(t, h, `update user_session_templates set team_id = 'g-1', visibility = 'team', is_default = false, usage_count = 12,
		created_at = '2026-01-02 03:04:05', updated_at = '2026-01-02 03:04:05' where id = 'tpl'`)
	exec(t, h, `update user_session_templates set is_default = true where id = 'other'`)
	exec(t, h, `insert into user_session_template_versions (template_id, version_number, template_data, created_by)
		values ('tpl', 1, '{"id":"evil","user_id":"mallory","team_id":null,"visibility":"public","is_default":true,"usage_count":0,
			"created_at":"2000-01-01T00:00:00","name":"Old","description":"d","icon":"i","category":"c","tags":["t"],
			"base_template":"chrome","configuration":{"b":2},"resources":{"cpu":"2"},"environment":{"X":"y"},"version":"0.9.0"}', 'alice')`)
	const untouched = `select to_jsonb(r) from (select id, user_id, team_id, visibility, is_default, usage_count, created_at
		from user_session_templates where id = $1) r`
	var beforeTpl, beforeOther []byte
	require.NoError(t, h.Pool.QueryRow(context.Background(), untouched, "tpl").Scan(&beforeTpl))
	require.NoError(t, h.Pool.QueryRow(context.Background(), untouched, "other").Scan(&beforeOther))

	status, raw := h.Do(http.MethodPost, restorePath("tpl", 1), alice, nil)
	require.Equal(t, http.StatusOK, status, "%s", raw)

	tests := []struct {
		name, query, id string
		want            []byte
	}{
		{"content", `select to_jsonb(r) from (select ` + contentColumns + ` from user_session_templates where id = $1) r`, "tpl",
			[]byte(`{"name":"Old","description":"d","icon":"i","category":"c","tags":["t"],"base_template":"chrome",
				"configuration":{"b":2},"resources":{"cpu":"2"},"environment":{"X":"y"},"version":"0.9.0"}`)},
		{"identity, owner, group, visibility, default flag, counter, creation time", untouched, "tpl", beforeTpl},
		{"the owner's other templates", untouched, "other", beforeOther},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got []byte
			require.NoError(t, h.Pool.QueryRow(context.Background(), tc.query, tc.id).Scan(&got))
			assertSameJSON(t, tc.want, got)
		})
	}
	t.Run("updated_at is the restore's time", func(t *testing.T) {
		assert.Equal(t, 1, h.Count(`select count(*) from user_session_templates where id = 'tpl' and updated_at > '2026-01-02 03:04:05'`))
	})
}

// TestRestoreIsAllOrNothing fails the restore after the backup version is
// written, at the template update, and checks nothing of it remains.
func TestRestoreIsAllOrNothing(t *testing.T) {
	h := start(t, nil)
	alice := h.Token("alice", authn.User)
	seedTemplate(t, h, "tpl", "alice", "Firefox", `{"image":"firefox:118"}`)
	status, _ := create(t, h, alice, "tpl", map[string]any{})
	require.Equal(t, http.StatusCreated, status)
	exec(t, h, `update user_session_templates set name = 'Current' where id = 'tpl'`)
	before := templateNow(t, h, "tpl")
	waitOutboxEmpty(t, h) // the create's event is sent
	exec(t, h, `
		create function refuse_update() returns trigger language plpgsql as $$
		begin raise exception 'template updates are refused by the test'; end $$`)
	exec(t, h, `create trigger refuse_update before update on user_session_templates for each row execute function refuse_update()`)

	status, raw := h.Do(http.MethodPost, restorePath("tpl", 1), alice, nil)
	require.Equal(t, http.StatusInternalServerError, status, "%s", raw)
	_, msg := fntest.ErrorBody(t, raw)

	tests := []struct {
		name string
		got  any
		want any
	}{
		{"no internal detail reaches the client", strings.Contains(msg, "refused by the test"), false},
		{"the backup rolled back", h.Count(`select count(*) from user_session_template_versions where template_id = 'tpl'`), 1},
		{"no audit row", h.Count(`select count(*) from audit_log where resource_id = 'tpl'`), 0},
		// Events are queued in the route's transaction: none queued means
		// none can ever be sent.
		{"no event queued", h.Count(`select count(*) from event_outbox`), 0},
		{"no restore event sent", len(h.Sink.Events()), 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, tc.got)
		})
	}
	t.Run("template unchanged", func(t *testing.T) {
		assertSameJSON(t, before, templateNow(t, h, "tpl"))
	})
}

func TestRestoreOfDataThatNoLongerFitsIsAConflict(t *testing.T) {
	h := start(t, nil)
	alice := h.Token("alice", authn.User)
	seedTemplate(t, h, "tpl", "alice", "T", `{}`)
	exec(t, h, `insert into user_session_template_versions (template_id, version_number, template_data, created_by)
		values ('tpl', 1, '{"name": null}', 'alice'), ('tpl', 2, jsonb_build_object('version', repeat('9', 51)), 'alice'),
		       ('tpl', 3, '{"name": "Old", "unknown": 1, "is_default": "not a boolean", "usage_count": "many", "team_id": 7}', 'alice'),
		       ('tpl', 4, '[1, 2]', 'alice')`)
	before := templateNow(t, h, "tpl")
	tests := []struct {
		name       string
		version    int
		wantStatus int
		wantNow    []byte
	}{
		{"a NULL name the column refuses", 1, http.StatusConflict, before},
		{"a value longer than the column", 2, http.StatusConflict, before},
		{"data that is not an object", 4, http.StatusConflict, before},
		// A version saved before a column was versioned restores what it
		// has; keys that are not content are ignored whatever they hold.
		{"a version with fewer keys and others", 3, http.StatusOK, []byte(strings.Replace(string(before), `"name": "T"`, `"name": "Old"`, 1))},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, raw := h.Do(http.MethodPost, restorePath("tpl", tc.version), alice, nil)
			require.Equal(t, tc.wantStatus, status, "%s", raw)
			assertSameJSON(t, tc.wantNow, templateNow(t, h, "tpl"))
		})
	}
	assert.Equal(t, []int{1, 2, 3, 4, 5}, numbers(t, h, "tpl"), "only the successful restore left a backup")
}

// TestVersionsOfADeletedTemplate: StreamSpace deletes a template and leaves
// its versions, and no foreign key may tie them. Every route checks the
// template first, so such versions are never read or restored; the
// processed-events-prune tick deletes them.
func TestVersionsOfADeletedTemplate(t *testing.T) {
	h := start(t, nil)
	alice, admin := h.Token("alice", authn.User), h.Token("root", authn.Admin)
	seedTemplate(t, h, "tpl", "alice", "Gone", `{}`)
	seedTemplate(t, h, "other", "alice", "O", `{}`)
	seedVersions(t, h, "tpl", 3)
	seedVersions(t, h, "other", 2)
	exec(t, h, `delete from user_session_templates where id = 'tpl'`)
	require.Equal(t, 3, h.Count(`select count(*) from user_session_template_versions where template_id = 'tpl'`), "StreamSpace leaves them")

	tests := []struct {
		name, method, path string
		body               any
	}{
		{"list", http.MethodGet, versionsPath("tpl"), nil},
		{"diff two versions", http.MethodGet, diffPath("tpl", 1, "2"), nil},
		{"diff against current", http.MethodGet, diffPath("tpl", 1, ""), nil},
		{"create", http.MethodPost, versionsPath("tpl"), map[string]any{}},
		{"restore", http.MethodPost, restorePath("tpl", 1), nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, token := range []string{alice, admin} {
				status, raw := h.Do(tc.method, tc.path, token, tc.body)
				require.Equal(t, http.StatusNotFound, status, "%s", raw)
				code, msg := fntest.ErrorBody(t, raw)
				assert.Equal(t, "not_found", code)
				assert.Contains(t, msg, `template "tpl" not found`)
			}
		})
	}
	t.Run("the prune tick deletes them", func(t *testing.T) {
		require.Equal(t, http.StatusAccepted, ping(t, h, events.PruneSource))
		assert.Equal(t, []int{}, numbers(t, h, "tpl"))
		assert.Equal(t, []int{1, 2}, numbers(t, h, "other"), "versions of a live template stay")
	})
	t.Run("a new template with the same id starts its own history", func(t *testing.T) {
		seedTemplate(t, h, "tpl", "bob", "New", `{}`)
		bob := h.Token("bob", authn.User)
		assert.Empty(t, list(t, h, bob, "tpl", "").Versions)
		status, v := create(t, h, bob, "tpl", map[string]any{})
		require.Equal(t, http.StatusCreated, status)
		assert.Equal(t, 1, v.Number)
	})
}

func TestRetentionKeepsNewestTaggedAndRecentBackups(t *testing.T) {
	h := start(t, map[string]string{"VERSION_RETENTION": "3"})
	alice := h.Token("alice", authn.User)
	seedTemplate(t, h, "tpl", "alice", "T", `{}`)
	seedTemplate(t, h, "other", "alice", "O", `{}`)
	exec(t, h, `
		insert into user_session_template_versions (template_id, version_number, template_data, created_by, created_at, tags)
		values
			('tpl', 1, '{}', 'alice', localtimestamp - interval '90 days', '{}'),
			('tpl', 2, '{}', 'alice', localtimestamp - interval '90 days', '{v1.0}'),
			('tpl', 3, '{}', 'alice', localtimestamp - interval '40 days', '{auto-backup}'),
			('tpl', 4, '{}', 'alice', localtimestamp - interval '5 days', '{auto-backup}'),
			('tpl', 5, '{}', 'alice', localtimestamp - interval '2 days', null),
			('tpl', 6, '{}', 'alice', localtimestamp - interval '1 day', '{}'),
			('tpl', 7, '{}', 'alice', localtimestamp - interval '1 hour', '{}'),
			('other', 1, '{}', 'alice', localtimestamp - interval '90 days', '{}')`)

	tests := []struct {
		name       string
		method     string
		path       string
		body       any
		wantStatus int
		want       []int
	}{
		// Newest 3 (6, 7, 8); tagged 2; auto-backup 4 is 5 days old.
		// Untagged 1, NULL-tagged 5 and the 40-day-old backup 3 go.
		{"a create prunes", http.MethodPost, versionsPath("tpl"), map[string]any{}, http.StatusCreated, []int{2, 4, 6, 7, 8}},
		// A restore adds a backup (9) and prunes in the same transaction.
		{"a restore prunes", http.MethodPost, restorePath("tpl", 7), nil, http.StatusOK, []int{2, 4, 7, 8, 9}},
		// Numbers never repeat after pruning.
		{"numbers go on", http.MethodPost, versionsPath("tpl"), map[string]any{}, http.StatusCreated, []int{2, 4, 8, 9, 10}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, raw := h.Do(tc.method, tc.path, alice, tc.body)
			require.Equal(t, tc.wantStatus, status, "%s", raw)
			assert.Equal(t, tc.want, numbers(t, h, "tpl"))
			assert.Equal(t, []int{1}, numbers(t, h, "other"), "another template's versions are not pruned")
		})
	}
}

// TestVersionLimit: a template keeps at most VERSION_LIMIT versions, tagged
// ones included. Retention makes room where it may; where it may not, a
// create or restore is a 409 that changes nothing.
func TestVersionLimit(t *testing.T) {
	h := start(t, map[string]string{"VERSION_RETENTION": "2", "VERSION_LIMIT": "4"})
	alice := h.Token("alice", authn.User)
	seedTemplate(t, h, "tpl", "alice", "T", `{}`)

	tests := []struct {
		name       string
		path       string
		body       any
		wantStatus int
		want       []int
		wantMsg    string
	}{
		{"tagged 1", versionsPath("tpl"), map[string]any{"tags": []string{"a"}}, http.StatusCreated, []int{1}, ""},
		{"tagged 2", versionsPath("tpl"), map[string]any{"tags": []string{"b"}}, http.StatusCreated, []int{1, 2}, ""},
		{"untagged 3", versionsPath("tpl"), map[string]any{}, http.StatusCreated, []int{1, 2, 3}, ""},
		{"untagged 4 reaches the cap", versionsPath("tpl"), map[string]any{}, http.StatusCreated, []int{1, 2, 3, 4}, ""},
		// Retention keeps the 2 newest; untagged 3 is older and goes.
		{"retention makes room", versionsPath("tpl"), map[string]any{"tags": []string{"c"}}, http.StatusCreated, []int{1, 2, 4, 5}, ""},
		{"untagged 4 goes next", versionsPath("tpl"), map[string]any{"tags": []string{"d"}}, http.StatusCreated, []int{1, 2, 5, 6}, ""},
		// Every version is tagged now: nothing can go.
		{"tagged at the cap", versionsPath("tpl"), map[string]any{"tags": []string{"e"}}, http.StatusConflict, []int{1, 2, 5, 6}, "VERSION_LIMIT"},
		{"untagged at the cap", versionsPath("tpl"), map[string]any{}, http.StatusConflict, []int{1, 2, 5, 6}, "none can be pruned"},
		// A restore must save a backup first, so it is refused too.
		{"restore at the cap", restorePath("tpl", 1), nil, http.StatusConflict, []int{1, 2, 5, 6}, "already has 4 versions"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := templateNow(t, h, "tpl")
			status, raw := h.Do(http.MethodPost, tc.path, alice, tc.body)
			require.Equal(t, tc.wantStatus, status, "%s", raw)
			assert.Equal(t, tc.want, numbers(t, h, "tpl"))
			if tc.wantMsg != "" {
				code, msg := fntest.ErrorBody(t, raw)
				assert.Equal(t, "conflict", code)
				assert.Contains(t, msg, tc.wantMsg)
				assertSameJSON(t, before, templateNow(t, h, "tpl"), "template unchanged")
			}
		})
	}
	t.Run("nothing queued or audited by the refusals", func(t *testing.T) {
		assert.Len(t, sent(t, h, events.TemplateVersionCreated, 6), 6)
		assert.Equal(t, 0, h.Count(`select count(*) from audit_log where resource_id = 'tpl'`))
	})
}

func TestDiff(t *testing.T) {
	h := start(t, nil)
	alice := h.Token("alice", authn.User)
	seedTemplate(t, h, "tpl", "alice", "Firefox", `{"image":"firefox:118","env":["A=1"]}`)
	create(t, h, alice, "tpl", map[string]any{})
	exec(t, h, `update user_session_templates set name = 'Firefox ESR', configuration = '{"image":"firefox:128","env":["A=1","B=2"],"a/b":1}' where id = 'tpl'`)
	create(t, h, alice, "tpl", map[string]any{})
	exec(t, h, `update user_session_templates set category = null where id = 'tpl'`)
	v1, v2 := versionData(t, h, "tpl", 1), versionData(t, h, "tpl", 2)

	tests := []struct {
		name        string
		against     string
		wantAgainst string
		wantPatch   string
		wantSummary string
		wantResult  func() []byte
	}{
		{"two versions", "2", "2", `[
			{"op":"add","path":"/configuration/a~1b","value":1},
			{"op":"add","path":"/configuration/env/-","value":"B=2"},
			{"op":"replace","path":"/configuration/image","value":"firefox:128"},
			{"op":"replace","path":"/name","value":"Firefox ESR"}]`,
			"changed configuration.env, configuration.image, name; added configuration.a/b", func() []byte { return v2 }},
		{"the current template by default", "", "current", "",
			"changed category, configuration.env, configuration.image, name; added configuration.a/b", func() []byte { return templateNow(t, h, "tpl") }},
		{"the current template by name", "current", "current", "",
			"changed category, configuration.env, configuration.image, name; added configuration.a/b", func() []byte { return templateNow(t, h, "tpl") }},
		{"a version against itself", "1", "1", `[]`, "no changes", func() []byte { return v1 }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, raw := h.Do(http.MethodGet, diffPath("tpl", 1, tc.against), alice, nil)
			require.Equal(t, http.StatusOK, status, "%s", raw)
			var d function.DiffResult
			require.NoError(t, json.Unmarshal(raw, &d))
			assert.Equal(t, "tpl", d.TemplateID)
			assert.Equal(t, 1, d.Version)
			assert.Equal(t, tc.wantAgainst, d.Against)
			assert.Equal(t, tc.wantSummary, d.Summary.Text)
			patch, err := json.Marshal(d.Patch)
			require.NoError(t, err)
			if tc.wantPatch != "" {
				assertSameJSON(t, []byte(tc.wantPatch), patch)
			}
			if len(d.Patch) > 0 {
				assert.Contains(t, string(raw), `{"op":"replace","path":"/configuration/image","value":"firefox:128"}`, "written op, path, value")
			}
			assertSameJSON(t, tc.wantResult(), applyPatch(t, v1, patch), "the patch turns version 1 into the other side")
		})
	}

	bad := []struct {
		name string
		path string
		want int
	}{
		{"missing version", diffPath("tpl", 9, ""), http.StatusNotFound},
		{"missing other version", diffPath("tpl", 1, "9"), http.StatusNotFound},
		{"against a word", diffPath("tpl", 1, "latest"), http.StatusBadRequest},
		{"against zero", diffPath("tpl", 1, "0"), http.StatusBadRequest},
		{"against a negative number", diffPath("tpl", 1, "-2"), http.StatusBadRequest},
		{"against CURRENT in capitals", diffPath("tpl", 1, "CURRENT"), http.StatusBadRequest},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			status, raw := h.Do(http.MethodGet, tc.path, alice, nil)
			assert.Equal(t, tc.want, status, "%s", raw)
		})
	}
}

// TestDiffOfTooManyChangesIs422: two versions that differ in more places
// than a diff returns are refused with a message saying what to do.
func TestDiffOfTooManyChangesIs422(t *testing.T) {
	h := start(t, nil)
	alice := h.Token("alice", authn.User)
	seedTemplate(t, h, "tpl", "alice", "T", `{}`)
	exec(t, h, `insert into user_session_template_versions (template_id, version_number, template_data, created_by)
		select 'tpl', 1, jsonb_build_object('configuration', jsonb_object_agg('k' || g, g)), 'alice' from generate_series(1, $1::int) g`, function.MaxOperations)
	exec(t, h, `insert into user_session_template_versions (template_id, version_number, template_data, created_by)
		select 'tpl', 2, jsonb_build_object('configuration', jsonb_object_agg('k' || g, -g)), 'alice' from generate_series(1, $1::int + 1) g`, function.MaxOperations)
	exec(t, h, `insert into user_session_template_versions (template_id, version_number, template_data, created_by)
		values ('tpl', 3, '{"configuration": {}}', 'alice')`)
	tests := []struct {
		name, against string
		wantStatus    int
	}{
		{"one change over the cap", "2", http.StatusUnprocessableEntity},
		{"every key removed, at the cap", "3", http.StatusOK},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, raw := h.Do(http.MethodGet, diffPath("tpl", 1, tc.against), alice, nil)
			require.Equal(t, tc.wantStatus, status, "%.300s", raw)
			if tc.wantStatus == http.StatusUnprocessableEntity {
				code, msg := fntest.ErrorBody(t, raw)
				assert.Equal(t, "unprocessable", code)
				assert.Contains(t, msg, "10001 places")
				assert.Contains(t, msg, "closer together")
			}
		})
	}
}

// TestAccessOnEveryRoute: no access is 404 everywhere, so template ids
// cannot be probed; read access lists and diffs but may not write. A team
// is a StreamSpace group, and its share applies to the group's members.
func TestAccessOnEveryRoute(t *testing.T) {
	h := start(t, nil)
	seedUsers(t, h, "reader", "member", "stranger")
	exec(t, h, `insert into groups (id, name) values ('devs', 'devs')`)
	exec(t, h, `insert into group_memberships (id, user_id, group_id) values ('m-1', 'member', 'devs')`)
	seedTemplate(t, h, "tpl", "owner", "T", `{}`)
	exec(t, h, `insert into template_shares (id, template_id, shared_by, shared_with_user_id, permission_level) values ('sh-1', 'tpl', 'owner', 'reader', 'read')`)
	exec(t, h, `insert into template_shares (id, template_id, shared_by, shared_with_team_id, permission_level) values ('sh-2', 'tpl', 'owner', 'devs', 'write')`)
	seedVersions(t, h, "tpl", 2)

	tests := []struct {
		name, method, path string
		body               any
		write              bool
	}{
		{"list", http.MethodGet, versionsPath("tpl"), nil, false},
		{"diff", http.MethodGet, diffPath("tpl", 1, "2"), nil, false},
		{"create", http.MethodPost, versionsPath("tpl"), map[string]any{}, true},
		{"restore", http.MethodPost, restorePath("tpl", 1), nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, raw := h.Do(tc.method, tc.path, h.Token("stranger", authn.User), tc.body)
			assert.Equal(t, http.StatusNotFound, status, "stranger: %s", raw)

			status, raw = h.Do(tc.method, strings.Replace(tc.path, "/tpl/", "/nope/", 1), h.Token("owner", authn.User), tc.body)
			require.Equal(t, http.StatusNotFound, status, "unknown template: %s", raw)
			code, msg := fntest.ErrorBody(t, raw)
			assert.Equal(t, "not_found", code)
			assert.Contains(t, msg, "template")

			want := http.StatusOK
			if tc.write {
				want = http.StatusForbidden
			}
			status, raw = h.Do(tc.method, tc.path, h.Token("reader", authn.User), tc.body)
			assert.Equal(t, want, status, "reader: %s", raw)

			for _, who := range []struct {
				name string
				role authn.Role
			}{{"member", authn.User}, {"root", authn.Admin}, {"owner", authn.User}} {
				status, raw := h.Do(tc.method, tc.path, h.Token(who.name, who.role), tc.body)
				assert.Less(t, status, 300, "%s: %s", who.name, raw)
			}
		})
	}

	t.Run("leaving the group takes its access away at once", func(t *testing.T) {
		exec(t, h, `delete from group_memberships where user_id = 'member'`)
		status, _ := create(t, h, h.Token("member", authn.User), "tpl", map[string]any{})
		assert.Equal(t, http.StatusNotFound, status)
		assert.Equal(t, 0, h.Count(`select count(*) from user_session_template_versions where created_by in ('stranger', 'reader')`))
	})
}

func TestVersionNumbersInPathsAreValidated(t *testing.T) {
	h := start(t, nil)
	alice := h.Token("alice", authn.User)
	seedTemplate(t, h, "tpl", "alice", "T", `{}`)
	seedVersions(t, h, "tpl", 1)
	tests := []struct {
		name, version string
		wantStatus    int
		wantMsg       string
	}{
		{"zero", "0", http.StatusBadRequest, "version"},
		{"negative", "-1", http.StatusBadRequest, "version"},
		{"word", "abc", http.StatusBadRequest, "version"},
		{"fraction", "1.5", http.StatusBadRequest, "version"},
		{"leading zero", "01", http.StatusBadRequest, "version"},
		{"plus sign", "+1", http.StatusBadRequest, "version"},
		{"past int32", "2147483648", http.StatusBadRequest, "version"},
		{"far past int32", "99999999999", http.StatusBadRequest, "version"},
		{"largest, missing", "2147483647", http.StatusNotFound, "version 2147483647"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, p := range []struct{ method, path string }{
				{http.MethodPost, restorePath("tpl", tc.version)},
				{http.MethodGet, diffPath("tpl", tc.version, "")},
			} {
				status, raw := h.Do(p.method, p.path, alice, nil)
				require.Equal(t, tc.wantStatus, status, "%s %s: %s", p.method, p.path, raw)
				_, msg := fntest.ErrorBody(t, raw)
				assert.Contains(t, msg, tc.wantMsg)
			}
		})
	}
	assert.Equal(t, 1, h.Count(`select count(*) from user_session_template_versions`), "no backup left behind by a failed restore")
}

func TestRoutesRequireAToken(t *testing.T) {
	h := start(t, nil)
	seedTemplate(t, h, "tpl", "alice", "T", `{}`)
	tests := []struct{ name, method, path string }{
		{"list", http.MethodGet, versionsPath("tpl")},
		{"create", http.MethodPost, versionsPath("tpl")},
		{"restore", http.MethodPost, restorePath("tpl", 1)},
		{"diff", http.MethodGet, diffPath("tpl", 1, "")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, token := range []string{"", "not-a-jwt"} {
				status, raw := h.Do(tc.method, tc.path, token, nil)
				require.Equal(t, http.StatusUnauthorized, status, "token %q: %s", token, raw)
				code, _ := fntest.ErrorBody(t, raw)
				assert.Equal(t, "unauthenticated", code)
			}
		})
	}
}

func TestStartRefusesABadConfig(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		wantVar string
	}{
		{"retention zero", map[string]string{"VERSION_RETENTION": "0"}, "VERSION_RETENTION"},
		{"negative retention", map[string]string{"VERSION_RETENTION": "-5"}, "VERSION_RETENTION"},
		{"negative backup retention", map[string]string{"VERSION_BACKUP_RETENTION": "-1h"}, "VERSION_BACKUP_RETENTION"},
		{"limit not a number", map[string]string{"VERSION_LIMIT": "many"}, "VERSION_LIMIT"},
		{"limit below the default retention", map[string]string{"VERSION_LIMIT": "10"}, "VERSION_LIMIT"},
		{"limit below retention", map[string]string{"VERSION_LIMIT": "100", "VERSION_RETENTION": "101"}, "VERSION_RETENTION"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{
				"DATABASE_URL": "postgres://127.0.0.1:1/none", "AUTH_ISSUER": "x", "AUTH_AUDIENCE": "x", "AUTH_JWKS_URL": "http://127.0.0.1:1",
			}
			for k, v := range tc.env {
				env[k] = v
			}
			err := function.New().Start(context.Background(), env)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.wantVar)
		})
	}
}

func TestReady(t *testing.T) {
	tests := []struct {
		name  string
		start bool
		want  bool
	}{
		{"before Start", false, false},
		{"started", true, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := function.New()
			if tc.start {
				fntest.Start(t, f, nil)
			}
			ok, _ := f.Ready(context.Background())
			assert.Equal(t, tc.want, ok)
		})
	}
}
