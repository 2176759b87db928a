package function_test

import (
	"context"
	"encoding/json"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	function "github.com/streamspace-dev/functions/functions/mailtest"
	mailer "github.com/streamspace-dev/functions/shared/mail"
	"github.com/streamspace-dev/functions/shared/secretbox"
	"github.com/streamspace-dev/functions/shared/smtptest"
)

func percentiles(b *testing.B, unit string, d []float64) {
	if len(d) == 0 {
		return
	}
	sort.Float64s(d)
	b.ReportMetric(d[len(d)/2], "p50-"+unit)
	b.ReportMetric(d[min(len(d)-1, len(d)*99/100)], "p99-"+unit)
}

// BenchmarkTestRoute is POST …/test against Mailpit on loopback, STARTTLS
// with AUTH PLAIN, the rate limit raised: p50 and p99 of the whole route
// (route-ms) and of the SMTP conversation inside it as the result times
// it (smtp-ms); the difference is HTTP, the database reads and writes and
// the event. shared/mail's BenchmarkSMTPRun and BenchmarkGoSMTPAlone
// compare the conversation with go-smtp's client alone.
func BenchmarkTestRoute(b *testing.B) {
	w := start(b, map[string]string{"MAIL_TEST_RATE_LIMIT": "1000000"})
	leaf := w.ca.Issue(b, smtptest.LeafOptions{Hosts: []string{"127.0.0.1"}})
	mp := smtptest.StartMailpit(b, smtptest.MailpitOptions{Leaf: &leaf, Users: map[string]string{"alice": smtpPassword}})
	v := w.create(b, smtpConfig("mailpit", mp.Host, mp.Port, smtpPassword))
	var route, conversation []float64
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		status, res, raw := w.test(b, v.ID, nil)
		route = append(route, float64(time.Since(start).Microseconds())/1000)
		if status != 200 {
			b.Fatalf("%d %s", status, raw)
		}
		conversation = append(conversation, res.Result.DurationMs)
	}
	b.StopTimer()
	percentiles(b, "route-ms", route)
	percentiles(b, "smtp-ms", conversation)
}

// BenchmarkHealthTick500 is one health tick over 500 enabled integrations
// against loopback go-smtp servers that hold every reply back 20 ms
// (STARTTLS and AUTH PLAIN): tick-s is the tick's time, peak-rss-MiB the
// process's peak resident memory (the harness and PostgreSQL's client
// included).
func BenchmarkHealthTick500(b *testing.B) {
	w := start(b, nil)
	var servers []string
	for range 4 {
		host, port, _ := w.faultServer(b, smtptest.Fault{Delay: 20 * time.Millisecond})
		servers = append(servers, host+":"+strconv.Itoa(port))
	}
	keys, err := secretbox.Load(w.keysDir, "k1")
	require.NoError(b, err)
	sealed, err := keys.Seal("integrations.config.secrets.password", smtpPassword)
	require.NoError(b, err)
	for i := range 500 {
		host, port := smtptest.HostPort(b, servers[i%len(servers)])
		cfg, err := json.Marshal(function.Settings{
			Provider: function.ProviderSMTP, Host: host, Port: port, Security: mailer.StartTLS, Auth: mailer.AuthPlain,
			Username: "alice", From: "noreply@streamspace.test", TimeoutSeconds: 30,
			Secrets: map[string]string{function.SecretPassword: sealed},
		})
		require.NoError(b, err)
		_, err = w.h.Pool.Exec(context.Background(), `insert into integrations (type, name, config) values ('email', $1, $2)`, "bench-"+strconv.Itoa(i), cfg)
		require.NoError(b, err)
	}
	var ticks []float64
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		w.ping(b)
		ticks = append(ticks, time.Since(start).Seconds())
	}
	b.StopTimer()
	if n := w.h.Count(`select count(*) from integrations where health_status = 'healthy'`); n != 500 {
		b.Fatalf("%d of 500 healthy:\n%s", n, w.h.Logs.String())
	}
	sort.Float64s(ticks)
	b.ReportMetric(ticks[len(ticks)/2], "tick-s")
	b.ReportMetric(peakRSS(b), "peak-rss-MiB")
}

// peakRSS reads the process's peak resident set (VmHWM) in MiB.
func peakRSS(b *testing.B) float64 {
	raw, err := os.ReadFile("/proc/self/status")
	require.NoError(b, err)
	for _, line := range strings.Split(string(raw), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, err := strconv.ParseFloat(f[1], 64)
			require.NoError(b, err)
			return kb / 1024
		}
	}
	return 0
}
