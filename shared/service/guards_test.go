package service_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/db/dbtest"
	"github.com/streamspace-dev/functions/shared/fntest"
	"github.com/streamspace-dev/functions/shared/service"
)

// noHang bounds an answer that a lock or a refused connection must not
// delay: far above the configured timeouts, far below a hang.
const noHang = 30 * time.Second

// call is one request to the counter, on REST or as an event; it returns
// the status and the Retry-After header (events: none read).
type call struct {
	name string
	do   func(t *testing.T, h *fntest.Harness, n int) (int, string)
}

var calls = []call{
	{"REST", func(t *testing.T, h *fntest.Harness, _ int) (int, string) {
		status, hdr, body := h.DoHeader(http.MethodPost, "/api/v1/count", h.Token("u1", authn.User), "{}")
		if status >= 400 {
			code, _ := fntest.ErrorBody(t, body)
			assert.Equal(t, "unavailable", code)
		}
		return status, hdr.Get("Retry-After")
	}},
	{"event", func(t *testing.T, h *fntest.Harness, n int) (int, string) {
		status, _ := h.Deliver(countedEvent(fmt.Sprintf("%s-%d", t.Name(), n), "/test"), false)
		return status, ""
	}},
}

// TestLockedRowAnswers503 holds the counter's row locked from another
// connection, as StreamSpace's API does in a long transaction: the
// function's write gives up after DATABASE_LOCK_TIMEOUT with a retryable
// 503 instead of waiting, and works again once the lock is gone.
func TestLockedRowAnswers503(t *testing.T) {
	h := startCounter(t, map[string]string{"DATABASE_LOCK_TIMEOUT": "200ms"})
	ctx := context.Background()
	holder, err := h.Pool.Begin(ctx)
	require.NoError(t, err)
	defer holder.Rollback(ctx)
	_, err = holder.Exec(ctx, `select 1 from job_leases where name = 'counter' for update`)
	require.NoError(t, err)

	for i, tc := range calls {
		t.Run(tc.name+" while locked", func(t *testing.T) {
			began := time.Now()
			status, retryAfter := tc.do(t, h, i)
			assert.Less(t, time.Since(began), noHang)
			assert.Equal(t, http.StatusServiceUnavailable, status)
			if tc.name == "REST" {
				assert.Equal(t, "1", retryAfter)
			}
		})
	}
	// The request's log line is written just after its response.
	assert.Eventually(t, func() bool { return strings.Contains(h.Logs.String(), "55P03") },
		time.Minute, 10*time.Millisecond, "lock_timeout is the cause")
	require.NoError(t, holder.Rollback(ctx))
	for i, tc := range calls {
		t.Run(tc.name+" once released", func(t *testing.T) {
			status, _ := tc.do(t, h, len(calls)+i)
			assert.Less(t, status, 300)
		})
	}
	assert.Equal(t, 2, effects(t, h))
}

// TestTooManyConnectionsAnswers503 runs the counter as a role whose
// connections PostgreSQL refuses with SQLSTATE 53300, as a server at
// max_connections does: REST answers 503 with Retry-After and the event
// path 503, so the UI and the broker try again.
func TestTooManyConnectionsAnswers503(t *testing.T) {
	pool := dbtest.New(t)
	role := dbtest.LimitedRole(t, pool, 5)
	h := counterOn(t, fntest.StartOn(t, pool, &counter{}, map[string]string{"DATABASE_URL": role, "DATABASE_POOL_MAX": "2"}))
	ctx := context.Background()
	roleCfg, err := pgx.ParseConfig(role)
	require.NoError(t, err)
	name := roleCfg.User
	_, err = h.Pool.Exec(ctx, `alter role `+pgx.Identifier{name}.Sanitize()+` connection limit 0`)
	require.NoError(t, err)
	_, err = h.Pool.Exec(ctx, `select pg_terminate_backend(pid, 60000) from pg_stat_activity where usename = $1`, name)
	require.NoError(t, err)

	for i, tc := range calls {
		t.Run(tc.name, func(t *testing.T) {
			// The first request may meet a connection that was terminated
			// (also a 503); the next ones ask for a new connection.
			n := 0
			require.Eventually(t, func() bool {
				n++
				began := time.Now()
				status, retryAfter := tc.do(t, h, 100*i+n)
				assert.Less(t, time.Since(began), noHang)
				assert.Equal(t, http.StatusServiceUnavailable, status)
				if tc.name == "REST" {
					assert.Equal(t, "1", retryAfter)
				}
				return strings.Count(h.Logs.String(), "53300") > i
			}, 2*time.Minute, 50*time.Millisecond, "no request met SQLSTATE 53300")
		})
	}
}

func TestDatabaseSettings(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		want    db.Settings
		wantErr string // a variable the error names
	}{
		{name: "defaults", env: validEnv(nil), want: db.Defaults()},
		{
			name: "configured",
			env: validEnv(map[string]string{
				"DATABASE_POOL_MAX": "8", "DATABASE_POOL_MIN": "1", "DATABASE_POOL_IDLE": "10s",
				"DATABASE_STATEMENT_TIMEOUT": "3s", "DATABASE_LOCK_TIMEOUT": "500ms",
			}),
			want: db.Settings{PoolMax: 8, PoolMin: 1, PoolIdle: 10 * time.Second, StatementTimeout: 3 * time.Second, LockTimeout: 500 * time.Millisecond},
		},
		{name: "unparsable max", env: validEnv(map[string]string{"DATABASE_POOL_MAX": "many"}), wantErr: "DATABASE_POOL_MAX"},
		{name: "unparsable idle", env: validEnv(map[string]string{"DATABASE_POOL_IDLE": "a while"}), wantErr: "DATABASE_POOL_IDLE"},
		{name: "unparsable statement timeout", env: validEnv(map[string]string{"DATABASE_STATEMENT_TIMEOUT": "5"}), wantErr: "DATABASE_STATEMENT_TIMEOUT"},
		{name: "unparsable lock timeout", env: validEnv(map[string]string{"DATABASE_LOCK_TIMEOUT": "x"}), wantErr: "DATABASE_LOCK_TIMEOUT"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var cfg service.Base
			err := service.Load(tc.env, &cfg)
			if tc.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, cfg.Settings)
		})
	}
}

// TestDatabaseSettingsOutOfRangeStopStartUp checks start-up refuses
// settings out of range, naming the variable, before it connects.
func TestDatabaseSettingsOutOfRangeStopStartUp(t *testing.T) {
	tests := []struct {
		name, key, value string
	}{
		{"no connections", "DATABASE_POOL_MAX", "0"},
		{"min above max", "DATABASE_POOL_MIN", "9"},
		{"no idle time", "DATABASE_POOL_IDLE", "0s"},
		{"negative lock timeout", "DATABASE_LOCK_TIMEOUT", "-1s"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var cfg service.Base
			// The database URL names a closed port: reaching it would
			// be a different error.
			_, err := service.Start(context.Background(), "counter", validEnv(map[string]string{tc.key: tc.value}), &cfg, nil)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.key)
		})
	}
}
