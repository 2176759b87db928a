package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/streamspace-dev/functions/events"
	"github.com/streamspace-dev/functions/shared/db/dbtest"
	"github.com/streamspace-dev/functions/shared/fntest"
	"github.com/streamspace-dev/functions/shared/logging"
	"github.com/streamspace-dev/functions/shared/runtime"
)

// localRun is the runner started as main starts it, on free ports, against
// a fresh database.
type localRun struct {
	*runner
	Pool       *pgxpool.Pool
	Deliveries chan Delivery
	Logs       *fntest.Buffer
}

func startLocalRun(t *testing.T) *localRun {
	t.Helper()
	pool := dbtest.New(t)
	cfg := Config{
		DatabaseURL:    dbtest.URL(t, pool),
		Overlay:        "deploy/overlays/all-in-one",
		DeadLetterFile: filepath.Join(t.TempDir(), "dead-letters.jsonl"),
		Seed:           true,
	}
	environ := runtime.Environ()
	// Long enough that only the template.updated event can clear the
	// popular-tag cache during a test.
	environ["TAGS_CACHE_TTL"] = "1h"
	lr := &localRun{Pool: pool, Deliveries: make(chan Delivery, 100), Logs: &fntest.Buffer{}}
	// Generous: start only takes long on a busy machine.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	r, err := start(ctx, cfg, environ, logging.New(lr.Logs, slog.LevelDebug), func(d Delivery) { lr.Deliveries <- d })
	if err != nil {
		t.Fatalf("start: %v\nlog:\n%s", err, lr.Logs.String())
	}
	lr.runner = r
	t.Cleanup(func() {
		// The test's idle keep-alive connections would hold up the broker
		// port's bounded shutdown (a connection that never sent a request
		// counts as busy for its first seconds), so they go first.
		http.DefaultClient.CloseIdleConnections()
		if err := r.shutdown(context.Background()); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if t.Failed() {
			t.Logf("log:\n%s", lr.Logs.String())
		}
	})
	return lr
}

// do sends a REST request to the function with token.
func (lr *localRun) do(t *testing.T, method, path, token, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, lr.FunctionURL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(resp.Body); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, buf.Bytes()
}

// nextDelivery waits for the next delivery result.
func (lr *localRun) nextDelivery(t *testing.T) Delivery {
	t.Helper()
	select {
	case d := <-lr.Deliveries:
		return d
	case <-time.After(waitTimeout):
		t.Fatalf("no delivery within %s", waitTimeout)
		return Delivery{}
	}
}

func (lr *localRun) popularTags(t *testing.T, token string) map[string]int {
	t.Helper()
	status, body := lr.do(t, http.MethodGet, demoTagsQuery, token, "")
	if status != http.StatusOK {
		t.Fatalf("popular tags: %d %s", status, body)
	}
	var rows []struct {
		Tag   string `json:"tag"`
		Count int    `json:"count"`
	}
	if err := json.Unmarshal(body, &rows); err != nil {
		t.Fatalf("popular tags %s: %v", body, err)
	}
	out := map[string]int{}
	for _, r := range rows {
		out[r.Tag] = r.Count
	}
	return out
}

