package function_test

import (
	"context"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/events"
	function "github.com/streamspace-dev/functions/functions/mailtest"
	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/fntest"
	"github.com/streamspace-dev/functions/shared/smtptest"
)

// envPair is two instances of the function on one database, both with the
// env integration pointed at one fault server whose AUTH fails while
// failing is set. What one instance stores, the other (or one started
// after a scale to zero) must see.
type envPair struct {
	a, b    *world
	failing *atomic.Bool
	srv     *smtptest.Server
}

func startEnvPair(t *testing.T) *envPair {
	t.Helper()
	ca := smtptest.NewCA(t, "env CA")
	failing := &atomic.Bool{}
	host, port, srv := (&world{ca: ca}).faultServer(t, smtptest.Fault{Auth: func(user, pass string) error {
		if failing.Load() || user != "alice" || pass != smtpPassword {
			return smtp.ErrAuthFailed
		}
		return nil
	}})
	env := map[string]string{
		"SMTP_HOST": host, "SMTP_PORT": strconv.Itoa(port), "SMTP_USERNAME": "alice", "SMTP_PASSWORD": smtpPassword,
		"SMTP_FROM": "StreamSpace <noreply@streamspace.test>", "SMTP_TLS": "true",
	}
	a := startTrusting(t, ca, env)
	second := map[string]string{}
	for k, v := range a.h.Env {
		if strings.HasPrefix(k, "MAIL_") || strings.HasPrefix(k, "SMTP_") {
			second[k] = v
		}
	}
	h := fntest.StartOn(t, a.h.Pool, function.New(), second)
	b := &world{h: h, ca: ca, admin: h.Token("root", authn.Admin), keysDir: a.keysDir}
	return &envPair{a: a, b: b, failing: failing, srv: srv}
}

// settled waits until every queued event has reached a sink (either
// instance's relay may send any of the function's events), then returns
// the integration.health.changed events of the env integration, both
// sinks together.
func (p *envPair) settled(t *testing.T) []events.IntegrationHealthChangedData {
	t.Helper()
	require.Eventually(t, func() bool { return p.a.h.Count(`select count(*) from event_outbox`) == 0 }, wait, 50*time.Millisecond,
		"events left in the outbox")
	require.Zero(t, p.a.h.Count(`select count(*) from event_dead_letters`))
	var all []cloudevents.Event
	for _, w := range []*world{p.a, p.b} {
		all = append(all, eventsOf(w, events.IntegrationHealthChanged)...)
	}
	// Each sink has its own order: the ticks' order is the events' times.
	slices.SortStableFunc(all, func(x, y cloudevents.Event) int { return x.Time().Compare(y.Time()) })
	var out []events.IntegrationHealthChangedData
	for _, e := range all {
		var d events.IntegrationHealthChangedData
		require.NoError(t, e.DataAs(&d))
		if d.IntegrationID == "env" {
			out = append(out, d)
		}
	}
	return out
}

// tickAll delivers a mail-health tick to every instance at once and waits
// for their answers.
func tickAll(t *testing.T, ws []*world) {
	t.Helper()
	statuses := make([]int, len(ws))
	var wg sync.WaitGroup
	for i, w := range ws {
		e, err := events.New("test", events.Ping, events.PingData{Job: "mail.health"})
		require.NoError(t, err)
		e.SetSource(events.MailHealthSource)
		wg.Go(func() { statuses[i], _ = w.h.Deliver(e, false) })
	}
	wg.Wait()
	for i, status := range statuses {
		assert.Equal(t, 202, status, "instance %d", i)
	}
}

// dbNow is the database's clock, which stamps the stored times.
func (p *envPair) dbNow(t *testing.T) time.Time {
	t.Helper()
	var now time.Time
	require.NoError(t, p.a.h.Pool.QueryRow(context.Background(), `select now()`).Scan(&now))
	return now
}

// envView is GET …/email/env on an instance.
func envView(t *testing.T, w *world) function.IntegrationView {
	t.Helper()
	status, raw := w.h.Do("GET", "/api/v1/integrations/email/env", w.admin, nil)
	require.Equal(t, 200, status, "%s", raw)
	var v function.IntegrationView
	require.NoError(t, json.Unmarshal(raw, &v))
	return v
}

// envInList is the env integration in GET …/email on an instance.
func envInList(t *testing.T, w *world) function.IntegrationView {
	t.Helper()
	status, raw := w.h.Do("GET", "/api/v1/integrations/email", w.admin, nil)
	require.Equal(t, 200, status, "%s", raw)
	var l function.ListResult
	require.NoError(t, json.Unmarshal(raw, &l))
	require.NotEmpty(t, l.Integrations)
	require.Equal(t, "env", l.Integrations[0].ID)
	return l.Integrations[0]
}

