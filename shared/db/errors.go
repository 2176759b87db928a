package db

import (
	"errors"
	"io"
	"net"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/streamspace-dev/functions/shared/errs"
)

// Classify gives a PostgreSQL error its kind, keeping err as the cause:
//
//   - no rows → NotFound
//   - unique or exclusion violation (23505, 23P01) → Conflict
//   - foreign key violation (23503) → NotFound: a referenced row is missing
//   - check or not-null violation (23514, 23502) and data exceptions
//     (class 22, such as 22P02 invalid input syntax) → Invalid
//   - connection failures, server shutdown (57P01-57P03), insufficient
//     resources (class 53), serialization failure and deadlock (40001,
//     40P01), lock and statement timeouts (55P03, 57014) → Unavailable,
//     which the broker retries
//
// Anything else, and an error that already has a kind, is returned unchanged.
func Classify(err error) error {
	if err == nil {
		return nil
	}
	var kinded *errs.Error
	if errors.As(err, &kinded) {
		return err
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return errs.Wrap(errs.NotFound, err, "not found")
	}
	// A connection error can wrap a server error such as a failed login, which
	// is still a database that cannot be reached, not a bad request.
	var connErr *pgconn.ConnectError
	if errors.As(err, &connErr) {
		return errs.Wrap(errs.Unavailable, err, "database unavailable")
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		if kind, ok := codeKind(pgErr.Code); ok {
			return errs.Wrap(kind, err, "%s", kindMessage[kind])
		}
		return err
	}
	if connectionLost(err) {
		return errs.Wrap(errs.Unavailable, err, "database unavailable")
	}
	return err
}

var kindMessage = map[errs.Kind]string{
	errs.Conflict:    "conflicts with an existing record",
	errs.NotFound:    "a referenced record does not exist",
	errs.Invalid:     "invalid value",
	errs.Unavailable: "database unavailable",
}

// codeKind maps a SQLSTATE to a kind; ok is false for codes left internal.
func codeKind(code string) (kind errs.Kind, ok bool) {
	switch code {
	case "23505", "23P01":
		return errs.Conflict, true
	case "23503":
		return errs.NotFound, true
	case "23514", "23502":
		return errs.Invalid, true
	case "57P01", "57P02", "57P03", "40001", "40P01", "55P03", "57014":
		return errs.Unavailable, true
	}
	switch {
	case strings.HasPrefix(code, "22"):
		return errs.Invalid, true
	case strings.HasPrefix(code, "08"), strings.HasPrefix(code, "53"):
		return errs.Unavailable, true
	}
	return "", false
}

// connectionLost reports errors from the network or from a connection that
// broke mid-statement.
func connectionLost(err error) bool {
	var netErr net.Error
	return errors.As(err, &netErr) ||
		pgconn.SafeToRetry(err) ||
		pgconn.Timeout(err) ||
		errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, io.EOF) ||
		errors.Is(err, net.ErrClosed)
}
