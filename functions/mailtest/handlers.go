package function

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/jackc/pgx/v5"

	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/errs"
	mailer "github.com/streamspace-dev/functions/shared/mail"
	"github.com/streamspace-dev/functions/shared/runtime"
)

// IntegrationView is an integration as the API shows it: its settings
// without any secret, with a flag saying which secrets are stored.
type IntegrationView struct {
	ID            string     `json:"id"`
	Type          string     `json:"type"`
	Name          string     `json:"name"`
	Description   string     `json:"description"`
	Enabled       bool       `json:"enabled"`
	ReadOnly      bool       `json:"readOnly"`
	Config        ConfigView `json:"config"`
	LastTestAt    *time.Time `json:"lastTestAt"`
	LastSuccessAt *time.Time `json:"lastSuccessAt"`
	Health        Health     `json:"health"`
	CreatedBy     string     `json:"createdBy,omitempty"`
	CreatedAt     *time.Time `json:"createdAt,omitempty"`
	UpdatedAt     *time.Time `json:"updatedAt,omitempty"`
}

// ConfigView is Settings without Secrets, and the flags.
type ConfigView struct {
	Provider         Provider          `json:"provider"`
	Preset           string            `json:"preset,omitempty"`
	Host             string            `json:"host,omitempty"`
	Port             int               `json:"port,omitempty"`
	Security         mailer.Security   `json:"security,omitempty"`
	AllowInsecure    bool              `json:"allowInsecure"`
	Auth             mailer.AuthMethod `json:"auth,omitempty"`
	Username         string            `json:"username,omitempty"`
	PasswordSet      bool              `json:"passwordSet"`
	From             string            `json:"from"`
	FromName         string            `json:"fromName,omitempty"`
	DefaultRecipient string            `json:"defaultRecipient,omitempty"`
	TimeoutSeconds   int               `json:"timeoutSeconds"`
	OAuth2           *OAuth2View       `json:"oauth2,omitempty"`
	SES              *SESView          `json:"ses,omitempty"`
	// Hints are the preset's provider-specific advice.
	Hints []string `json:"hints,omitempty"`
}

// OAuth2View is the grant without its secrets.
type OAuth2View struct {
	OAuth2Settings
	ClientSecretSet bool `json:"clientSecretSet"`
	RefreshTokenSet bool `json:"refreshTokenSet"`
}

// SESView is the SES account without its keys.
type SESView struct {
	SESSettings
	AccessKeyIDSet     bool `json:"accessKeyIdSet"`
	SecretAccessKeySet bool `json:"secretAccessKeySet"`
}

func view(it Integration) IntegrationView {
	s := it.Settings
	has := func(k string) bool { return s.Secrets[k] != "" }
	c := ConfigView{
		Provider: s.Provider, Preset: s.Preset, Host: s.Host, Port: s.Port, Security: s.Security, AllowInsecure: s.AllowInsecure,
		Auth: s.Auth, Username: s.Username, PasswordSet: has(SecretPassword), From: s.From, FromName: s.FromName,
		DefaultRecipient: s.DefaultRecipient, TimeoutSeconds: s.TimeoutSeconds, Hints: Presets[s.Preset].Hints,
	}
	if s.OAuth2 != nil {
		c.OAuth2 = &OAuth2View{OAuth2Settings: *s.OAuth2, ClientSecretSet: has(SecretClientSecret), RefreshTokenSet: has(SecretRefreshToken)}
	}
	if s.SES != nil {
		c.SES = &SESView{SESSettings: *s.SES, AccessKeyIDSet: has(SecretSESAccessKeyID), SecretAccessKeySet: has(SecretSESSecretKey)}
	}
	return IntegrationView{
		ID: it.ID, Type: integrationTypeEmail, Name: it.Name, Description: it.Description, Enabled: it.Enabled,
		ReadOnly: it.ID == envIntegrationID, Config: c, LastTestAt: it.LastTestAt, LastSuccessAt: it.LastSuccess,
		Health: it.Health, CreatedBy: it.CreatedBy, CreatedAt: it.CreatedAt, UpdatedAt: it.UpdatedAt,
	}
}

// ListResult is the answer of GET …/integrations/email.
type ListResult struct {
	Integrations []IntegrationView `json:"integrations"`
	Count        int               `json:"count"`
}

// manager refuses a caller who is neither an operator nor an admin: email
// integrations hold credentials for the whole installation.
func manager(who authn.Identity) error {
	if who.Role == authn.Admin || who.Role == authn.Operator {
		return nil
	}
	return errs.E(errs.Forbidden, "managing email integrations needs the operator or admin role")
}

func pathID(r *http.Request) (string, error) { return integrationID(r.PathValue("id")) }

func readOnly(id string) error {
	if id == envIntegrationID {
		return errs.E(errs.Conflict, "the env integration is read-only: it comes from the SMTP_* variables of the function's Secret")
	}
	return nil
}

