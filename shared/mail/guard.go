// Package mail sends and checks mail through a user-configured SMTP server
// or Amazon SES v2, recording each stage of the conversation (dns, connect,
// tls, ehlo, auth, mail, rcpt, data, quit) with its duration and the
// server's reply, and classifying a failure into a stable code with a
// one-line hint. Every connection it opens goes through a Guard, which
// refuses private, loopback and metadata addresses at dial time
// (docs/mail.md).
package mail

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ErrBlocked is the cause of a dial the Guard refused.
var ErrBlocked = errors.New("address not allowed")

// Resolver looks a host name up; *net.Resolver is one.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Guard dials only addresses on the public internet, unless the host is on
// the operator's allow-list. It resolves the host once, vets every address
// and connects to a vetted address, so a DNS answer that changes between
// the check and the connect (DNS rebinding) gets nothing; the dialer's
// Control hook checks the address again at the socket.
type Guard struct {
	// Allowed are host names and IP literals (lower case) that may resolve
	// to or be any address, such as an in-cluster relay.
	Allowed map[string]bool
	// Resolver is the DNS client; nil is net.DefaultResolver.
	Resolver Resolver
	// Control, when set, runs after the Guard's own check on every socket,
	// with the address about to be connected (tests observe dials with it).
	Control func(network, address string, c syscall.RawConn) error
}

// NewGuard returns a Guard whose allow-list is hosts (comma-separated, as
// MAIL_ALLOWED_HOSTS holds it).
func NewGuard(hosts string) *Guard {
	g := &Guard{Allowed: map[string]bool{}}
	for _, h := range strings.Split(hosts, ",") {
		if h = strings.ToLower(strings.TrimSpace(h)); h != "" {
			g.Allowed[strings.TrimSuffix(h, ".")] = true
		}
	}
	return g
}

// blockedPrefixes are the ranges no user-supplied host may reach.
var blockedPrefixes = func() []netip.Prefix {
	var out []netip.Prefix
	for _, s := range []string{
		"0.0.0.0/8",         // "this network", and 0.0.0.0 itself
		"10.0.0.0/8",        // RFC 1918
		"100.64.0.0/10",     // CGNAT
		"127.0.0.0/8",       // loopback
		"169.254.0.0/16",    // link-local, including 169.254.169.254 (cloud metadata)
		"172.16.0.0/12",     // RFC 1918
		"192.0.0.0/24",      // IETF protocol assignments
		"192.168.0.0/16",    // RFC 1918
		"198.18.0.0/15",     // benchmarking
		"224.0.0.0/4",       // multicast
		"240.0.0.0/4",       // reserved, and 255.255.255.255
		"::/128",            // unspecified
		"::1/128",           // loopback
		"fc00::/7",          // unique local
		"fe80::/10",         // link-local
		"ff00::/8",          // multicast
		"64:ff9b::/96",      // NAT64, which would reach IPv4 ranges above
		"2001:db8::/32",     // documentation
		"fd00:ec2::254/128", // EC2 metadata over IPv6 (inside fc00::/7, named for the reader)
	} {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}()

// Blocked reports whether a user-supplied host may not reach addr.
func Blocked(addr netip.Addr) bool {
	addr = addr.Unmap()
	if !addr.IsValid() || addr.IsUnspecified() || addr.IsLoopback() || addr.IsMulticast() ||
		addr.IsLinkLocalUnicast() || addr.IsLinkLocalMulticast() || addr.IsPrivate() {
		return true
	}
	for _, p := range blockedPrefixes {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// allowed reports whether host is on the allow-list.
func (g *Guard) allowed(host string) bool {
	return g.Allowed[strings.TrimSuffix(strings.ToLower(host), ".")]
}

// BlockedError says which address of which host the Guard refused.
type BlockedError struct {
	Host string
	Addr netip.Addr
}

func (e *BlockedError) Error() string {
	return fmt.Sprintf("%s resolves to %s, a private, loopback, link-local or reserved address (MAIL_ALLOWED_HOSTS can allow the host)", e.Host, e.Addr)
}

func (e *BlockedError) Unwrap() error { return ErrBlocked }

// Resolve returns host's addresses, or host itself when it is an IP
// literal. Unless host is allowed, any blocked address fails the whole
// lookup: a host that resolves to a mix is refused outright.
func (g *Guard) Resolve(ctx context.Context, host string) ([]netip.Addr, error) {
	var addrs []netip.Addr
	if a, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{a}
	} else {
		r := g.Resolver
		if r == nil {
			r = net.DefaultResolver
		}
		if addrs, err = r.LookupNetIP(ctx, "ip", host); err != nil {
			return nil, err
		}
		if len(addrs) == 0 {
			return nil, &net.DNSError{Err: "no addresses", Name: host, IsNotFound: true}
		}
	}
	if g.allowed(host) {
		return addrs, nil
	}
	for _, a := range addrs {
		if Blocked(a) {
			return nil, &BlockedError{Host: host, Addr: a.Unmap()}
		}
	}
	return addrs, nil
}

// DialAddrs connects to the first of addrs that answers on port. Only
// addresses Resolve returned for host should be passed.
func (g *Guard) DialAddrs(ctx context.Context, host string, addrs []netip.Addr, port int) (net.Conn, error) {
	allow := g.allowed(host)
	d := net.Dialer{Control: func(network, address string, c syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return fmt.Errorf("dial %s: %w", address, ErrBlocked)
		}
		if !allow && Blocked(ap.Addr()) {
			return &BlockedError{Host: host, Addr: ap.Addr().Unmap()}
		}
		if g.Control != nil {
			return g.Control(network, address, c)
		}
		return nil
	}}
	var errs []error
	for _, a := range addrs {
		conn, err := d.DialContext(ctx, "tcp", netip.AddrPortFrom(a.Unmap(), uint16(port)).String())
		if err == nil {
			return conn, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, errors.Join(errs...)
}

// DialContext resolves and dials addr ("host:port") through the Guard; it
// is the dial function of HTTPClient.
func (g *Guard) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return nil, fmt.Errorf("dial %s: bad port", addr)
	}
	addrs, err := g.Resolve(ctx, host)
	if err != nil {
		return nil, err
	}
	return g.DialAddrs(ctx, host, addrs, port)
}

// HTTPClient returns a client whose every connection goes through the
// Guard and never through a proxy from the environment: the OAuth2 token
// endpoint and an SES endpoint override are user-supplied hosts too.
func (g *Guard) HTTPClient(timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DialContext:         g.DialContext,
			TLSHandshakeTimeout: timeout,
			MaxIdleConns:        10,
			IdleConnTimeout:     30 * time.Second,
			ForceAttemptHTTP2:   true,
		},
		// A redirect is followed only through the same guarded transport;
		// a bounded number of them.
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 3 {
				return errors.New("too many redirects")
			}
			return nil
		},
	}
}
