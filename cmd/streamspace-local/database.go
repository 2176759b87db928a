package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/streamspace-dev/functions/shared/db"
)

// libpqEnv maps libpq's environment variables to the keywords of a
// keyword/value connection string. Variables not listed still reach the
// function, which inherits the whole environment.
var libpqEnv = []struct{ env, keyword string }{
	{"PGHOST", "host"},
	{"PGPORT", "port"},
	{"PGDATABASE", "dbname"},
	{"PGUSER", "user"},
	{"PGPASSWORD", "password"},
	{"PGPASSFILE", "passfile"},
	{"PGSERVICE", "service"},
	{"PGSERVICEFILE", "servicefile"},
	{"PGSSLMODE", "sslmode"},
	{"PGSSLROOTCERT", "sslrootcert"},
	{"PGSSLCERT", "sslcert"},
	{"PGSSLKEY", "sslkey"},
	{"PGCONNECT_TIMEOUT", "connect_timeout"},
	{"PGAPPNAME", "application_name"},
	{"PGOPTIONS", "options"},
	{"PGTARGETSESSIONATTRS", "target_session_attrs"},
}

// databaseURL is DATABASE_URL when set; otherwise a keyword/value
// connection string built from libpq's PG* variables, since the function
// requires DATABASE_URL.
func databaseURL(configured string, environ map[string]string) string {
	if configured != "" {
		return configured
	}
	var parts []string
	for _, v := range libpqEnv {
		if value := environ[v.env]; value != "" {
			parts = append(parts, v.keyword+"="+quoteKeywordValue(value))
		}
	}
	return strings.Join(parts, " ")
}

// quoteKeywordValue quotes a value as libpq's keyword/value syntax wants.
func quoteKeywordValue(s string) string {
	s = strings.ReplaceAll(s, `\`, `\\`)
	return "'" + strings.ReplaceAll(s, `'`, `\'`) + "'"
}

// describeDatabase names the database for people: user@host:port/name,
// never the password.
func describeDatabase(url string) string {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return "(connection string cannot be parsed)"
	}
	host := cfg.Host
	if !strings.HasPrefix(host, "/") {
		host = net.JoinHostPort(host, strconv.Itoa(int(cfg.Port)))
	}
	return fmt.Sprintf("%s@%s/%s", cfg.User, host, cfg.Database)
}

// migrateDatabase brings the database to the latest schema, as the
// migration Job does in a cluster (functions never migrate), and returns
// the schema version.
func migrateDatabase(ctx context.Context, url string) (int, error) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		if os.Getenv("DATABASE_URL") == "" && os.Getenv("PGHOST") == "" {
			return 0, fmt.Errorf("connect to PostgreSQL: %w (set DATABASE_URL, or run under pg_virtualenv -t as make run does)", err)
		}
		return 0, fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := db.Migrate(ctx, conn); err != nil {
		return 0, err
	}
	return db.SchemaVersion(ctx, conn)
}
