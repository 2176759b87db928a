package function

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/events"
	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/db/dbtest"
	"github.com/streamspace-dev/functions/shared/fntest"
)

// streamSpaceLockTimeout is the lock_timeout of the connection that writes
// as StreamSpace's API does: the smallest PostgreSQL takes, so any wait for
// a lock past a millisecond fails the write. A write that never waits for
// a lock is never cancelled by it, however busy the machine.
const streamSpaceLockTimeout = "1ms"

// The writes StreamSpace's API makes to the tables the functions share with
// it, as it makes them (streamspace api/internal/sync/sync.go updateCatalog,
// api/internal/handlers/catalog.go, api/internal/db/sessions.go): a catalog
// sync replaces a repository's templates in one transaction, tags as text[]
// (NULL and empty included); the catalog handlers update counters; the
// controller's status events and the connection tracker update sessions.
const (
	syncDeleteSQL = `delete from catalog_templates where repository_id = $1`
	syncInsertSQL = `
		insert into catalog_templates (
			repository_id, name, display_name, description, category,
			app_type, icon_url, manifest, tags, created_at, updated_at)
		values ($1, $2, $3, $4, $5, 'desktop', '', '{}', $6, $7, $7)`
	catalogUpdateSQL = `
		update catalog_templates set install_count = install_count + 1, tags = $2, updated_at = $3
		where id = (select id from catalog_templates where repository_id = $1 order by id limit 1)`
	catalogDeleteOneSQL = `
		delete from catalog_templates
		where id = (select id from catalog_templates where repository_id = $1 order by id desc limit 1)`
	sessionStatusSQL = `
		update sessions set state = $1, url = $2, updated_at = $3
		where id = $4`
	sessionConnectionsSQL = `
		update sessions set active_connections = $1, last_connection = $2, updated_at = $2
		where id = $3`
)

// syncTags are the tags a catalog sync writes, NULL and empty arrays
// among them, and tags the popular-tag view trims and counts.
var syncTags = [][]string{nil, {}, {"web", "browser"}, {" web ", "dev"}, {"office"}, {"", "dev", "dev"}}

// streamSpaceWriter writes as StreamSpace's API on a connection of its own.
type streamSpaceWriter struct {
	conn *pgx.Conn
	pid  uint32
	repo int
}

func newStreamSpaceWriter(t *testing.T, dsn string, repo int) *streamSpaceWriter {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close(context.Background()) })
	_, err = conn.Exec(ctx, "set lock_timeout = '"+streamSpaceLockTimeout+"'")
	require.NoError(t, err)
	return &streamSpaceWriter{conn: conn, pid: conn.PgConn().PID(), repo: repo}
}

// sync replaces the repository's templates as StreamSpace's catalog sync
// does, in one transaction.
func (w *streamSpaceWriter) sync(ctx context.Context, round int) error {
	return pgx.BeginFunc(ctx, w.conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, syncDeleteSQL, w.repo); err != nil {
			return fmt.Errorf("sync delete: %w", err)
		}
		for i, tags := range syncTags {
			name := fmt.Sprintf("synced-%d", i)
			if _, err := tx.Exec(ctx, syncInsertSQL, w.repo, name, name, "round "+fmt.Sprint(round),
				[]string{"web", "office", "dev"}[i%3], tags, time.Now()); err != nil {
				return fmt.Errorf("sync insert %s: %w", name, err)
			}
		}
		return nil
	})
}

// write runs one round of StreamSpace's writes: a catalog sync, an update
// and a delete of a catalog template, and status and connection updates of
// its sessions.
func (w *streamSpaceWriter) write(ctx context.Context, round int, sessions []string) error {
	if err := w.sync(ctx, round); err != nil {
		return err
	}
	if _, err := w.conn.Exec(ctx, catalogUpdateSQL, w.repo, syncTags[round%len(syncTags)], time.Now()); err != nil {
		return fmt.Errorf("catalog update: %w", err)
	}
	if _, err := w.conn.Exec(ctx, catalogDeleteOneSQL, w.repo); err != nil {
		return fmt.Errorf("catalog delete: %w", err)
	}
	for _, id := range sessions {
		state := []string{"running", "hibernated", "pending"}[round%3]
		tag, err := w.conn.Exec(ctx, sessionStatusSQL, state, "https://"+id+".streamspace.test", time.Now(), id)
		if err != nil {
			return fmt.Errorf("session %s status: %w", id, err)
		}
		if tag.RowsAffected() != 1 {
			return fmt.Errorf("session %s status: %d rows", id, tag.RowsAffected())
		}
		if _, err := w.conn.Exec(ctx, sessionConnectionsSQL, round%4, time.Now(), id); err != nil {
			return fmt.Errorf("session %s connections: %w", id, err)
		}
	}
	return nil
}

