package authn_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/errs"
)

// redisServer is a real redis-server (Debian package redis-server) on a free
// loopback port, stopped when the test ends.
type redisServer struct {
	URL    string
	client *redis.Client
	cmd    *exec.Cmd
	exited chan error
	once   sync.Once
}

func startRedis(t testing.TB) *redisServer {
	t.Helper()
	path, err := exec.LookPath("redis-server")
	require.NoError(t, err, "redis-server is not installed; install it with: apt-get install -y redis-server")
	// Another process may take the free port before redis-server binds it;
	// then it exits and another port is tried.
	for attempt := 0; attempt < 5; attempt++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
		require.NoError(t, ln.Close())

		var out bytes.Buffer
		cmd := exec.Command(path, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
			"--daemonize", "no", "--dir", t.TempDir())
		cmd.Stdout, cmd.Stderr = &out, &out
		require.NoError(t, cmd.Start())
		s := &redisServer{URL: "redis://127.0.0.1:" + port + "/0", cmd: cmd, exited: make(chan error, 1)}
		go func() { s.exited <- cmd.Wait() }()
		s.client = redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + port, MaxRetries: -1})
		if s.waitReady(t) {
			t.Cleanup(func() { s.stop() })
			return s
		}
		s.client.Close()
		t.Logf("redis-server on port %s exited before answering:\n%s", port, out.String())
	}
	require.FailNow(t, "redis-server did not start")
	return nil
}

// waitReady waits until the server answers PING (true) or exits (false).
func (s *redisServer) waitReady(t testing.TB) bool {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(time.Minute)
	for {
		if s.client.Ping(context.Background()).Err() == nil {
			return true
		}
		select {
		case err := <-s.exited:
			s.exited <- err
			return false
		case <-deadline:
			require.FailNow(t, "redis-server did not answer PING within a minute")
		case <-tick.C:
		}
	}
}

// stop kills the server and waits for it to exit.
func (s *redisServer) stop() {
	s.once.Do(func() {
		s.client.Close()
		_ = s.cmd.Process.Kill()
		<-s.exited
	})
}

// login stores a session as StreamSpace's API does at login
// (api/internal/auth/session_store.go): JSON at session:{jti}, with a TTL.
func (s *redisServer) login(t testing.TB, jti, user string) {
	t.Helper()
	data, err := json.Marshal(map[string]any{
		"session_id": jti, "user_id": user, "username": user, "role": "user",
		"created_at": time.Now(), "expires_at": time.Now().Add(24 * time.Hour),
	})
	require.NoError(t, err)
	require.NoError(t, s.client.Set(context.Background(), "session:"+jti, data, 24*time.Hour).Err())
}

func TestRedisSessions(t *testing.T) {
	iss := newIssuer(t)
	rs := startRedis(t)
	sessions, err := authn.NewRedisSessions(rs.URL)
	require.NoError(t, err)
	t.Cleanup(func() { sessions.Close() })
	e := setupStreamSpace(t, iss, false, func(c *authn.Config) { c.Sessions = sessions })
	addUser(t, e.pool, "alice", ptr("user"), ptr(true))
	key := []byte(secret)
	token := func(jti string) string { return hs(t, key, ssClaims("alice", set("jti", jti))) }

	steps := []struct {
		name     string
		do       func()
		token    string
		wantErr  string
		wantKind errs.Kind
	}{
		{name: "logged in", do: func() { rs.login(t, "s-1", "alice") }, token: token("s-1")},
		{name: "no session: never logged in, or the API restarted", token: token("s-2"), wantErr: "session expired or invalidated"},
		{name: "another user's key does not help", do: func() { rs.login(t, "s-3", "bob") }, token: token("s-4"), wantErr: "session expired or invalidated"},
		{name: "logged out", do: func() { require.NoError(t, rs.client.Del(context.Background(), "session:s-1").Err()) }, token: token("s-1"), wantErr: "session expired or invalidated"},
		{name: "no jti", token: hs(t, key, ssClaims("alice", drop("jti"))), wantErr: "token has no session id"},
		{name: "empty jti", token: token(""), wantErr: "token has no session id"},
		{name: "the key is exactly session:{jti}", do: func() { rs.login(t, "s-5:x", "alice") }, token: token("s-5"), wantErr: "session expired or invalidated"},
		{name: "JWKS tokens have no StreamSpace session", token: mustToken(t, iss, "carol", authn.User)},
		{name: "session store down: unavailable, not refused", do: func() { rs.login(t, "s-6", "alice"); rs.stop() }, token: token("s-6"), wantKind: errs.Unavailable},
	}
	for _, s := range steps {
		ok := t.Run(s.name, func(t *testing.T) {
			if s.do != nil {
				s.do()
			}
			id, err := e.v.Verify(context.Background(), s.token)
			switch {
			case s.wantKind != "":
				assert.Equal(t, s.wantKind, errs.KindOf(err), "kind of %v", err)
			case s.wantErr != "":
				assertRefused(t, err, s.wantErr, s.token)
			default:
				require.NoError(t, err)
				assert.NotEmpty(t, id.Subject)
			}
		})
		if !ok {
			return
		}
	}
}

func TestNewRedisSessions(t *testing.T) {
	const password = "r3dis-Pa55word"
	tests := []struct {
		name    string
		url     string
		wantErr string
	}{
		{name: "redis URL", url: "redis://:" + password + "@127.0.0.1:6379/0"},
		{name: "TLS URL", url: "rediss://default:" + password + "@redis.streamspace.svc:6380"},
		{name: "not a URL", url: "redis://:" + password + "@[::1", wantErr: "STREAMSPACE_REDIS_URL is not a URL"},
		{name: "another scheme", url: "http://:" + password + "@127.0.0.1:6379", wantErr: "STREAMSPACE_REDIS_URL"},
		{name: "bad database number", url: "redis://:" + password + "@127.0.0.1:6379/x", wantErr: "STREAMSPACE_REDIS_URL"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := authn.NewRedisSessions(tc.url)
			if tc.wantErr == "" {
				require.NoError(t, err)
				assert.NoError(t, s.Close())
				return
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.wantErr)
			assert.NotContains(t, err.Error(), password, "the error repeats the password")
		})
	}
}