func (f *Function) list(w http.ResponseWriter, r *http.Request, who authn.Identity) error {
	if err := manager(who); err != nil {
		return err
	}
	var rows []Integration
	env, hasEnv := f.envIntegration()
	err := db.Read(r.Context(), f.svc.Pool, func(tx pgx.Tx) error {
		if hasEnv {
			if err := envRecord(r.Context(), tx, &env); err != nil {
				return err
			}
		}
		var err error
		rows, err = listIntegrations(r.Context(), tx)
		return err
	})
	if err != nil {
		return db.Classify(err)
	}
	res := ListResult{Integrations: []IntegrationView{}}
	if hasEnv {
		res.Integrations = append(res.Integrations, view(env))
	}
	for _, it := range rows {
		res.Integrations = append(res.Integrations, view(it))
	}
	res.Count = len(res.Integrations)
	runtime.WriteJSON(w, http.StatusOK, res)
	return nil
}

func (f *Function) get(w http.ResponseWriter, r *http.Request, who authn.Identity) error {
	if err := manager(who); err != nil {
		return err
	}
	id, err := pathID(r)
	if err != nil {
		return err
	}
	it, err := f.load(r, id)
	if err != nil {
		return err
	}
	runtime.WriteJSON(w, http.StatusOK, view(it))
	return nil
}

// load reads an integration, env included (with its stored record).
func (f *Function) load(r *http.Request, id string) (Integration, error) {
	if id == envIntegrationID {
		env, ok := f.envIntegration()
		if !ok {
			return Integration{}, errs.E(errs.NotFound, "email integration env not found: SMTP_HOST is not set")
		}
		err := db.Read(r.Context(), f.svc.Pool, func(tx pgx.Tx) error { return envRecord(r.Context(), tx, &env) })
		return env, err
	}
	var it Integration
	err := db.Read(r.Context(), f.svc.Pool, func(tx pgx.Tx) error {
		var err error
		it, err = getIntegration(r.Context(), tx, id, false)
		return err
	})
	return it, err
}

func (f *Function) create(w http.ResponseWriter, r *http.Request, who authn.Identity) error {
	if err := manager(who); err != nil {
		return err
	}
	var req IntegrationRequest
	if err := runtime.DecodeJSON(r, &req); err != nil {
		return err
	}
	in, err := req.Validate()
	if err != nil {
		return err
	}
	if err := f.prober.sealSecrets(in.Secrets, nil, &in.Settings); err != nil {
		return err
	}
	var it Integration
	err = f.svc.Commit(r.Context(), func(tx pgx.Tx) ([]cloudevents.Event, error) {
		var err error
		it, err = insertIntegration(r.Context(), tx, in, who.Subject)
		return nil, err
	})
	if err != nil {
		return fmt.Errorf("create email integration: %w", err)
	}
	runtime.AddLogAttrs(r.Context(), slog.String("integrationId", it.ID))
	runtime.WriteJSON(w, http.StatusCreated, view(it))
	return nil
}

func (f *Function) update(w http.ResponseWriter, r *http.Request, who authn.Identity) error {
	id, err := editable(r, who)
	if err != nil {
		return err
	}
	var req IntegrationRequest
	if err := runtime.DecodeJSON(r, &req); err != nil {
		return err
	}
	in, err := req.Validate()
	if err != nil {
		return err
	}
	var it Integration
	err = f.svc.Commit(r.Context(), func(tx pgx.Tx) ([]cloudevents.Event, error) {
		old, err := getIntegration(r.Context(), tx, id, true)
		if err != nil {
			return nil, err
		}
		// An omitted secret keeps the stored one; every secret sealed
		// with a retired key is sealed again with the current one.
		if err := f.prober.sealSecrets(in.Secrets, f.reseal(id, old.Settings.Secrets), &in.Settings); err != nil {
			return nil, err
		}
		it, err = updateIntegration(r.Context(), tx, id, in)
		return nil, err
	})
	if err != nil {
		return fmt.Errorf("update email integration %s: %w", id, err)
	}
	runtime.WriteJSON(w, http.StatusOK, view(it))
	return nil
}

// editable is the id of the integration an update or a delete names, once
// the caller may manage integrations and the id is not the read-only env one.
func editable(r *http.Request, who authn.Identity) (string, error) {
	if err := manager(who); err != nil {
		return "", err
	}
	id, err := pathID(r)
	if err != nil {
		return "", err
	}
	return id, readOnly(id)
}

// reseal returns stored with every value sealed under an old key sealed
// again under the current one; a value that no longer opens stays as it
// is (and the next test says so).
func (f *Function) reseal(id string, stored map[string]string) map[string]string {
	out := make(map[string]string, len(stored))
	for name, sealed := range stored {
		out[name] = sealed
		if f.prober.keys == nil || !f.prober.keys.Stale(sealed) {
			continue
		}
		plain, err := f.prober.keys.Open(secretPurposePrefix+name, sealed)
		if err != nil {
			f.svc.Log.Warn("stored secret does not open; left as it is", "integrationId", id, "secret", name, "error", err.Error())
			continue
		}
		if again, err := f.prober.keys.Seal(secretPurposePrefix+name, plain); err == nil {
			out[name] = again
		}
	}
	return out
}