// lockWait is a moment the writer's backend was seen waiting for a lock.
type lockWait struct {
	event    string
	blockers []uint32
}

// watchLocks samples pg_stat_activity for pid until ctx ends and returns
// every lock wait it saw, with the backends blocking it.
func watchLocks(ctx context.Context, conn *pgx.Conn, pid uint32) ([]lockWait, error) {
	var seen []lockWait
	for ctx.Err() == nil {
		var w lockWait
		err := conn.QueryRow(ctx, `
			select wait_event, pg_blocking_pids(pid)
			from pg_stat_activity where pid = $1 and wait_event_type = 'Lock'`, pid).Scan(&w.event, &w.blockers)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
		case err != nil && ctx.Err() == nil:
			return seen, err
		case err == nil:
			seen = append(seen, w)
		}
	}
	return seen, nil
}

// loadClient drives the all-in-one as the UI and the broker do, recording
// every answer that is not a success.
type loadClient struct {
	base   string
	client *http.Client
	token  string
	user   string
	done   atomic.Int64
	mu     sync.Mutex
	failed []string
}

func (c *loadClient) send(ctx context.Context, method, path string, body any, header http.Header) {
	var rd io.Reader
	if body != nil {
		raw, _ := json.Marshal(body)
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		c.fail("%s %s: %v", method, path, err)
		return
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+c.token)
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := c.client.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			c.fail("%s %s: %v", method, path, err)
		}
		return
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode >= 300 {
		c.fail("%s %s: %d %s", method, path, resp.StatusCode, out)
		return
	}
	c.done.Add(1)
}

func (c *loadClient) fail(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failed = append(c.failed, fmt.Sprintf(format, args...))
}

// run sends a mix of the functions' work until ctx ends: a tag batch over
// the user's sessions, a share list, a version list and create, and a
// template.updated event, which makes tags refresh the popular-tag view
// concurrently.
func (c *loadClient) run(ctx context.Context, sessions []string, template string) {
	for i := 0; ctx.Err() == nil; i++ {
		op := []string{"add", "remove", "replace"}[i%3]
		c.send(ctx, http.MethodPost, "/api/v1/batch/sessions/update-tags",
			map[string]any{"operation": op, "sessionIds": sessions, "tags": []string{"load", fmt.Sprint("t", i%5)}}, nil)
		c.send(ctx, http.MethodGet, "/api/v1/session-templates/"+template+"/shares", nil, nil)
		c.send(ctx, http.MethodGet, "/api/v1/session-templates/"+template+"/versions", nil, nil)
		if i%4 == 0 {
			c.send(ctx, http.MethodPost, "/api/v1/session-templates/"+template+"/versions",
				map[string]any{"description": fmt.Sprint("load ", i)}, nil)
		}
		if i%3 == 0 {
			data, _ := json.Marshal(events.TemplateUpdatedData{TemplateID: template, Change: "updated"})
			c.send(ctx, http.MethodPost, "/events/tags", json.RawMessage(data), http.Header{
				"Ce-Specversion": {"1.0"},
				"Ce-Id":          {fmt.Sprintf("%s-%d", c.user, i)},
				"Ce-Type":        {events.TemplateUpdated},
				"Ce-Source":      {"/streamspace/functions/versioning"},
			})
		}
	}
}

