package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/streamspace-dev/functions/events"
	"github.com/streamspace-dev/functions/shared/authn"
)

// tokenTTL is how long the printed development tokens are valid.
const tokenTTL = 12 * time.Hour

// Demo requests the printed commands make, each of them exactly as sent.
const (
	demoTagsBody  = `{"operation":"add","sessionIds":["demo-1"],"tags":["dev"]}`
	demoTagsQuery = "/api/v1/search/filters/tags?limit=10"
	demoEventID   = "demo-template-updated-1"
	demoEventData = `{"templateId":"demo","change":"updated"}`
	demoMailBody  = `{"recipient":"dev@streamspace.local"}`
	// demoPolicyBody scales the demo warm pool with one replica per
	// session of its template, up to 5.
	// demoSnapshotBody names the demo snapshot; snapshotIDScript is the sed
	// script that takes its id from the answer, so no JSON tool is needed.
	demoSnapshotBody = `{"name":"demo","description":"home of the demo session"}`
	snapshotIDScript = `s/.*"snapshotId":"\([^"]*\)".*/\1/p`
	demoPolicyBody   = `{"name":"demo-pool","target_type":"template","target_id":"firefox","min_replicas":0,"max_replicas":5,"metric_type":"sessions","target_metric_value":1,"cooldown_period_seconds":0,"scale_down_policy":{"stabilization_seconds":0}}`
)

// snapshotStatus is the banner's snapshots line.
func (r *runner) snapshotStatus() string {
	if r.Snapshots == nil {
		return "off"
	}
	return r.Snapshots.Status
}

// autoscaleStatus is the banner's autoscale line.
func (r *runner) autoscaleStatus() string {
	if r.Kube == nil {
		return "off: the run was started with LOCAL_KUBE=false"
	}
	return r.Kube.Status
}

// tokens mints the development tokens: dev (admin) and alice (user).
func (r *runner) tokens() (admin, user string, err error) {
	if admin, err = r.Issuer.Token(demoOwner, authn.Admin, Audience, tokenTTL); err != nil {
		return "", "", err
	}
	if user, err = r.Issuer.Token(demoUser, authn.User, Audience, tokenTTL); err != nil {
		return "", "", err
	}
	return admin, user, nil
}