func (f *Function) remove(w http.ResponseWriter, r *http.Request, who authn.Identity) error {
	id, err := editable(r, who)
	if err != nil {
		return err
	}
	err = f.svc.Commit(r.Context(), func(tx pgx.Tx) ([]cloudevents.Event, error) {
		return nil, deleteIntegration(r.Context(), tx, id)
	})
	if err != nil {
		return fmt.Errorf("delete email integration %s: %w", id, err)
	}
	runtime.WriteJSON(w, http.StatusOK, map[string]string{"message": "Integration deleted successfully", "id": id})
	return nil
}

// TestResult is the answer of the test route, StreamSpace's shape: 200
// {success, message, result} or 400 {success, error, message, result}.
type TestResult struct {
	Success bool          `json:"success"`
	Error   string        `json:"error,omitempty"`
	Message string        `json:"message"`
	Result  mailer.Result `json:"result"`
}

func (f *Function) test(w http.ResponseWriter, r *http.Request, who authn.Identity) error {
	if err := manager(who); err != nil {
		return err
	}
	id, err := pathID(r)
	if err != nil {
		return err
	}
	var req TestRequest
	if r.ContentLength != 0 {
		if err := runtime.DecodeJSON(r, &req); err != nil {
			return err
		}
	}
	recipient, err := req.Validate()
	if err != nil {
		return err
	}
	it, err := f.load(r, id)
	if err != nil {
		return err
	}
	if recipient == "" {
		recipient = it.Settings.DefaultRecipient
	}
	if recipient == "" {
		if recipient, err = f.callerEmail(r, who); err != nil {
			return err
		}
	}
	if wait, ok := f.limiter.allow(id, time.Now()); !ok {
		w.Header().Set("Retry-After", strconv.Itoa(int(wait.Round(time.Second)/time.Second)))
		runtime.WriteJSON(w, http.StatusTooManyRequests, map[string]string{
			"error": "rate_limited", "code": "rate_limited",
			"message": fmt.Sprintf("at most %d tests of an integration per minute; try again in %s", f.limiter.limit, wait.Round(time.Second)),
		})
		return nil
	}

	msg := mailer.TestMessage{From: it.Settings.From, FromName: it.Settings.FromName, To: recipient, Integration: it.Name, TestID: mailer.NewTestID(), Date: time.Now()}
	res, rotated, err := f.prober.run(r.Context(), id, it.Settings, &mailer.Envelope{From: msg.From, To: msg.To, Message: msg.Bytes()})
	if err != nil {
		return err
	}
	res.TestID = msg.TestID
	out := TestResult{Success: res.Success, Result: res}
	if res.Success {
		out.Message = fmt.Sprintf("Test message %s sent to %s", msg.TestID, recipient)
	} else {
		out.Error = string(res.Class)
		out.Message = fmt.Sprintf("Test failed at %s: %s", res.FailedStage, res.Error())
		if res.Hint != "" {
			out.Message += " (" + res.Hint + ")"
		}
	}
	err = f.svc.Commit(r.Context(), func(tx pgx.Tx) ([]cloudevents.Event, error) {
		if id == envIntegrationID {
			if err := recordEnvTest(r.Context(), tx, res.Success); err != nil {
				return nil, err
			}
		} else {
			if err := recordTest(r.Context(), tx, id, res.Success); err != nil {
				return nil, err
			}
			if err := storeRotated(r.Context(), tx, id, rotated); err != nil {
				return nil, err
			}
		}
		e, err := tested(id, it.Settings.Provider, res, out.Message)
		return []cloudevents.Event{e}, err
	})
	if err != nil {
		return fmt.Errorf("record test of %s: %w", id, err)
	}
	runtime.AddLogAttrs(r.Context(), slog.String("integrationId", id), slog.String("testId", msg.TestID),
		slog.Bool("success", res.Success), slog.String("errorClass", string(res.Class)), slog.String("failedStage", string(res.FailedStage)))
	status := http.StatusOK
	if !res.Success {
		status = http.StatusBadRequest
	}
	runtime.WriteJSON(w, status, out)
	return nil
}

// callerEmail is the caller's address in users, the recipient when the
// request and the integration name none.
func (f *Function) callerEmail(r *http.Request, who authn.Identity) (string, error) {
	var email string
	err := db.Read(r.Context(), f.svc.Pool, func(tx pgx.Tx) error {
		return tx.QueryRow(r.Context(), `select coalesce(email, '') from users where id = $1`, who.Subject).Scan(&email)
	})
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return "", db.Classify(err)
	}
	if email == "" {
		return "", errs.E(errs.Invalid, "recipient: required (the integration has no defaultRecipient and your user has no email)")
	}
	return email, nil
}
