package db_test

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/db/dbtest"
	"github.com/streamspace-dev/functions/shared/errs"
)

// closedPort returns a loopback port nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	_, port, _ := net.SplitHostPort(addr)
	return port
}

func TestOpen(t *testing.T) {
	t.Parallel()
	pool := dbtest.New(t)
	ctx := context.Background()

	opened, err := db.Open(ctx, dbtest.URL(t, pool))
	if err != nil {
		t.Fatalf("open test database: %v", err)
	}
	defer opened.Close()
	var name string
	if err := opened.QueryRow(ctx, "select current_database()").Scan(&name); err != nil {
		t.Fatal(err)
	}
	if want := pool.Config().ConnConfig.Database; name != want {
		t.Errorf("got database %q, want %q", name, want)
	}
}

func TestOpenErrorsHideThePassword(t *testing.T) {
	t.Parallel()
	const secret = "s3cret-Pa55word"
	pool := dbtest.New(t)
	real := pool.Config().ConnConfig
	ctx := context.Background()

	tests := []struct {
		name     string
		url      string
		wantKind errs.Kind
	}{
		{
			name:     "closed port",
			url:      "postgres://someone:" + secret + "@127.0.0.1:" + closedPort(t) + "/db?sslmode=disable",
			wantKind: errs.Unavailable,
		},
		{
			name: "wrong password",
			url: "host=" + real.Host + " port=" + strconv.Itoa(int(real.Port)) + " user=" + real.User +
				" dbname=" + real.Database + " password=" + secret,
			wantKind: errs.Unavailable,
		},
		{
			name:     "unparseable url",
			url:      "postgres://someone:" + secret + "@127.0.0.1:notaport/db",
			wantKind: errs.Internal,
		},
		{
			name:     "unparseable keyword/value",
			url:      "host=localhost password=" + secret + " connect_timeout=soon",
			wantKind: errs.Internal,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := db.Open(ctx, tc.url)
			if err == nil {
				p.Close()
				if tc.name == "wrong password" {
					t.Skip("the server does not check passwords for this user (trust authentication)")
				}
				t.Fatal("got no error, want one")
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error %q contains the password", err)
			}
			if got := errs.KindOf(err); got != tc.wantKind {
				t.Errorf("got kind %q, want %q (error %v)", got, tc.wantKind, err)
			}
		})
	}
}

func TestClassifyLeavesOtherErrorsAlone(t *testing.T) {
	plain := errors.New("plain")
	kinded := errs.E(errs.Forbidden, "no")
	tests := []struct {
		name string
		err  error
		want error
	}{
		{"nil", nil, nil},
		{"plain error", plain, plain},
		{"already has a kind", kinded, kinded},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := db.Classify(tc.err); got != tc.want {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
	if got := errs.KindOf(db.Classify(pgx.ErrNoRows)); got != errs.NotFound {
		t.Errorf("no rows: got kind %q, want %q", got, errs.NotFound)
	}
}