// banner prints the ready line, the development tokens and commands that
// work as printed.
func (r *runner) banner(w io.Writer) error {
	admin, user, err := r.tokens()
	if err != nil {
		return err
	}
	overlay := r.Overlay
	if wd, err := os.Getwd(); err == nil {
		if rel, err := filepath.Rel(wd, overlay); err == nil && !strings.HasPrefix(rel, "..") {
			overlay = rel
		}
	}
	seeded := ""
	if r.LoadedSchema {
		seeded += ", StreamSpace's schema loaded"
	}
	if r.Seeded {
		seeded += ", demo rows seeded"
	}
	eventAuth := "off (the overlay's Triggers name no subscriber audience)"
	if r.EventAudience != "" {
		eventAuth = fmt.Sprintf("each delivery carries its Trigger's token from the local issuer, audience %s", r.EventAudience)
	}
	var pings []string
	for _, p := range r.Manifests.PingSources {
		pings = append(pings, fmt.Sprintf("%s/%s (%s)", p.Namespace, p.Name, p.Spec.Schedule))
	}
	b := r.Manifests.Brokers[0]
	lines := []string{
		fmt.Sprintf("streamspace-local ready: function %s, broker %s/", r.FunctionURL, r.BrokerURL),
		fmt.Sprintf("  database      %s, schema version %d%s", r.Database, r.Schema, seeded),
		fmt.Sprintf("  broker        %s/%s from %s", b.Namespace, b.Name, overlay),
		fmt.Sprintf("  triggers      %s", list(r.Broker.Triggers())),
		fmt.Sprintf("  pingsources   %s", list(pings)),
		fmt.Sprintf("  dead letters  %s", r.DeadLetters),
		fmt.Sprintf("  issuer        %s (JWKS %s%s), audience %s", r.Issuer.URL(), r.BrokerURL, jwksPath, Audience),
		fmt.Sprintf("  event auth    %s", eventAuth),
		fmt.Sprintf("  mail          %s", r.mailLine()),
		fmt.Sprintf("  autoscale     %s", r.autoscaleStatus()),
		fmt.Sprintf("  snapshots     %s", r.snapshotStatus()),
		"",
		fmt.Sprintf("Development tokens, valid %dh:", int(tokenTTL.Hours())),
		fmt.Sprintf("  %s (admin): %s", demoOwner, admin),
		fmt.Sprintf("  %s (user): %s", demoUser, user),
		"",
		fmt.Sprintf("Add the tag dev to session %s (as %s):", demoSession, demoOwner),
		fmt.Sprintf("  curl -sS -X POST %s/api/v1/batch/sessions/update-tags \\", r.FunctionURL),
		fmt.Sprintf("    -H 'Authorization: Bearer %s' \\", admin),
		fmt.Sprintf("    -H 'Content-Type: application/json' -d '%s'", demoTagsBody),
		"",
		"Popular catalog tags:",
		fmt.Sprintf("  curl -sS '%s%s' \\", r.FunctionURL, demoTagsQuery),
		fmt.Sprintf("    -H 'Authorization: Bearer %s'", admin),
		"",
		loginLine(r.Login),
		"",
		"Send an event into the broker (its Trigger delivers it to tags, which refreshes the popular tags):",
		fmt.Sprintf("  curl -sS -i -X POST %s/ \\", r.BrokerURL),
		fmt.Sprintf("    -H 'Ce-Specversion: 1.0' -H 'Ce-Id: %s' \\", demoEventID),
		fmt.Sprintf("    -H 'Ce-Type: %s' -H 'Ce-Source: %s' \\", events.TemplateUpdated, events.SourceOf("versioning")),
		fmt.Sprintf("    -H 'Content-Type: application/json' -d '%s'", demoEventData),
	}
	if r.Mail != nil && r.Mail.Env["SMTP_HOST"] != "" {
		lines = append(lines,
			"",
			fmt.Sprintf("Send a test email through the env integration (SMTP_* point at Mailpit, %s; read it at %s):", r.Mail.SMTP, r.Mail.Web),
			fmt.Sprintf("  curl -sS -X POST %s/api/v1/integrations/email/env/test \\", r.FunctionURL),
			fmt.Sprintf("    -H 'Authorization: Bearer %s' \\", admin),
			fmt.Sprintf("    -H 'Content-Type: application/json' -d '%s'", demoMailBody),
		)
	}
	if r.Kube != nil && r.Kube.cluster != nil {
		lines = append(lines,
			"",
			fmt.Sprintf("Scale the demo warm pool of template %s to its sessions (session demo-1: from 3 replicas to 1) with a policy, a dry run, then a real evaluation:", poolTemplate),
			fmt.Sprintf("  curl -sS -X POST %s/api/v1/scaling/autoscaling/policies \\", r.FunctionURL),
			fmt.Sprintf("    -H 'Authorization: Bearer %s' \\", admin),
			fmt.Sprintf("    -H 'Content-Type: application/json' -d '%s'", demoPolicyBody),
			fmt.Sprintf("  curl -sS -X POST '%s/api/v1/scaling/autoscaling/policies/1/evaluate?dryRun=true' -H 'Authorization: Bearer %s'", r.FunctionURL, admin),
			fmt.Sprintf("  curl -sS -X POST %s/api/v1/scaling/autoscaling/policies/1/evaluate -H 'Authorization: Bearer %s'", r.FunctionURL, admin),
		)
	}
	if r.Snapshots != nil && r.Snapshots.kubelet != nil {
		sessionURL := r.FunctionURL + "/api/v1/sessions/" + demoSession
		lines = append(lines,
			"",
			fmt.Sprintf("Snapshot session %s (as %s): its /config is %s; the first command keeps the snapshot's id in SNAPSHOT.", demoSession, demoOwner, r.Snapshots.Dir),
			fmt.Sprintf("  SNAPSHOT=$(curl -sS -X POST %s/snapshots \\", sessionURL),
			fmt.Sprintf("    -H 'Authorization: Bearer %s' \\", admin),
			fmt.Sprintf("    -H 'Content-Type: application/json' -d '%s' | sed -n '%s'); echo \"$SNAPSHOT\"", demoSnapshotBody, snapshotIDScript),
			"List the session's snapshots (wait for status available), change or delete files in its /config, restore the snapshot and follow the restore:",
			fmt.Sprintf("  curl -sS %s/snapshots -H 'Authorization: Bearer %s'", sessionURL, admin),
			fmt.Sprintf("  curl -sS -X POST %s/snapshots/$SNAPSHOT/restore -H 'Authorization: Bearer %s'", sessionURL, admin),
			fmt.Sprintf("  curl -sS %s/snapshots/$SNAPSHOT/restore/status -H 'Authorization: Bearer %s'", sessionURL, admin),
		)
	}
	lines = append(lines, "", "Stop with Ctrl-C.")
	_, err = io.WriteString(w, strings.Join(lines, "\n")+"\n")
	return err
}

func list(items []string) string {
	if len(items) == 0 {
		return "none"
	}
	return strings.Join(items, ", ")
}

// loginLine says how to log in through the auth function, or why not.
func loginLine(l *localLogin) string {
	if l == nil || l.LoginURL == "" {
		off := "off"
		if l != nil {
			off = l.Off
		}
		return "OpenID Connect login (the auth function): " + off
	}
	return "Log in through the auth function and Ory Hydra in a browser on this machine (pick oidc-admin or oidc-user;\n" +
		"the complete page stores the session in localStorage \"streamspace-auth\" as StreamSpace's UI does):\n  " + l.LoginURL
}

// mailLine describes the local mail server.
func (r *runner) mailLine() string {
	if r.Mail == nil {
		return "no Mailpit (scripts/tools mailpit builds it); the mailtest function has no env integration"
	}
	return fmt.Sprintf("Mailpit %s (SMTP %s), the mailtest env integration sends there", r.Mail.Web, r.Mail.SMTP)
}
