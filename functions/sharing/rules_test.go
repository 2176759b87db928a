package function

import (
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamspace-dev/functions/shared/access"
	"github.com/streamspace-dev/functions/shared/errs"
)

// TestCanRevoke covers every combination of the revoke rule's inputs. mine
// without found cannot happen (there is no share to be the sharer of) and
// is decided as not found.
func TestCanRevoke(t *testing.T) {
	tests := []struct {
		level access.Level
		found bool
		mine  bool
		want  revokeVerdict
	}{
		// No access: the template does not exist, whatever the share.
		{access.None, false, false, revokeHidden},
		{access.None, false, true, revokeHidden},
		{access.None, true, false, revokeHidden},
		{access.None, true, true, revokeHidden},
		{access.Read, false, false, revokeNoShare},
		{access.Read, false, true, revokeNoShare},
		{access.Read, true, false, revokeForbidden},
		{access.Read, true, true, revokeAllowed},
		{access.Write, false, false, revokeNoShare},
		{access.Write, false, true, revokeNoShare},
		{access.Write, true, false, revokeForbidden},
		{access.Write, true, true, revokeAllowed},
		{access.Manage, false, false, revokeNoShare},
		{access.Manage, false, true, revokeNoShare},
		{access.Manage, true, false, revokeAllowed},
		{access.Manage, true, true, revokeAllowed},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%s found=%t mine=%t", tc.level, tc.found, tc.mine), func(t *testing.T) {
			assert.Equal(t, tc.want, canRevoke(tc.level, tc.found, tc.mine))
		})
	}
}

func TestNotifies(t *testing.T) {
	tests := []struct {
		name     string
		outcome  Outcome
		previous string
		level    string
		want     bool
	}{
		{"new share", Created, "", "read", true},
		{"revoke", Revoked, "manage", "manage", true},
		{"raise read to write", Updated, "read", "write", true},
		{"raise read to manage", Updated, "read", "manage", true},
		{"raise write to manage", Updated, "write", "manage", true},
		{"lower manage to write", Updated, "manage", "write", false},
		{"lower manage to read", Updated, "manage", "read", false},
		{"lower write to read", Updated, "write", "read", false},
		{"from a level StreamSpace wrote that is not ours", Updated, "owner", "read", true},
		{"unchanged", Unchanged, "read", "read", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, notifies(tc.outcome, tc.previous, tc.level))
		})
	}
}

func ptr(s string) *string { return &s }

