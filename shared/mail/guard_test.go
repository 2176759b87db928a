package mail

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// answers is a resolver whose answer changes with every lookup, as a
// rebinding attacker's DNS server does.
type answers struct {
	mu    sync.Mutex
	calls int
	seq   [][]netip.Addr
}

func (a *answers) LookupNetIP(context.Context, string, string) ([]netip.Addr, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := a.seq[min(a.calls, len(a.seq)-1)]
	a.calls++
	return out, nil
}

func TestGuardRefusesEachBlockedRange(t *testing.T) {
	tests := []struct {
		name string
		addr string
	}{
		{"IPv4 loopback", "127.0.0.1"},
		{"IPv4 loopback, elsewhere in 127/8", "127.3.2.1"},
		{"IPv6 loopback", "::1"},
		{"RFC 1918 10/8", "10.1.2.3"},
		{"RFC 1918 172.16/12", "172.20.0.1"},
		{"RFC 1918 192.168/16", "192.168.1.1"},
		{"link-local", "169.254.10.10"},
		{"cloud metadata", "169.254.169.254"},
		{"CGNAT", "100.64.0.1"},
		{"IPv6 unique local", "fd12:3456::1"},
		{"IPv6 link-local", "fe80::1"},
		{"IPv4 multicast", "224.0.0.1"},
		{"IPv6 multicast", "ff02::1"},
		{"IPv4 unspecified", "0.0.0.0"},
		{"IPv6 unspecified", "::"},
		{"IPv4-mapped loopback", "::ffff:127.0.0.1"},
		{"broadcast", "255.255.255.255"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := netip.MustParseAddr(tc.addr)
			assert.True(t, Blocked(a))

			g := NewGuard("")
			_, err := g.Resolve(context.Background(), tc.addr)
			require.Error(t, err, "as an IP literal")
			assert.True(t, errors.Is(err, ErrBlocked))

			g.Resolver = &answers{seq: [][]netip.Addr{{netip.MustParseAddr("93.184.215.14"), a}}}
			_, err = g.Resolve(context.Background(), "mail.example.com")
			require.Error(t, err, "as one answer of a name's lookup")
			assert.True(t, errors.Is(err, ErrBlocked))
			assert.Equal(t, AddressBlocked, classifyError(StageDNS, err))

			g = NewGuard("mail.example.com, " + tc.addr)
			g.Resolver = &answers{seq: [][]netip.Addr{{a}}}
			got, err := g.Resolve(context.Background(), "mail.example.com")
			require.NoError(t, err, "an allowed host")
			assert.Equal(t, []netip.Addr{a}, got)
			_, err = g.Resolve(context.Background(), tc.addr)
			assert.NoError(t, err, "an allowed IP literal")
		})
	}
	assert.False(t, Blocked(netip.MustParseAddr("93.184.215.14")))
	assert.False(t, Blocked(netip.MustParseAddr("2606:2800:21f:cb07:6820:80da:af6b:8b2c")))
}

// TestGuardDialsTheVettedAddress: the name resolves to a public address
// when checked and to loopback afterwards; the Guard asks once and
// connects to what it checked, never to the second answer.
func TestGuardDialsTheVettedAddress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	accepted := make(chan struct{}, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- struct{}{}
			c.Close()
		}
	}()

	public := netip.MustParseAddr("203.0.113.7")
	r := &answers{seq: [][]netip.Addr{{public}, {netip.MustParseAddr("127.0.0.1")}}}
	var dialed []string
	errStop := errors.New("stopped before connecting")
	g := NewGuard("")
	g.Resolver = r
	g.Control = func(_, address string, _ syscall.RawConn) error {
		dialed = append(dialed, address)
		return errStop
	}
	_, err = g.DialContext(context.Background(), "tcp", fmt.Sprintf("rebind.example.com:%d", port))
	require.ErrorIs(t, err, errStop)
	assert.Equal(t, []string{netip.AddrPortFrom(public, uint16(port)).String()}, dialed)
	assert.Equal(t, 1, r.calls, "one lookup")
	select {
	case <-accepted:
		t.Fatal("the loopback listener was reached")
	default:
	}

	// The socket-level check holds even if a caller passes an address the
	// Guard did not vet.
	_, err = NewGuard("").DialAddrs(context.Background(), "x.example.com", []netip.Addr{netip.MustParseAddr("127.0.0.1")}, port)
	assert.ErrorIs(t, err, ErrBlocked)
}
