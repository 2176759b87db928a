package mail

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"html"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/mail"
	"net/textproto"
	"strings"
	"time"
)

// ErrHeaderInjection is returned for a header value holding CR or LF.
var ErrHeaderInjection = errors.New("CR and LF are not allowed")

// CheckHeader refuses a value that would end its header line: a CR or LF
// lets whoever controls the value add headers (a Bcc) or a body.
func CheckHeader(v string) error {
	if strings.ContainsAny(v, "\r\n") {
		return ErrHeaderInjection
	}
	return nil
}

// ParseAddress checks a bare address ("user@example.com") and returns it.
func ParseAddress(s string) (string, error) {
	if err := CheckHeader(s); err != nil {
		return "", err
	}
	a, err := mail.ParseAddress(s)
	if err != nil || a.Name != "" || a.Address != s {
		return "", errors.New("want a plain address such as user@example.com")
	}
	return a.Address, nil
}

// TestHeader carries a test message's id.
const TestHeader = "X-StreamSpace-Test-Id"

// NewTestID returns a random id for a test message.
func NewTestID() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// TestMessage is the message a test sends.
type TestMessage struct {
	From, FromName, To string
	// Integration names what is being tested, in the subject and body.
	Integration string
	TestID      string
	Date        time.Time
}

// Subject is the test message's subject.
func (m TestMessage) Subject() string {
	return "StreamSpace email test " + m.TestID
}

// Bytes renders the message: headers, then a multipart/alternative body
// with a text and an HTML part, each carrying the test id. Every line ends
// in CRLF. The caller has checked each address and name with CheckHeader.
func (m TestMessage) Bytes() []byte {
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	text := fmt.Sprintf("This is a test message from StreamSpace for the email integration %q.\r\n\r\nTest id: %s\r\nSent: %s\r\n\r\nIf you received it, the integration can deliver mail. No reply is needed.\r\n",
		m.Integration, m.TestID, m.Date.UTC().Format(time.RFC1123Z))
	htmlPart := fmt.Sprintf("<!doctype html><html><body><p>This is a test message from StreamSpace for the email integration <b>%s</b>.</p><p>Test id: <code>%s</code><br>Sent: %s</p><p>If you received it, the integration can deliver mail. No reply is needed.</p></body></html>\r\n",
		html.EscapeString(m.Integration), m.TestID, m.Date.UTC().Format(time.RFC1123Z))
	for _, p := range []struct{ ctype, content string }{
		{"text/plain; charset=utf-8", text},
		{"text/html; charset=utf-8", htmlPart},
	} {
		w, _ := mw.CreatePart(textproto.MIMEHeader{
			"Content-Type":              {p.ctype},
			"Content-Transfer-Encoding": {"quoted-printable"},
		})
		qw := quotedprintable.NewWriter(w)
		_, _ = qw.Write([]byte(p.content))
		_ = qw.Close()
	}
	_ = mw.Close()

	from := (&mail.Address{Name: m.FromName, Address: m.From}).String()
	var out bytes.Buffer
	for _, h := range [][2]string{
		{"From", from},
		{"To", (&mail.Address{Address: m.To}).String()},
		{"Subject", mime.QEncoding.Encode("utf-8", m.Subject())},
		{"Date", m.Date.Format(time.RFC1123Z)},
		{"Message-ID", "<" + m.TestID + "@streamspace.test-message>"},
		{"MIME-Version", "1.0"},
		{"Auto-Submitted", "auto-generated"},
		{"X-Auto-Response-Suppress", "All"},
		{TestHeader, m.TestID},
		{"Content-Type", "multipart/alternative; boundary=" + mw.Boundary()},
	} {
		out.WriteString(h[0] + ": " + h[1] + "\r\n")
	}
	out.WriteString("\r\n")
	out.Write(body.Bytes())
	return out.Bytes()
}