func TestShareRequestValidate(t *testing.T) {
	tests := []struct {
		name    string
		req     ShareRequest
		want    ShareInput
		wantErr string
	}{
		{name: "user", req: ShareRequest{SharedWithUserID: ptr("bob"), PermissionLevel: "read"},
			want: ShareInput{Grantee{GranteeUser, "bob"}, access.Read, "sharedWithUserId"}},
		{name: "team", req: ShareRequest{SharedWithTeamID: ptr("devs"), PermissionLevel: "manage"},
			want: ShareInput{Grantee{GranteeTeam, "devs"}, access.Manage, "sharedWithTeamId"}},
		{name: "short user name", req: ShareRequest{UserID: ptr("bob"), PermissionLevel: "write"},
			want: ShareInput{Grantee{GranteeUser, "bob"}, access.Write, "userId"}},
		{name: "short team name", req: ShareRequest{TeamID: ptr("devs"), PermissionLevel: "read"},
			want: ShareInput{Grantee{GranteeTeam, "devs"}, access.Read, "teamId"}},
		{name: "nobody", req: ShareRequest{PermissionLevel: "read"}, wantErr: "sharedWithUserId or sharedWithTeamId is required"},
		{name: "user and team", req: ShareRequest{SharedWithUserID: ptr("bob"), SharedWithTeamID: ptr("devs"), PermissionLevel: "read"},
			wantErr: "sharedWithUserId and sharedWithTeamId: give exactly one"},
		{name: "one user twice", req: ShareRequest{SharedWithUserID: ptr("bob"), UserID: ptr("bob"), PermissionLevel: "read"},
			wantErr: "sharedWithUserId and userId: give exactly one"},
		{name: "empty id", req: ShareRequest{TeamID: ptr(""), PermissionLevel: "read"}, wantErr: "teamId"},
		{name: "no level", req: ShareRequest{UserID: ptr("bob")}, wantErr: "permissionLevel is required"},
		{name: "bad level", req: ShareRequest{UserID: ptr("bob"), PermissionLevel: "root"}, wantErr: `permissionLevel "root"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.req.Validate()
			if tc.wantErr != "" {
				require.Error(t, err)
				assert.Equal(t, errs.Invalid, errs.KindOf(err))
				assert.Contains(t, errs.Message(err), tc.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestCursor(t *testing.T) {
	at := time.Date(2026, 11, 30, 7, 43, 4, 123456000, time.UTC)
	good := encodeCursor("t1", position{CreatedAt: at, ID: "a.b.c"})
	tests := []struct {
		name     string
		template string
		cursor   string
		want     position
		wantErr  bool
	}{
		{name: "round trip, dots in the id", template: "t1", cursor: good, want: position{CreatedAt: at, ID: "a.b.c"}},
		{name: "before the epoch", template: "t1", cursor: encodeCursor("t1", position{CreatedAt: time.Date(1960, 1, 1, 0, 0, 0, 0, time.UTC), ID: "x"}),
			want: position{CreatedAt: time.Date(1960, 1, 1, 0, 0, 0, 0, time.UTC), ID: "x"}},
		{name: "another template", template: "t2", cursor: good, wantErr: true},
		{name: "truncated", template: "t1", cursor: good[:len(good)-2], wantErr: true},
		{name: "not base64", template: "t1", cursor: "!!", wantErr: true},
		{name: "too long", template: "t1", cursor: strings.Repeat("A", maxCursorLength+1), wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := decodeCursor(tc.template, tc.cursor)
			if tc.wantErr {
				assert.Equal(t, errs.Invalid, errs.KindOf(err))
				return
			}
			require.NoError(t, err)
			assert.True(t, tc.want.CreatedAt.Equal(got.CreatedAt), "got %v, want %v", got.CreatedAt, tc.want.CreatedAt)
			assert.Equal(t, tc.want.ID, got.ID)
		})
	}
}

func TestClientIP(t *testing.T) {
	tests := []struct {
		name   string
		xff    []string
		remote string
		want   string // "" for none
	}{
		{name: "peer only", remote: "192.0.2.1:5000", want: "192.0.2.1"},
		{name: "first hop", xff: []string{"203.0.113.7, 10.0.0.1"}, remote: "10.0.0.2:1", want: "203.0.113.7"},
		{name: "first header's first hop", xff: []string{"203.0.113.7", "198.51.100.1"}, remote: "10.0.0.2:1", want: "203.0.113.7"},
		{name: "spaces around the hop", xff: []string{"  203.0.113.8  ,x"}, remote: "10.0.0.2:1", want: "203.0.113.8"},
		{name: "IPv4 with a port", xff: []string{"203.0.113.9:8080"}, remote: "10.0.0.2:1", want: "203.0.113.9"},
		{name: "IPv6 with a port", xff: []string{"[2001:db8::2]:443"}, remote: "10.0.0.2:1", want: "2001:db8::2"},
		{name: "IPv6 with a zone", xff: []string{"fe80::1%eth0"}, remote: "10.0.0.2:1", want: "fe80::1"},
		{name: "IPv4-mapped", xff: []string{"::ffff:203.0.113.10"}, remote: "10.0.0.2:1", want: "203.0.113.10"},
		{name: "longest IPv6", xff: []string{"ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"}, remote: "10.0.0.2:1", want: "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"},
		{name: "garbage hop: the peer", xff: []string{"<script>"}, remote: "10.0.0.2:1", want: "10.0.0.2"},
		{name: "obfuscated hop (RFC 7239 style): the peer", xff: []string{"_hidden"}, remote: "[::1]:1", want: "::1"},
		{name: "a long value: the peer", xff: []string{strings.Repeat("a", 100)}, remote: "10.0.0.2:1", want: "10.0.0.2"},
		{name: "peer without a port", remote: "10.0.0.3", want: "10.0.0.3"},
		{name: "nothing usable", xff: []string{"x"}, remote: "pipe", want: ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("POST", "/", nil)
			r.RemoteAddr = tc.remote
			for _, v := range tc.xff {
				r.Header.Add("X-Forwarded-For", v)
			}
			got := clientIP(r)
			if tc.want == "" {
				assert.Nil(t, got)
				return
			}
			require.NotNil(t, got)
			assert.Equal(t, tc.want, *got)
			assert.LessOrEqual(t, len(*got), maxIPLength)
		})
	}
}

func TestDescribeBoundsNames(t *testing.T) {
	long := strings.Repeat("é", 1000)
	tests := []struct {
		name    string
		outcome Outcome
		g       Grantee
		link    bool
	}{
		{"created for a user", Created, Grantee{GranteeUser, "bob"}, true},
		{"updated for a team", Updated, Grantee{GranteeTeam, "devs"}, true},
		{"revoked for a team", Revoked, Grantee{GranteeTeam, "devs"}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := &Change{Outcome: tc.outcome, Previous: "read", Share: Share{TemplateID: "a/b c", PermissionLevel: "write"}}
			c.Share.setGrantee(tc.g, tc.g.ID)
			n := describe(c, names{template: long, actor: long, grantee: &long})
			assert.LessOrEqual(t, len(n.Message), 4096, "within notification.created's message")
			assert.Contains(t, n.Message, "…")
			if tc.link {
				require.NotNil(t, n.ActionURL)
				assert.Equal(t, "/session-templates/a%2Fb%20c", *n.ActionURL)
			} else {
				assert.Nil(t, n.ActionURL)
			}
		})
	}
}
