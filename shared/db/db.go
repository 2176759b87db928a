// Package db is the PostgreSQL adapter every function shares: the connection
// pool, the embedded schema migrations, the mapping from PostgreSQL errors to
// error kinds, transactions, the processed-event record that makes handlers
// idempotent, and leases for long jobs.
package db

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// connectTimeout bounds each connection attempt when the connection string
// does not set connect_timeout, so a wrong host fails start-up quickly
// instead of after the pool's two-minute default.
const connectTimeout = 10 * time.Second

// Open returns a pool for the database at url, a PostgreSQL URL or
// keyword/value string. An empty url takes everything from the libpq
// environment (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, ...).
// It pings once, so bad settings fail at start-up rather than on the first
// request. No error it returns contains the connection string or password.
func Open(ctx context.Context, url string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		// pgx redacts passwords in parse errors only on a best-effort basis
		// for malformed input, so nothing of the error is kept.
		return nil, errors.New("open database: the connection string cannot be parsed")
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = connectTimeout
	}
	password := cfg.ConnConfig.Password
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open database: %w", redact(err, password))
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("open database: %w", Classify(redact(err, password)))
	}
	return pool, nil
}

// redact hides password in err's message. pgx does not put passwords in
// connection errors; this keeps it that way should a server or proxy echo one.
func redact(err error, password string) error {
	if password == "" || !strings.Contains(err.Error(), password) {
		return err
	}
	return &redactedError{err: err, password: password}
}

type redactedError struct {
	err      error
	password string
}

func (e *redactedError) Error() string {
	return strings.ReplaceAll(e.err.Error(), e.password, "xxxxx")
}

// Unwrap keeps the cause reachable for errors.As, so Classify still sees it.
func (e *redactedError) Unwrap() error { return e.err }
