package function

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/db/dbtest"
)

// TestLoginLeavesForeignKeyChecksUnblocked: while a login's transaction
// holds its user, StreamSpace may still insert rows that reference that
// user (a new session of theirs). The insert's foreign-key check takes a
// key-share lock on the user; a login changes no key, so it must lock the
// user "for no key update", which does not conflict with that.
func TestLoginLeavesForeignKeyChecksUnblocked(t *testing.T) {
	pool := dbtest.New(t)
	ctx := context.Background()
	_, err := pool.Exec(ctx, `insert into users (id, username, email, role, active) values ('u-1', 'alice', 'alice@example.com', 'user', true)`)
	require.NoError(t, err)
	tests := []struct {
		name   string
		insert string
	}{
		{name: "a session of the user", insert: `insert into sessions (id, user_id, template_name, state) values ('s1', 'u-1', 'firefox', 'running')`},
		{name: "a group membership", insert: `insert into groups (id, name, display_name) values ('g1', 'g1', 'G1');
			insert into group_memberships (id, group_id, user_id) values ('m1', 'g1', 'u-1')`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			loginTx, err := pool.Begin(ctx)
			require.NoError(t, err)
			defer loginTx.Rollback(ctx)
			u, err := readUser(ctx, loginTx, "u-1")
			require.NoError(t, err)
			require.Equal(t, "alice", u.Username)

			// StreamSpace's insert, with the login still open. Blocked, it
			// would fail at the lock timeout instead of waiting.
			insertTx, err := pool.Begin(ctx)
			require.NoError(t, err)
			defer insertTx.Rollback(ctx)
			_, err = insertTx.Exec(ctx, `set local lock_timeout = '5s'`)
			require.NoError(t, err)
			_, err = insertTx.Exec(ctx, tc.insert)
			assert.NoError(t, err, "the login's row lock blocks a foreign-key check")
		})
	}
}
