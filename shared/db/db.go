// Package db is the PostgreSQL adapter every function shares: the connection
// pool, the embedded schema migrations, the mapping from PostgreSQL errors to
// error kinds, transactions, the processed-event record that makes handlers
// idempotent, and leases for long jobs.
package db

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// connectTimeout bounds each connection attempt when the connection string
// does not set connect_timeout, so a wrong host fails start-up quickly
// instead of after the pool's two-minute default.
const connectTimeout = 10 * time.Second

// Open is OpenWith and the default Settings.
func Open(ctx context.Context, connString string) (*pgxpool.Pool, error) {
	return OpenWith(ctx, connString, Defaults())
}

// OpenWith returns a pool for the database at connString, a PostgreSQL URL
// or keyword/value string, sized by s. An empty connString takes everything
// from the libpq environment (PGHOST, PGPORT, PGUSER, PGPASSWORD,
// PGDATABASE, ...). The pool works through PgBouncer in transaction mode as
// well as straight to PostgreSQL (docs/data.md, "Connections, PgBouncer and timeouts"). It pings once, so bad
// settings fail at start-up rather than on the first request. No error it
// returns contains the connection string or password.
func OpenWith(ctx context.Context, connString string, s Settings) (*pgxpool.Pool, error) {
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	cfg, err := pgxpool.ParseConfig(connString)
	if err != nil {
		// pgx redacts passwords in parse errors only on a best-effort basis
		// for malformed input, so nothing of the error is kept.
		return nil, errors.New("open database: the connection string cannot be parsed")
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = connectTimeout
	}
	// pgx's default mode prepares named statements on the server and reuses
	// them by name. PgBouncer 1.18 in transaction mode hands each
	// transaction whichever server connection is free, where that name does
	// not exist. cache_describe only caches, in this client, what a
	// statement takes and returns, and sends each statement unnamed with its
	// text, so any server connection runs it; arguments keep their binary
	// encodings and exact types.
	cfg.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeCacheDescribe
	cfg.MaxConns = int32(s.PoolMax)
	cfg.MinConns = int32(s.PoolMin)
	cfg.MaxConnIdleTime = s.PoolIdle
	// Idle connections are closed by the pool's health check, so it runs
	// often enough for PoolIdle to hold within half of it again.
	cfg.HealthCheckPeriod = max(s.PoolIdle/2, minHealthCheck)
	forms := secretForms(connString, cfg.ConnConfig.Password)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open database: %w", redact(err, forms))
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("open database: %w", Classify(redact(err, forms)))
	}
	return pool, nil
}

// minHealthCheck keeps a tiny DATABASE_POOL_IDLE from making the health
// check spin.
const minHealthCheck = 100 * time.Millisecond

// secretForms are the ways password can show in a message: as it is, as
// written in the connection string conn (where an @, : or / in it is
// percent-encoded, in any letter case), and escaped the ways a URL's
// userinfo, path or query carries it. Longest first, so that no form is
// replaced in part by a shorter one it contains.
func secretForms(conn, password string) []string {
	if password == "" {
		return nil
	}
	forms := []string{
		password,
		url.PathEscape(password),
		url.QueryEscape(password),
		strings.TrimPrefix(url.UserPassword("", password).String(), ":"),
	}
	// Only a written form that decodes to the password is one: a URL that
	// does not parse may yield any fragment here.
	if written := writtenPassword(conn); written != "" {
		if decoded, err := url.PathUnescape(written); err == nil && decoded == password {
			forms = append(forms, written)
		}
	}
	slices.SortFunc(forms, func(a, b string) int { return len(b) - len(a) })
	return slices.Compact(forms)
}

// writtenPassword is the password of a postgres:// URL as its text has it,
// found the way net/url finds it: the userinfo ends at the last @ before the
// path, and the password starts after the first colon in it.
func writtenPassword(conn string) string {
	_, rest, ok := strings.Cut(conn, "://")
	if !ok {
		return ""
	}
	authority, _, _ := strings.Cut(rest, "/")
	at := strings.LastIndex(authority, "@")
	if at < 0 {
		return ""
	}
	_, password, _ := strings.Cut(authority[:at], ":")
	return password
}

// redact hides every form of a password in err's message. pgx does not put
// passwords in connection errors; this keeps it that way should a server or
// proxy echo one.
func redact(err error, forms []string) error {
	msg := err.Error()
	for _, f := range forms {
		if strings.Contains(msg, f) {
			return &redactedError{err: err, forms: forms}
		}
	}
	return err
}

type redactedError struct {
	err   error
	forms []string
}

func (e *redactedError) Error() string {
	msg := e.err.Error()
	for _, f := range e.forms {
		msg = strings.ReplaceAll(msg, f, "xxxxx")
	}
	return msg
}

// Unwrap keeps the cause reachable for errors.As, so Classify still sees it.
func (e *redactedError) Unwrap() error { return e.err }
