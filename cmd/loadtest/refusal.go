package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/streamspace-dev/functions/events"
	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/authn/localissuer"
)

// refusal is what an instance answered while PostgreSQL was at
// max_connections, and once it no longer was.
type refusal struct {
	fillers      int    // connections it took to fill the server
	rest         int    // REST status at max_connections
	retryAfter   string // its Retry-After
	event        int    // event delivery status at max_connections
	logged       int    // 53300s in the instance's log
	restAfter    int    // REST status once connections were free again
	fillerFailed string // how opening a connection failed, if not with 53300
}

// missed lists what of the bar the check misses: a refusal must be a
// retryable 503 (with Retry-After on REST) and leave the instance serving.
func (f refusal) missed() []string {
	var out []string
	if f.fillerFailed != "" {
		out = append(out, "at max_connections: the server refused with something else than 53300: "+f.fillerFailed)
	}
	if f.rest != http.StatusServiceUnavailable || f.retryAfter == "" {
		out = append(out, fmt.Sprintf("at max_connections: REST answered %d (Retry-After %q), want 503 with Retry-After", f.rest, f.retryAfter))
	}
	if f.event < 500 {
		out = append(out, fmt.Sprintf("at max_connections: the event path answered %d, want a 5xx the broker retries", f.event))
	}
	if f.logged == 0 {
		out = append(out, "at max_connections: the instance logged no SQLSTATE 53300")
	}
	if f.restAfter != http.StatusOK {
		out = append(out, fmt.Sprintf("after max_connections: REST answered %d, want 200", f.restAfter))
	}
	return out
}

// checkRefusal starts one instance straight to PostgreSQL, lets its pool
// close every connection, fills the server's max_connections with idle
// connections (to another database), and then sends the instance a REST
// request and an event, which both need a connection PostgreSQL refuses
// with "too many connections". Then it frees the server and asks again.
func checkRefusal(ctx context.Context, o options, dsn, issuerURL string, iss *localissuer.Issuer, logs string, admin *pgx.Conn) (refusal, error) {
	var f refusal
	dir, err := os.MkdirTemp(logs, "refusal-")
	if err != nil {
		return f, err
	}
	instances, err := startInstances(ctx, o.binary, 1, append(instanceEnv(o, dsn, issuerURL), "DATABASE_POOL_IDLE=200ms"), dir)
	if err != nil {
		return f, err
	}
	in := instances[0]
	defer in.stop()
	// Idle connections close after DATABASE_POOL_IDLE; wait until the
	// instance holds none, so the next request must open one.
	err = waitFor(ctx, in.exited, func(ctx context.Context) bool {
		var n int
		err := admin.QueryRow(ctx, `select count(*) from pg_stat_activity where datname = $1`, database).Scan(&n)
		return err == nil && n == 0
	})
	if err != nil {
		return f, fmt.Errorf("the instance's pool kept their connections: %w", err)
	}

	var fillers []*pgx.Conn
	defer func() {
		for _, c := range fillers {
			c.Close(context.Background())
		}
	}()
	cfg := admin.Config().Copy()
	for {
		c, err := pgx.ConnectConfig(ctx, cfg)
		if err == nil {
			fillers = append(fillers, c)
			if len(fillers) > 10000 {
				return f, errors.New("10,000 connections and the server still takes more")
			}
			continue
		}
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != tooManyConnections {
			f.fillerFailed = err.Error()
		}
		break
	}
	f.fillers = len(fillers)

	tok, err := iss.Token("load-0", authn.User, audience, time.Hour)
	if err != nil {
		return f, err
	}
	versions := in.url + "/api/v1/session-templates/load-0-tpl/versions"
	var header http.Header
	f.rest, header, err = send(ctx, http.MethodGet, versions, tok, nil, nil)
	if err != nil {
		return f, err
	}
	f.retryAfter = header.Get("Retry-After")
	data := `{"templateId":"load-0-tpl","change":"updated"}`
	f.event, _, err = send(ctx, http.MethodPost, in.url+"/", "", strings.NewReader(data), http.Header{
		"Ce-Specversion": {"1.0"},
		"Ce-Id":          {"load-refusal-1"},
		"Ce-Type":        {events.TemplateUpdated},
		"Ce-Source":      {"/streamspace/functions/versioning"},
		"Content-Type":   {"application/json"},
	})
	if err != nil {
		return f, err
	}

	for _, c := range fillers {
		c.Close(ctx)
	}
	fillers = nil
	f.restAfter, _, err = send(ctx, http.MethodGet, versions, tok, nil, nil)
	if err != nil {
		return f, err
	}
	states, err := logStates(instances)
	f.logged = states[tooManyConnections]
	return f, err
}

// send makes one request and returns its status and header.
func send(ctx context.Context, method, url, token string, body io.Reader, header http.Header) (int, http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		return 0, nil, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, resp.Header, nil
}
