package db_test

import (
	"context"
	"errors"
	"net"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/db/dbtest"
	"github.com/streamspace-dev/functions/shared/errs"
)

// closedPort returns a loopback port nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	_, port, err := net.SplitHostPort(addr)
	require.NoError(t, err)
	return port
}

func TestOpen(t *testing.T) {
	t.Parallel()
	pool := dbtest.New(t)
	ctx := context.Background()
	tests := []struct {
		name string
		conn string
	}{
		{"the test database's URL", dbtest.URL(t, pool)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opened, err := db.Open(ctx, tc.conn)
			require.NoError(t, err)
			defer opened.Close()
			var name string
			require.NoError(t, opened.QueryRow(ctx, "select current_database()").Scan(&name))
			assert.Equal(t, pool.Config().ConnConfig.Database, name)
		})
	}
}

// passwords are hard to redact: URL delimiters, and a percent sign that
// reads like an escape.
var passwords = []struct {
	name     string
	password string
}{
	{"plain", "s3cret-Pa55word"},
	{"with @", "s3cret@Pa55word"},
	{"with two @", "s3@cret@Pa55"},
	{"with :", "s3cret:Pa55word"},
	{"with /", "s3cret/Pa55word"},
	{"with a literal %40", "s3cret%40Pa55word"},
	{"with all of them", "a@b:c/d%40e f?g#h"},
}

// forms is every way password can show in a message.
func forms(password string) []string {
	return []string{
		password,
		url.PathEscape(password),
		url.QueryEscape(password),
		url.UserPassword("x", password).String()[2:],
	}
}

func assertHidden(t *testing.T, msg, password string) {
	t.Helper()
	for _, f := range forms(password) {
		assert.NotContains(t, msg, f, "the message shows the password %q as %q", password, f)
	}
}

func TestOpenErrorsHideThePassword(t *testing.T) {
	t.Parallel()
	pool := dbtest.New(t)
	real := pool.Config().ConnConfig
	ctx := context.Background()
	port := closedPort(t)

	type attempt struct {
		name     string
		conn     string
		wantKind errs.Kind
		trusted  bool // the server may accept any password for this user
	}
	for _, pw := range passwords {
		escaped := url.UserPassword("someone", pw.password).String()
		tests := []attempt{
			{name: "closed port", conn: "postgres://" + escaped + "@127.0.0.1:" + port + "/db?sslmode=disable", wantKind: errs.Unavailable},
			{name: "closed port, written unescaped", conn: "postgres://someone:" + pw.password + "@127.0.0.1:" + port + "/db?sslmode=disable"},
			{name: "wrong password", wantKind: errs.Unavailable, trusted: true,
				conn: "host=" + real.Host + " port=" + strconv.Itoa(int(real.Port)) + " user=" + real.User +
					" dbname=" + real.Database + " password='" + strings.ReplaceAll(pw.password, "'", `\'`) + "'"},
			{name: "unparseable url", conn: "postgres://someone:" + pw.password + "@127.0.0.1:notaport/db", wantKind: errs.Internal},
			{name: "unparseable keyword/value", conn: "host=localhost password='" + pw.password + "' connect_timeout=soon", wantKind: errs.Internal},
		}
		for _, tc := range tests {
			t.Run(pw.name+"/"+tc.name, func(t *testing.T) {
				p, err := db.Open(ctx, tc.conn)
				if err == nil {
					p.Close()
					if tc.trusted {
						t.Skip("the server does not check passwords for this user (trust authentication)")
					}
				}
				require.Error(t, err)
				assertHidden(t, err.Error(), pw.password)
				if tc.wantKind != "" {
					assert.Equal(t, tc.wantKind, errs.KindOf(err), "error %v", err)
				}
			})
		}
	}
}

// TestRedactHidesEveryForm echoes the connection string in an error, as a
// server or proxy might, and checks no form of the password is left.
func TestRedactHidesEveryForm(t *testing.T) {
	for _, pw := range passwords {
		escaped := url.UserPassword("app", pw.password).String()
		tests := []struct {
			name string
			conn string
		}{
			{"escaped URL", "postgres://" + escaped + "@db:5432/streamspace"},
			{"URL written unescaped", "postgres://app:" + pw.password + "@db:5432/streamspace"},
			{"keyword/value", "host=db password='" + pw.password + "' dbname=streamspace"},
		}
		for _, tc := range tests {
			t.Run(pw.name+"/"+tc.name, func(t *testing.T) {
				cause := errors.New("server said: cannot use " + tc.conn + " or " + pw.password +
					" or " + url.QueryEscape(pw.password) + " or " + url.PathEscape(pw.password))
				err := db.Redact(cause, db.SecretForms(tc.conn, pw.password))
				assertHidden(t, err.Error(), pw.password)
				assert.Contains(t, err.Error(), "server said: cannot use ", "redaction removed more than the password")
				assert.ErrorIs(t, err, cause, "the cause is not reachable")
			})
		}
	}
	t.Run("no password", func(t *testing.T) {
		cause := errors.New("plain")
		assert.Same(t, cause, db.Redact(cause, db.SecretForms("postgres://app@db/x", "")))
	})
}

func TestClassifyLeavesOtherErrorsAlone(t *testing.T) {
	plain := errors.New("plain")
	kinded := errs.E(errs.Forbidden, "no")
	tests := []struct {
		name     string
		err      error
		want     error // the same error back; nil to check the kind only
		wantKind errs.Kind
	}{
		{"nil", nil, nil, ""},
		{"plain error", plain, plain, errs.Internal},
		{"already has a kind", kinded, kinded, errs.Forbidden},
		{"no rows", pgx.ErrNoRows, nil, errs.NotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := db.Classify(tc.err)
			if tc.want != nil || tc.err == nil {
				assert.Equal(t, tc.want, got)
			}
			if tc.wantKind != "" {
				assert.Equal(t, tc.wantKind, errs.KindOf(got))
			}
		})
	}
}
