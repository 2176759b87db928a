package mail

import (
	"bytes"
	"context"
	"crypto/tls"
	"net"
	"sort"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/streamspace-dev/functions/shared/smtptest"
)

// latencies records each iteration's time and reports p50 and p99.
type latencies []time.Duration

func (l latencies) report(b *testing.B) {
	if len(l) == 0 {
		return
	}
	sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
	pct := func(p float64) float64 {
		return float64(l[min(len(l)-1, int(float64(len(l))*p))].Microseconds()) / 1000
	}
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
}

// mailpitBench is Mailpit with STARTTLS and AUTH, and a message for it.
func mailpitBench(b *testing.B) (*smtptest.Mailpit, *smtptest.CA, *Envelope) {
	ca := smtptest.NewCA(b, "bench CA")
	leaf := ca.Issue(b, smtptest.LeafOptions{Hosts: []string{"127.0.0.1"}})
	mp := smtptest.StartMailpit(b, smtptest.MailpitOptions{Leaf: &leaf, Users: map[string]string{"alice": "bench-pass"}})
	m := TestMessage{From: "noreply@streamspace.test", To: "ops@example.com", Integration: "bench", TestID: NewTestID(), Date: time.Now()}
	return mp, ca, &Envelope{From: m.From, To: m.To, Message: m.Bytes()}
}

// BenchmarkSMTPRun is a test against Mailpit on loopback, STARTTLS with
// AUTH PLAIN, as the function runs it: traced, classified, guarded.
func BenchmarkSMTPRun(b *testing.B) {
	mp, ca, env := mailpitBench(b)
	s := SMTP{Host: mp.Host, Port: mp.Port, Security: StartTLS, Auth: AuthPlain, Username: "alice", Password: "bench-pass",
		RootCAs: ca.Pool, Guard: loopback(), Timeout: 30 * time.Second}
	var l latencies
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		res := s.Run(context.Background(), env)
		l = append(l, time.Since(start))
		if !res.Success {
			b.Fatalf("%+v", res)
		}
	}
	l.report(b)
}

// BenchmarkGoSMTPAlone is the same conversation with go-smtp's client and
// nothing else: the baseline BenchmarkSMTPRun is held to.
func BenchmarkGoSMTPAlone(b *testing.B) {
	mp, ca, env := mailpitBench(b)
	cfg := &tls.Config{ServerName: mp.Host, RootCAs: ca.Pool}
	var l latencies
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		conn, err := net.Dial("tcp", mp.SMTPAddr)
		if err != nil {
			b.Fatal(err)
		}
		c, err := smtp.NewClientStartTLS(conn, cfg)
		if err != nil {
			b.Fatal(err)
		}
		if err := c.Auth(sasl.NewPlainClient("", "alice", "bench-pass")); err != nil {
			b.Fatal(err)
		}
		if err := c.SendMail(env.From, []string{env.To}, bytes.NewReader(env.Message)); err != nil {
			b.Fatal(err)
		}
		if err := c.Quit(); err != nil {
			b.Fatal(err)
		}
		l = append(l, time.Since(start))
	}
	l.report(b)
}