// TestEnvIntegrationHealth: the health tick checks the env integration like
// a row, keeps its health in the database, and reports each transition once
// whichever instance ticks.
func TestEnvIntegrationHealth(t *testing.T) {
	p := startEnvPair(t)
	notified := `select count(*) from notifications where type = 'integration_unhealthy' and data->>'integrationId' = 'env'`
	admins := p.a.h.Count(`select count(*) from users where role = 'admin' and coalesce(active, true)`)
	require.Positive(t, admins)

	// The steps run in order, each on the state the one before left.
	tests := []struct {
		name    string
		on      []*world
		failing bool
		// wantChanges are the env health changes reported so far, as
		// "previous>now".
		wantChanges []string
		// wantNotified is how many admin notifications about env exist.
		wantNotified int
		wantStatus   function.HealthStatus
		wantClass    string
	}{
		{name: "first check, healthy", on: []*world{p.a}, wantChanges: []string{"unknown>healthy"},
			wantStatus: function.Healthy},
		{name: "healthy again on the other instance: nothing", on: []*world{p.b}, wantChanges: []string{"unknown>healthy"},
			wantStatus: function.Healthy},
		{name: "starts failing: one change, one notification per admin", on: []*world{p.a}, failing: true,
			wantChanges: []string{"unknown>healthy", "healthy>unhealthy"}, wantNotified: admins, wantStatus: function.Unhealthy, wantClass: "auth_failed"},
		{name: "still failing on the other instance: nothing", on: []*world{p.b}, failing: true,
			wantChanges: []string{"unknown>healthy", "healthy>unhealthy"}, wantNotified: admins, wantStatus: function.Unhealthy, wantClass: "auth_failed"},
		{name: "still failing: nothing", on: []*world{p.a}, failing: true,
			wantChanges: []string{"unknown>healthy", "healthy>unhealthy"}, wantNotified: admins, wantStatus: function.Unhealthy, wantClass: "auth_failed"},
		{name: "recovers on the other instance: one change, no notification", on: []*world{p.b},
			wantChanges: []string{"unknown>healthy", "healthy>unhealthy", "unhealthy>healthy"}, wantNotified: admins, wantStatus: function.Healthy},
		{name: "fails again, both instances at once: one change, one notification per admin", on: []*world{p.a, p.b}, failing: true,
			wantChanges:  []string{"unknown>healthy", "healthy>unhealthy", "unhealthy>healthy", "healthy>unhealthy"},
			wantNotified: 2 * admins, wantStatus: function.Unhealthy, wantClass: "auth_failed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p.failing.Store(tc.failing)
			before := p.dbNow(t)
			tickAll(t, tc.on)

			var got []string
			for _, d := range p.settled(t) {
				now := function.Unhealthy
				if d.Healthy {
					now = function.Healthy
				}
				got = append(got, d.Previous+">"+string(now))
			}
			assert.Equal(t, tc.wantChanges, got)
			assert.Equal(t, tc.wantNotified, p.a.h.Count(notified))
			assert.Equal(t, 1, p.a.h.Count(`select count(*) from mailtest_env_integration`), "one record")
			// Both instances answer with the stored health.
			for _, w := range []*world{p.a, p.b} {
				for _, v := range []function.IntegrationView{envView(t, w), envInList(t, w)} {
					assert.Equal(t, tc.wantStatus, v.Health.Status)
					assert.Equal(t, tc.wantClass, v.Health.ErrorClass)
					if assert.NotNil(t, v.Health.CheckedAt) {
						assert.False(t, v.Health.CheckedAt.Before(before), "checked at %s, the tick began after %s", v.Health.CheckedAt, before)
					}
					if tc.failing {
						assert.Contains(t, v.Health.Error, "535")
					} else {
						assert.Empty(t, v.Health.Error)
					}
				}
			}
		})
	}
	assert.Empty(t, p.srv.Messages(), "a health check sends nothing")
	p.a.requireNoSecretsAnywhere(t)
	p.b.requireNoSecretsAnywhere(t)
}

// TestEnvIntegrationTestTimes: a test of the env integration stores
// last_test_at always and last_success_at on success, and every instance
// answers with them.
func TestEnvIntegrationTestTimes(t *testing.T) {
	p := startEnvPair(t)
	for _, w := range []*world{p.a, p.b} {
		v := envView(t, w)
		assert.Nil(t, v.LastTestAt, "never tested")
		assert.Nil(t, v.LastSuccessAt)
		assert.Equal(t, function.HealthUnknown, v.Health.Status)
	}

	var lastSuccess time.Time
	// The steps run in order; each compares with the times the one before
	// left.
	tests := []struct {
		name        string
		on          *world
		failing     bool
		wantStatus  int
		wantSuccess bool
	}{
		{name: "a test that succeeds sets both", on: p.a, wantStatus: 200, wantSuccess: true},
		{name: "a test that fails sets last_test_at only", on: p.b, failing: true, wantStatus: 400},
		{name: "a later success moves both again", on: p.b, wantStatus: 200, wantSuccess: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p.failing.Store(tc.failing)
			before := p.dbNow(t)
			status, res, raw := tc.on.test(t, "env", map[string]any{"recipient": "ops@example.com"})
			require.Equal(t, tc.wantStatus, status, "%s", raw)
			assert.Equal(t, tc.wantSuccess, res.Success)
			for _, w := range []*world{p.a, p.b} {
				for _, v := range []function.IntegrationView{envView(t, w), envInList(t, w)} {
					if assert.NotNil(t, v.LastTestAt) {
						assert.False(t, v.LastTestAt.Before(before), "last test %s, the test began after %s", v.LastTestAt, before)
					}
					require.NotNil(t, v.LastSuccessAt, "one test has succeeded")
					if tc.wantSuccess {
						assert.False(t, v.LastSuccessAt.Before(before), "last success %s, the test began after %s", v.LastSuccessAt, before)
					} else {
						assert.True(t, v.LastSuccessAt.Equal(lastSuccess), "a failed test leaves last_success_at at %s, got %s", lastSuccess, v.LastSuccessAt)
					}
				}
			}
			lastSuccess = *envView(t, p.a).LastSuccessAt
			assert.Equal(t, 1, p.a.h.Count(`select count(*) from mailtest_env_integration where id = 'env' and last_test_at is not null`))
			assert.Zero(t, p.a.h.Count(`select count(*) from integrations where type = 'email'`), "env has no integrations row")
		})
	}
	assert.Len(t, p.srv.Messages(), 2)
	assert.Zero(t, p.a.h.Count(`select count(*) from mailtest_env_integration where health_status is not null`), "a test is not a health check")
	p.a.requireNoSecretsAnywhere(t)
}
