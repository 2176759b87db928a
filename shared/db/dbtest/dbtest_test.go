package dbtest

import (
	"context"
	"testing"
	"testing/fstest"

	"github.com/jackc/pgx/v5"
)

func TestNewGivesEachTestItsOwnDatabase(t *testing.T) {
	ctx := context.Background()
	var first string
	t.Run("a", func(t *testing.T) {
		pool := New(t)
		first = pool.Config().ConnConfig.Database
		if _, err := pool.Exec(ctx, `insert into teams (id, name) values ('t1', 'one')`); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("b", func(t *testing.T) {
		pool := New(t)
		if name := pool.Config().ConnConfig.Database; name == first {
			t.Fatalf("got the same database %q twice", name)
		}
		var n int
		if err := pool.QueryRow(ctx, `select count(*) from teams`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Errorf("got %d teams in a new database, want 0", n)
		}
	})

	admin, err := connect(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	var exists bool
	err = admin.QueryRow(ctx, `select exists (select 1 from pg_database where datname = $1)`, first).Scan(&exists)
	if err != nil {
		t.Fatal(err)
	}
	if exists {
		t.Errorf("database %s still exists after its test ended", first)
	}
}

func TestURL(t *testing.T) {
	pool := New(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, URL(t, pool))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var got string
	if err := conn.QueryRow(ctx, `select current_database()`).Scan(&got); err != nil {
		t.Fatal(err)
	}
	if want := pool.Config().ConnConfig.Database; got != want {
		t.Errorf("got database %q, want %q", got, want)
	}
}

func TestWithDatabase(t *testing.T) {
	tests := []struct{ base, want string }{
		{"", "dbname=test_x"},
		{"host=h user=u dbname=app", "host=h user=u dbname=app dbname=test_x"},
		{"postgres://u:p@h:5432/app?sslmode=disable", "postgres://u:p@h:5432/test_x?sslmode=disable"},
		{"postgresql://u@h/app?dbname=other", "postgresql://u@h/test_x"},
	}
	for _, tc := range tests {
		got, err := withDatabase(tc.base, "test_x")
		if err != nil {
			t.Errorf("withDatabase(%q): %v", tc.base, err)
		}
		if got != tc.want {
			t.Errorf("withDatabase(%q): got %q, want %q", tc.base, got, tc.want)
		}
	}
}

func TestTemplateNameFollowsSchemaAndMigrations(t *testing.T) {
	a := fstest.MapFS{"001_a.sql": {Data: []byte("create table a (id int);")}}
	b := fstest.MapFS{"001_a.sql": {Data: []byte("create table a (id bigint);")}}
	na, err := templateNameFor("create table s (id int);", a)
	if err != nil {
		t.Fatal(err)
	}
	nb, _ := templateNameFor("create table s (id int);", b)
	ns, _ := templateNameFor("create table s (id bigint);", a)
	again, _ := templateNameFor("create table s (id int);", a)
	if na == nb {
		t.Errorf("changed migrations kept the template name %q", na)
	}
	if na == ns {
		t.Errorf("a changed StreamSpace schema kept the template name %q", na)
	}
	if na != again {
		t.Errorf("got %q then %q for the same schema and migrations", na, again)
	}
}

func TestDatabaseName(t *testing.T) {
	a, b := databaseName("TestX/sub case"), databaseName("TestX/sub case")
	if a == b {
		t.Errorf("got %q twice, want unique names", a)
	}
	long := databaseName("TestAVeryLongNameThatGoesOnAndOnAndOnForeverAndEver/with/subtests")
	if len(long) > 63 {
		t.Errorf("got %d bytes, want at most 63: %q", len(long), long)
	}
	for _, r := range a {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_') {
			t.Errorf("name %q has %q, want only [a-z0-9_]", a, r)
		}
	}
}
