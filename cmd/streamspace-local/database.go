package main

import (
	"context"
	"errors"
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

// schemaFile is StreamSpace's own schema, relative to the repository root:
// its tables as its API's Migrate() creates them, with the rows it seeds.
const schemaFile = "testdata/streamspace/schema.sql"

// dbState is what prepareDatabase found and did.
type dbState struct {
	// Version is the schema version after migrating.
	Version int
	// LoadedSchema says StreamSpace's schema was loaded first, into a
	// throwaway database that had none of its tables.
	LoadedSchema bool
}

// prepareDatabase brings the database to the latest schema, as the
// migration Job does in a cluster (functions never migrate). The functions
// run on StreamSpace's own database, so the migrations refuse one without
// StreamSpace's tables. When throwaway is set (make run's own pg_virtualenv
// cluster, never a DATABASE_URL the operator gave) and none of those tables
// exist, StreamSpace's schema is loaded first, as a StreamSpace install would
// have created it; a database with only some of them is refused as it is.
func prepareDatabase(ctx context.Context, url string, throwaway bool) (dbState, error) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		if os.Getenv("DATABASE_URL") == "" && os.Getenv("PGHOST") == "" {
			return dbState{}, fmt.Errorf("connect to PostgreSQL: %w (set DATABASE_URL, or run under pg_virtualenv -t as make run does)", err)
		}
		return dbState{}, fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var st dbState
	err = db.Migrate(ctx, conn)
	var missing *db.MissingTablesError
	if errors.As(err, &missing) && throwaway && len(missing.Tables) == len(db.StreamSpaceTables) {
		if err := loadStreamSpaceSchema(ctx, conn); err != nil {
			return st, err
		}
		st.LoadedSchema = true
		err = db.Migrate(ctx, conn)
	}
	if err != nil {
		return st, err
	}
	st.Version, err = db.SchemaVersion(ctx, conn)
	return st, err
}

// loadStreamSpaceSchema runs schemaFile, found from the working directory
// or a parent, in one transaction.
func loadStreamSpaceSchema(ctx context.Context, conn *pgx.Conn) error {
	path, err := findUp(schemaFile, false)
	if err != nil {
		return fmt.Errorf("StreamSpace's schema: %w", err)
	}
	sql, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("StreamSpace's schema: %w", err)
	}
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, string(sql))
		return err
	})
	if err != nil {
		return fmt.Errorf("load StreamSpace's schema %s: %w", path, err)
	}
	return nil
}