func TestLocalRunEndToEnd(t *testing.T) {
	lr := startLocalRun(t)
	admin, user, err := lr.tokens()
	if err != nil {
		t.Fatal(err)
	}

	t.Run("tokens and demo rows", func(t *testing.T) {
		status, body := lr.do(t, http.MethodPost, "/api/v1/batch/sessions/update-tags", admin, demoTagsBody)
		if status != http.StatusOK || !strings.Contains(string(body), `"updated":1`) {
			t.Errorf("admin update-tags: %d %s, want 200 with one session updated", status, body)
		}
		status, body = lr.do(t, http.MethodPost, "/api/v1/batch/sessions/update-tags", user, demoTagsBody)
		if status != http.StatusOK || !strings.Contains(string(body), `"forbidden":1`) {
			t.Errorf("plain user update-tags on dev's session: %d %s, want 200 with it forbidden", status, body)
		}
		if status, _ := lr.do(t, http.MethodGet, demoTagsQuery, "not-a-token", ""); status != http.StatusUnauthorized {
			t.Errorf("bad token: %d, want 401", status)
		}
	})

	t.Run("template.updated reaches tags only through its Trigger", func(t *testing.T) {
		if got := lr.popularTags(t, admin); got["web"] != 3 {
			t.Fatalf("popular tags %v, want web counted 3 times from the demo rows", got)
		}
		if _, err := lr.Pool.Exec(context.Background(),
			`insert into catalog_templates (id, name, category, tags) values ('fresh', 'Fresh', 'misc', '["fresh"]')`); err != nil {
			t.Fatal(err)
		}
		if got := lr.popularTags(t, admin); got["fresh"] != 0 {
			t.Fatalf("popular tags %v: the cache should still hide the new template", got)
		}

		e, err := events.New("versioning", events.TemplateUpdated, map[string]string{"templateId": "fresh", "change": "updated"})
		if err != nil {
			t.Fatal(err)
		}
		if status, _ := fntest.Deliver(t, lr.BrokerURL+"/", e, true); status != http.StatusAccepted {
			t.Fatalf("broker ingress answered %d, want 202", status)
		}
		d := lr.nextDelivery(t)
		if d.EventID != e.ID() || d.Trigger != events.DefaultNamespace+"/tags-template-updated" ||
			d.Subscriber != lr.FunctionURL+"/events/tags" || d.Outcome != Delivered || d.Attempts != 1 {
			t.Fatalf("delivery %+v, want %s delivered once to the tags Trigger's subscriber", d, e.ID())
		}
		if got := lr.popularTags(t, admin); got["fresh"] != 1 {
			t.Errorf("popular tags %v after template.updated, want fresh counted once", got)
		}
	})

	t.Run("emitted events enter the broker through K_SINK", func(t *testing.T) {
		// update-tags above emitted session.tags.updated.v1 to K_SINK; no
		// Trigger routes it, so the broker logged it and delivered nothing.
		deadline := time.Now().Add(waitTimeout)
		line := logged(lr.Logs, "event received", events.SessionTagsUpdated)
		for ; line == nil; line = logged(lr.Logs, "event received", events.SessionTagsUpdated) {
			if time.Now().After(deadline) {
				t.Fatalf("no %s reached the broker ingress within %s", events.SessionTagsUpdated, waitTimeout)
			}
			time.Sleep(20 * time.Millisecond)
		}
		if triggers, _ := line["triggers"].([]any); len(triggers) != 0 {
			t.Errorf("%s matched Triggers %v, want none", events.SessionTagsUpdated, triggers)
		}
		select {
		case d := <-lr.Deliveries:
			t.Errorf("unexpected delivery %+v", d)
		default:
		}
	})
}

// logged returns the first log line with msg that names eventType, or nil.
func logged(logs *fntest.Buffer, msg, eventType string) map[string]any {
	for _, l := range logs.Lines() {
		if l["msg"] == msg && l["eventType"] == eventType {
			return l
		}
	}
	return nil
}

// TestPrintedCommandsWork runs the curl commands of the banner exactly as
// printed.
func TestPrintedCommandsWork(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl is not installed")
	}
	lr := startLocalRun(t)
	var out bytes.Buffer
	if err := lr.banner(&out); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "streamspace-local ready: function "+lr.FunctionURL) {
		t.Errorf("banner starts %q, want the ready line", strings.SplitN(out.String(), "\n", 2)[0])
	}
	cmds := printedCommands(out.String())
	want := []string{`"updated":1`, `{"tag":"web","count":3}`, "HTTP/1.1 202 Accepted"}
	if len(cmds) != len(want) {
		t.Fatalf("banner has %d curl commands, want %d:\n%s", len(cmds), len(want), out.String())
	}
	for i, cmd := range cmds {
		// Only stdout is the answer; curl's own messages go to stderr.
		c := exec.Command("bash", "-c", cmd)
		var stderr strings.Builder
		c.Stderr = &stderr
		got, err := c.Output()
		if err != nil || !strings.Contains(string(got), want[i]) {
			t.Errorf("%s\n→ %s (%v, stderr %s), want output containing %s", cmd, got, err, stderr.String(), want[i])
		}
	}
	if d := lr.nextDelivery(t); d.EventID != demoEventID || d.Outcome != Delivered {
		t.Errorf("delivery %+v, want the printed event delivered", d)
	}
}

// printedCommands returns each curl command of the banner with its
// continuation lines.
func printedCommands(banner string) []string {
	var cmds []string
	var cur strings.Builder
	for _, line := range strings.Split(banner, "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(trimmed, "curl "):
			cur.Reset()
			cur.WriteString(line + "\n")
		case cur.Len() > 0:
			cur.WriteString(line + "\n")
		default:
			continue
		}
		if !strings.HasSuffix(trimmed, `\`) {
			cmds = append(cmds, cur.String())
			cur.Reset()
		}
	}
	return cmds
}
