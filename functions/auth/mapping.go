package function

import (
	"fmt"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/streamspace-dev/functions/shared/errs"
)

// Limits on what a token may carry into StreamSpace's tables.
const (
	maxGroups    = 200
	maxGroupName = 200 // characters; a group's name is "provider/group", within VARCHAR(255)
	maxName      = 255
	maxEmail     = 254
)

// Refusal says why a verified user is not admitted. It is logged and
// shown, so it names a rule and never repeats a claim's value.
type Refusal string

// The refusals.
const (
	RefusedNoEmail         Refusal = "the token has no email"
	RefusedEmailUnverified Refusal = "the email is not verified"
	RefusedEmailDomain     Refusal = "the email domain is not allowed"
	RefusedGroups          Refusal = "no allowed group"
	RefusedHostedDomain    Refusal = "the Google Workspace domain is not allowed"
	RefusedTenant          Refusal = "the Azure AD tenant is not allowed"
	RefusedGroupOverage    Refusal = "the token's groups were left out (group overage)"
	RefusedTooManyGroups   Refusal = "the token names too many groups"
	RefusedInactive        Refusal = "the StreamSpace account is disabled"
	RefusedEmailTaken      Refusal = "the email belongs to another StreamSpace account"
)

func refuse(r Refusal) error { return errs.E(errs.Forbidden, "login refused: %s", r) }

// Mapped is a verified user as StreamSpace will know them.
type Mapped struct {
	Subject  string
	Username string // wanted; a collision gets a suffix
	Email    string
	FullName string
	Groups   []string // the token's groups, each once, in token order
	// Role is what the role rules grant; empty when the provider has no
	// rules, so an existing user's role is left alone.
	Role Role
}

// claim reads a dotted path from claims. A claim whose full name is the
// path wins, so namespaced claim names with dots (Auth0) are found.
func (cl Claims) claim(path string) (any, bool) {
	if path == "" {
		return nil, false
	}
	if v, ok := cl[path]; ok {
		return v, true
	}
	var cur any = map[string]any(cl)
	for part := range strings.SplitSeq(path, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[part]; !ok {
			return nil, false
		}
	}
	return cur, true
}

func (cl Claims) str(path string) string {
	v, _ := cl.claim(path)
	s, _ := v.(string)
	return s
}

// strs reads a claim holding a list of strings (or one string).
func (cl Claims) strs(path string) []string {
	v, _ := cl.claim(path)
	switch x := v.(type) {
	case string:
		return []string{x}
	case []any:
		out := make([]string, 0, len(x))
		for _, e := range x {
			if s, ok := e.(string); ok {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}

func truthy(v any) bool {
	switch x := v.(type) {
	case bool:
		return x
	case string:
		return x == "true"
	}
	return false
}

// mapClaims maps verified claims to a user under p's rules, or refuses.
func mapClaims(p *ProviderConfig, cl Claims) (Mapped, error) {
	m := Mapped{Subject: cl.str("sub")}
	m.Email = strings.TrimSpace(cl.str(p.Claims.Email))
	if m.Email == "" || len(m.Email) > maxEmail || strings.Count(m.Email, "@") != 1 || hasControl(m.Email) {
		return Mapped{}, refuse(RefusedNoEmail)
	}
	if p.requireEmailVerified() {
		v, _ := cl.claim("email_verified")
		if !truthy(v) {
			return Mapped{}, refuse(RefusedEmailUnverified)
		}
	}
	domain := strings.ToLower(m.Email[strings.IndexByte(m.Email, '@')+1:])
	if len(p.AllowedEmailDomains) > 0 && !slices.ContainsFunc(p.AllowedEmailDomains, func(d string) bool { return strings.EqualFold(d, domain) }) {
		return Mapped{}, refuse(RefusedEmailDomain)
	}
	if p.Preset == PresetGoogle && p.HostedDomain != "" && !strings.EqualFold(cl.str("hd"), p.HostedDomain) {
		return Mapped{}, refuse(RefusedHostedDomain)
	}
	if p.Preset == PresetAzure {
		if p.TenantID != "" && cl.str("tid") != p.TenantID {
			return Mapped{}, refuse(RefusedTenant)
		}
		// Azure AD leaves groups out past its limit and points at Graph
		// in _claim_names instead; a partial list would drop
		// memberships, so the login is refused.
		if names, ok := cl["_claim_names"].(map[string]any); ok {
			if _, over := names["groups"]; over {
				return Mapped{}, refuse(RefusedGroupOverage)
			}
		}
	}
	groups := cl.strs(p.Claims.Groups)
	if len(groups) > maxGroups {
		return Mapped{}, refuse(RefusedTooManyGroups)
	}
	seen := make(map[string]bool, len(groups))
	for _, g := range groups {
		g = strings.TrimSpace(g)
		if g == "" || seen[g] || utf8.RuneCountInString(g) > maxGroupName-len(p.ID)-1 || hasControl(g) {
			continue
		}
		seen[g] = true
		m.Groups = append(m.Groups, g)
	}
	if len(p.AllowedGroups) > 0 && !slices.ContainsFunc(p.AllowedGroups, func(g string) bool { return seen[g] }) {
		return Mapped{}, refuse(RefusedGroups)
	}
	if len(p.RoleRules) > 0 {
		m.Role = RoleUser
		roles := cl.strs(p.Claims.Roles)
		for _, r := range p.RoleRules {
			if seen[r.Group] || slices.Contains(roles, r.Group) {
				m.Role = r.Role
				break
			}
		}
	}
	m.FullName = clip(strings.TrimSpace(cl.str(p.Claims.Name)), maxName)
	m.Username = usernameFrom(cl.str(p.Claims.Username), m.Email)
	return m, nil
}

// usernameFrom makes a StreamSpace username: the claim, or the email's
// local part, reduced to letters, digits and . _ - @, at most 64 characters.
func usernameFrom(claim, email string) string {
	u := sanitizeUsername(claim)
	if u == "" {
		u = sanitizeUsername(email[:strings.IndexByte(email, '@')])
	}
	if u == "" {
		u = "user"
	}
	return u
}

func sanitizeUsername(s string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		switch {
		case r < utf8.RuneSelf && (unicode.IsLetter(r) || unicode.IsDigit(r)), r == '.', r == '_', r == '-', r == '@':
			b.WriteRune(r)
		}
		if b.Len() >= 64 {
			break
		}
	}
	return strings.Trim(b.String(), ".-_@")
}

func hasControl(s string) bool { return strings.IndexFunc(s, unicode.IsControl) >= 0 }

func clip(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	return string([]rune(s)[:n])
}

// groupName is the StreamSpace name of a provider's group: prefixed with
// the provider, so it never equals a local group's name and never inherits
// that group's shares.
func groupName(provider, group string) string { return fmt.Sprintf("%s/%s", provider, group) }
