package function

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/jackc/pgx/v5"

	"github.com/streamspace-dev/functions/shared/db"
	mailer "github.com/streamspace-dev/functions/shared/mail"
	"github.com/streamspace-dev/functions/shared/runtime"
)

// checked is one integration's check result.
type checked struct {
	id     string
	status HealthStatus
	class  mailer.Class
	err    string
	// rotated is a new refresh token, sealed, to store.
	rotated string
}

// checkAll checks each integration without sending, at most concurrency
// at a time: EHLO, STARTTLS and AUTH, then QUIT, for SMTP; GetAccount for
// SES.
func (f *Function) checkAll(ctx context.Context, its []Integration) []checked {
	out := make([]checked, len(its))
	sem := make(chan struct{}, f.concurrency)
	var wg sync.WaitGroup
	for i, it := range its {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			out[i] = f.check(ctx, it)
		}()
	}
	wg.Wait()
	return out
}

func (f *Function) check(ctx context.Context, it Integration) checked {
	c := checked{id: it.ID, status: Unhealthy}
	if it.Settings.Provider == "" {
		// The row's config did not decode (enabledIntegrations kept the
		// reason).
		c.class, c.err = "invalid_config", it.Health.Error
		return c
	}
	s := it.Settings
	if limit := int(f.healthLimit / time.Second); s.TimeoutSeconds == 0 || s.TimeoutSeconds > limit {
		s.TimeoutSeconds = limit
	}
	res, rotated, err := f.prober.run(ctx, it.ID, s, nil)
	c.rotated = rotated
	if err != nil {
		c.class, c.err = "secrets_unavailable", err.Error()
		return c
	}
	if res.Success {
		c.status = Healthy
		return c
	}
	c.class, c.err = res.Class, res.Error()
	if res.Hint != "" {
		c.err += " (" + res.Hint + ")"
	}
	return c
}

// healthTick is the mail-health PingSource's handler: it checks every
// enabled email integration, the env one included when SMTP_HOST is set,
// stores each result, and reports a change of health
// (integration.health.changed, and a notification to each admin when one
// starts failing) once per transition.
func (f *Function) healthTick(ctx context.Context, e cloudevents.Event) (err error) {
	job := f.svc.Job("mail-health")
	job.Start()
	defer func() { job.Done(err) }()
	var its []Integration
	if env, ok := f.envIntegration(); ok {
		its = append(its, env)
	}
	err = db.Read(ctx, f.svc.Pool, func(tx pgx.Tx) error {
		rows, err := enabledIntegrations(ctx, tx)
		its = append(its, rows...)
		return err
	})
	if err != nil {
		return err
	}
	results := f.checkAll(ctx, its)
	changed, err := f.saveHealth(ctx, results)
	runtime.AddLogAttrs(ctx, slog.Int("integrationsChecked", len(results)), slog.Int("healthChanged", changed))
	return err
}

// saveHealth stores results and emits the transitions, in one unit of
// work; it returns how many changed. The previous health of each
// integration, a row's or env's, is read locked in that unit of work, so
// instances that tick at once report each transition once.
func (f *Function) saveHealth(ctx context.Context, results []checked) (int, error) {
	if len(results) == 0 {
		return 0, nil
	}
	ids := make([]int32, 0, len(results))
	statuses := make([]string, 0, len(results))
	classes := make([]string, 0, len(results))
	errors := make([]string, 0, len(results))
	var env *checked
	for i, r := range results {
		if r.id == envIntegrationID {
			env = &results[i]
			continue
		}
		n, err := strconv.ParseInt(r.id, 10, 32)
		if err != nil {
			continue
		}
		ids = append(ids, int32(n))
		statuses = append(statuses, string(r.status))
		classes = append(classes, string(r.class))
		errors = append(errors, r.err)
	}
	changed := 0
	err := f.svc.Commit(ctx, func(tx pgx.Tx) ([]cloudevents.Event, error) {
		changed = 0
		previous := map[string]HealthStatus{}
		if len(ids) > 0 {
			if err := lockRowsHealth(ctx, tx, ids, previous); err != nil {
				return nil, err
			}
			if _, err := tx.Exec(ctx, saveHealthSQL, ids, statuses, classes, errors); err != nil {
				return nil, db.Classify(fmt.Errorf("save health: %w", err))
			}
		}
		// The env record is locked after the rows, in every tick, so two
		// ticks never wait for each other in opposite orders.
		if env != nil {
			prev, err := lockEnvHealth(ctx, tx)
			if err != nil {
				return nil, err
			}
			previous[envIntegrationID] = prev
			if err := saveEnvHealth(ctx, tx, *env); err != nil {
				return nil, err
			}
		}
		for _, r := range results {
			if r.id == envIntegrationID {
				// Its password comes from SMTP_*: nothing rotates.
				continue
			}
			if err := storeRotated(ctx, tx, r.id, r.rotated); err != nil {
				return nil, err
			}
		}
		var out []cloudevents.Event
		var failing []checked
		for _, r := range results {
			prev, ok := previous[r.id]
			if !ok || prev == r.status {
				continue
			}
			changed++
			e, err := healthChanged(r.id, r.status, prev, r.class)
			if err != nil {
				return nil, err
			}
			out = append(out, e)
			if r.status == Unhealthy {
				failing = append(failing, r)
			}
		}
		if len(failing) > 0 {
			if err := notifyAdmins(ctx, tx, failing); err != nil {
				return nil, err
			}
		}
		return out, nil
	})
	return changed, err
}

// lockRowsHealth reads the stored health of the rows ids into previous,
// locking them for the transaction.
func lockRowsHealth(ctx context.Context, tx pgx.Tx, ids []int32, previous map[string]HealthStatus) error {
	rows, err := tx.Query(ctx, lockHealthSQL, ids)
	if err != nil {
		return db.Classify(fmt.Errorf("lock integrations: %w", err))
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		var status string
		if err := rows.Scan(&id, &status); err != nil {
			return err
		}
		previous[strconv.FormatInt(id, 10)] = HealthStatus(status)
	}
	if err := rows.Err(); err != nil {
		return db.Classify(fmt.Errorf("lock integrations: %w", err))
	}
	return nil
}

// notifyAdmins writes one StreamSpace notification per admin for each
// integration that started failing.
func notifyAdmins(ctx context.Context, tx pgx.Tx, failing []checked) error {
	rows, err := tx.Query(ctx, adminsSQL)
	if err != nil {
		return db.Classify(fmt.Errorf("list admins: %w", err))
	}
	admins, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return db.Classify(fmt.Errorf("list admins: %w", err))
	}
	if len(admins) == 0 {
		return nil
	}
	for _, r := range failing {
		data, err := json.Marshal(map[string]string{"integrationId": r.id, "errorClass": string(r.class)})
		if err != nil {
			return err
		}
		title := "Email integration " + r.id + " is failing"
		message := "The periodic check of email integration " + r.id + " failed: " + r.err
		if _, err := tx.Exec(ctx, notifySQL, admins, title, message, data); err != nil {
			return db.Classify(fmt.Errorf("notify admins: %w", err))
		}
	}
	return nil
}
