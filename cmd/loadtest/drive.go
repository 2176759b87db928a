package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// operation is one kind of request the clients mix.
type operation string

// The operations, in the order each client cycles through them.
const (
	tagBatch    operation = "tag batch"
	shareRead   operation = "share read"
	versionList operation = "version list"
)

var operations = []operation{tagBatch, shareRead, versionList}

// client is one of the concurrent users: it sends its requests to one
// instance, as a load balancer keeps a connection on one pod.
type client struct {
	http     *http.Client
	instance string
	token    string
	user     string
}

// sample is one answered request, or one that got no answer (status 0).
type sample struct {
	op      operation
	status  int
	code    string // the error body's code, on a failure
	latency time.Duration
	err     string // no answer: why
}

// request builds op's request for c's user.
func (c *client) request(ctx context.Context, op operation, i int) (*http.Request, error) {
	var method, path string
	var body []byte
	switch op {
	case tagBatch:
		ids := make([]string, sessionsPerUser)
		for s := range ids {
			ids[s] = fmt.Sprintf("%s-s%d", c.user, s)
		}
		method, path = http.MethodPost, "/api/v1/batch/sessions/update-tags"
		body, _ = json.Marshal(map[string]any{
			"operation":  []string{"add", "remove", "replace"}[i%3],
			"sessionIds": ids,
			"tags":       []string{"load", fmt.Sprint("t", i%5)},
		})
	case shareRead:
		method, path = http.MethodGet, "/api/v1/session-templates/"+c.user+"-tpl/shares"
	case versionList:
		method, path = http.MethodGet, "/api/v1/session-templates/"+c.user+"-tpl/versions"
	}
	req, err := http.NewRequestWithContext(ctx, method, c.instance+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	return req, nil
}

// run sends requests one after another until ctx ends, offset so that the
// clients together keep an even mix.
func (c *client) run(ctx context.Context, offset int) []sample {
	var out []sample
	for i := 0; ctx.Err() == nil; i++ {
		op := operations[(i+offset)%len(operations)]
		req, err := c.request(ctx, op, i)
		if err != nil {
			out = append(out, sample{op: op, err: err.Error()})
			continue
		}
		start := time.Now()
		resp, err := c.http.Do(req)
		if err != nil {
			if ctx.Err() == nil {
				out = append(out, sample{op: op, err: err.Error(), latency: time.Since(start)})
			}
			continue
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		s := sample{op: op, status: resp.StatusCode, latency: time.Since(start)}
		if resp.StatusCode >= 300 {
			var e struct {
				Code string `json:"code"`
			}
			_ = json.Unmarshal(raw, &e)
			s.code = e.Code
		}
		out = append(out, s)
	}
	return out
}

// monitor samples, on a connection of its own to another database, how
// many backends serve the load database, every interval until ctx ends,
// and returns the most it saw.
func monitor(ctx context.Context, conn *pgx.Conn, interval time.Duration) (peak int, err error) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		// The sample in flight finishes when ctx ends: a query cancelled
		// half-way would close the connection under the next mode.
		var n int
		qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		err := conn.QueryRow(qctx, `
			select count(*) from pg_stat_activity
			where datname = $1 and backend_type = 'client backend'`, database).Scan(&n)
		cancel()
		if err != nil {
			return peak, fmt.Errorf("sample pg_stat_activity: %w", err)
		}
		peak = max(peak, n)
		select {
		case <-ctx.Done():
			return peak, nil
		case <-tick.C:
		}
	}
}

// drive runs clients against instances for d while the monitor samples
// the server, and returns every sample and the peak.
func drive(ctx context.Context, clients []*client, d time.Duration, mon *pgx.Conn) ([]sample, int, time.Duration, error) {
	monCtx, stopMon := context.WithCancel(ctx)
	var peak int
	var monErr error
	monDone := make(chan struct{})
	go func() {
		defer close(monDone)
		peak, monErr = monitor(monCtx, mon, 50*time.Millisecond)
	}()
	loadCtx, stop := context.WithTimeout(ctx, d)
	defer stop()
	var mu sync.Mutex
	var all []sample
	var wg sync.WaitGroup
	start := time.Now()
	for k, c := range clients {
		wg.Go(func() {
			got := c.run(loadCtx, k)
			mu.Lock()
			all = append(all, got...)
			mu.Unlock()
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	stopMon()
	<-monDone
	return all, peak, elapsed, monErr
}

// sqlState finds the SQLSTATE in an instance's log line.
var sqlState = regexp.MustCompile(`SQLSTATE ([0-9A-Z]{5})`)

// logStates counts, over the instances' JSON logs, the SQLSTATEs of the
// errors they logged (one line per failed request or event).
func logStates(instances []*instance) (map[string]int, error) {
	states := map[string]int{}
	for _, in := range instances {
		f, err := os.Open(in.log)
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			if m := sqlState.FindSubmatch(sc.Bytes()); m != nil {
				states[string(m[1])]++
			}
		}
		err = sc.Err()
		f.Close()
		if err != nil {
			return nil, err
		}
	}
	return states, nil
}

// percentile is the p-th percentile (0 < p ≤ 100) of sorted, by the
// nearest-rank method; 0 for none.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(float64(len(sorted))*p/100+0.999999) - 1
	return sorted[min(max(rank, 0), len(sorted)-1)]
}

// latencies returns the answered samples' latencies, sorted.
func latencies(samples []sample) []time.Duration {
	var out []time.Duration
	for _, s := range samples {
		if s.status != 0 {
			out = append(out, s.latency)
		}
	}
	slices.Sort(out)
	return out
}