// TestStreamSpaceWritesUnaffected runs every function under load through
// the all-in-one and, meanwhile, the writes StreamSpace's API makes to the
// tables the functions share with it: catalog syncs (insert, update and
// delete of catalog_templates with text[] tags, NULL and empty ones
// included) and session updates. They all succeed with no added waiting,
// shown by condition rather than by a clock: the writer's connection has a
// 1 ms lock_timeout, so a wait for any lock a function holds would cancel
// its statement, and a sampler watches its backend for lock waits and
// their blockers. The functions never write the writer's rows (a session
// the tags function is changing at that moment is a row both write, which
// StreamSpace's own batch handler locked the same way); what is shown is
// that they take no lock that makes StreamSpace's other writes wait: no
// table lock, no lock on a catalog row, no lock held while refreshing the
// popular-tag view.
func TestStreamSpaceWritesUnaffected(t *testing.T) {
	h := fntest.Start(t, New(), nil)
	ctx := context.Background()
	dsn := dbtest.URL(t, h.Pool)

	var repo int
	require.NoError(t, h.Pool.QueryRow(ctx,
		`insert into repositories (name, url) values ('writes-test', 'https://example.com/templates') returning id`).Scan(&repo))
	const users, perUser, streamSpaceSessions = 8, 4, 8
	var clients []*loadClient
	for u := range users {
		user := fmt.Sprintf("load-%d", u)
		h.AddUser(user, authn.User)
		var sessions []string
		for s := range perUser {
			sessions = append(sessions, fmt.Sprintf("%s-s%d", user, s))
		}
		_, err := h.Pool.Exec(ctx, `
			insert into sessions (id, user_id, template_name, state)
			select id, $1, 'firefox', 'running' from unnest($2::text[]) as id;
			`, user, sessions)
		require.NoError(t, err)
		template := user + "-tpl"
		_, err = h.Pool.Exec(ctx,
			`insert into user_session_templates (id, user_id, name, base_template) values ($1, $2, 'T', 'firefox')`, template, user)
		require.NoError(t, err)
		c := &loadClient{base: h.URL, client: &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()},
			token: h.Token(user, authn.User), user: user}
		t.Cleanup(c.client.CloseIdleConnections)
		clients = append(clients, c)
	}
	h.AddUser("streamspace-owner", authn.User)
	var ssSessions []string
	for s := range streamSpaceSessions {
		ssSessions = append(ssSessions, fmt.Sprintf("streamspace-s%d", s))
	}
	_, err := h.Pool.Exec(ctx, `
		insert into sessions (id, user_id, template_name, state)
		select id, 'streamspace-owner', 'firefox', 'pending' from unnest($1::text[]) as id`, ssSessions)
	require.NoError(t, err)

	writer := newStreamSpaceWriter(t, dsn, repo)
	watcher, err := pgx.Connect(ctx, dsn)
	require.NoError(t, err)
	t.Cleanup(func() { watcher.Close(context.Background()) })

	t.Run("the writer notices a lock it would wait for", func(t *testing.T) {
		holder, err := pgx.Connect(ctx, dsn)
		require.NoError(t, err)
		defer holder.Close(ctx)
		tx, err := holder.Begin(ctx)
		require.NoError(t, err)
		defer tx.Rollback(ctx)
		_, err = tx.Exec(ctx, `select 1 from sessions where id = $1 for no key update`, ssSessions[0])
		require.NoError(t, err)
		err = writer.write(ctx, 0, ssSessions)
		var pgErr *pgconn.PgError
		require.ErrorAs(t, err, &pgErr)
		assert.Equal(t, "55P03", pgErr.Code, "lock_not_available")
	})
	t.Run("a concurrent refresh of the popular-tag view blocks no catalog write", func(t *testing.T) {
		// The refresh holds every lock it takes until its transaction
		// ends, so a catalog sync run while that transaction is open
		// meets all of them.
		refresher, err := pgx.Connect(ctx, dsn)
		require.NoError(t, err)
		defer refresher.Close(ctx)
		tx, err := refresher.Begin(ctx)
		require.NoError(t, err)
		defer tx.Rollback(ctx)
		_, err = tx.Exec(ctx, `refresh materialized view concurrently catalog_tag_counts`)
		require.NoError(t, err)
		var held []string
		rows, err := watcher.Query(ctx, `
			select c.relname || ' ' || l.mode from pg_locks l join pg_class c on c.oid = l.relation
			where l.pid = $1 and l.granted and c.relname in ('catalog_templates', 'catalog_tag_counts')`,
			refresher.PgConn().PID())
		require.NoError(t, err)
		held, err = pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err)
		assert.Contains(t, held, "catalog_tag_counts ExclusiveLock", "the refresh's own lock on the view")
		assert.Contains(t, held, "catalog_templates AccessShareLock", "the refresh reads the catalog")

		require.NoError(t, writer.write(ctx, 0, ssSessions), "StreamSpace's writes while a refresh is open")
		require.NoError(t, tx.Commit(ctx))

		// And the other way round: a sync StreamSpace has not committed
		// yet holds up no refresh.
		syncTx, err := writer.conn.Begin(ctx)
		require.NoError(t, err)
		defer syncTx.Rollback(ctx)
		_, err = syncTx.Exec(ctx, syncDeleteSQL, repo)
		require.NoError(t, err)
		_, err = syncTx.Exec(ctx, syncInsertSQL, repo, "uncommitted", "U", "", "web", []string{"web"}, time.Now())
		require.NoError(t, err)
		_, err = refresher.Exec(ctx, "set lock_timeout = '"+streamSpaceLockTimeout+"'")
		require.NoError(t, err)
		_, err = refresher.Exec(ctx, `refresh materialized view concurrently catalog_tag_counts`)
		assert.NoError(t, err, "a refresh while StreamSpace's sync is open")
		require.NoError(t, syncTx.Rollback(ctx))
	})

	t.Run("under the functions' load", func(t *testing.T) {
		loadCtx, stopLoad := context.WithCancel(ctx)
		var wg sync.WaitGroup
		for u, c := range clients {
			var sessions []string
			for s := range perUser {
				sessions = append(sessions, fmt.Sprintf("%s-s%d", c.user, s))
			}
			// Two clients per user, so batches and version creates of one
			// user also meet each other.
			for range 2 {
				wg.Go(func() { c.run(loadCtx, sessions, fmt.Sprintf("load-%d-tpl", u)) })
			}
		}
		watchCtx, stopWatch := context.WithCancel(ctx)
		var waits []lockWait
		var watchErr error
		watched := make(chan struct{})
		go func() {
			defer close(watched)
			waits, watchErr = watchLocks(watchCtx, watcher, writer.pid)
		}()
		total := func() int64 {
			var n int64
			for _, c := range clients {
				n += c.done.Load()
			}
			return n
		}
		// The writes start once the functions are busy, and the load
		// runs until the last of them is done.
		require.Eventually(t, func() bool { return total() >= 50 }, 2*time.Minute, 10*time.Millisecond, "the load never got going")
		start := total()
		const rounds = 30
		var writeErr error
		for round := 1; round <= rounds && writeErr == nil; round++ {
			writeErr = writer.write(ctx, round, ssSessions)
		}
		during := total() - start
		stopLoad()
		wg.Wait()
		stopWatch()
		<-watched

		var pgErr *pgconn.PgError
		if errors.As(writeErr, &pgErr) {
			t.Logf("StreamSpace's write failed: %s (%s) %s", pgErr.Message, pgErr.Code, pgErr.Where)
		}
		assert.NoError(t, writeErr, "StreamSpace's writes under the functions' load")
		assert.NoError(t, watchErr)
		assert.Empty(t, waits, "StreamSpace's writer waited for a lock (event, blocking backends)")
		assert.Positive(t, during, "no function request completed while StreamSpace wrote")
		t.Logf("%d rounds of StreamSpace's writes while the functions completed %d requests", rounds, during)
		for _, c := range clients {
			assert.Empty(t, c.failed, "requests of %s that failed", c.user)
		}

		var names int
		require.NoError(t, h.Pool.QueryRow(ctx,
			`select count(*) from catalog_templates where repository_id = $1`, repo).Scan(&names))
		assert.Equal(t, len(syncTags)-1, names, "the last sync's templates, less the one deleted")
		var nullTags, emptyTags int
		require.NoError(t, h.Pool.QueryRow(ctx, `
			select count(*) filter (where tags is null), count(*) filter (where tags = '{}')
			from catalog_templates where repository_id = $1`, repo).Scan(&nullTags, &emptyTags))
		assert.Positive(t, nullTags+emptyTags, "NULL and empty tag arrays are kept as StreamSpace wrote them")
	})
}
