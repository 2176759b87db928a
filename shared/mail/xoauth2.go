package mail

import (
	"context"
	"net/http"

	"golang.org/x/oauth2"
)

// xoauth2 is the XOAUTH2 SASL mechanism of Gmail and Office 365: the user
// and a bearer token in one initial response.
type xoauth2 struct {
	user, token string
}

func (a *xoauth2) Start() (string, []byte, error) {
	return "XOAUTH2", []byte("user=" + a.user + "\x01auth=Bearer " + a.token + "\x01\x01"), nil
}

// Next answers the JSON error challenge a server sends before refusing a
// token with an empty line, as the mechanism asks, so the refusal follows.
func (a *xoauth2) Next([]byte) ([]byte, error) { return []byte{}, nil }

// OAuth2 is a refresh-token grant at a token endpoint.
type OAuth2 struct {
	TokenURL     string
	ClientID     string
	ClientSecret string
	RefreshToken string
	Scopes       []string
}

// TokenSource returns access tokens for the grant, fetched through client
// (a Guard's HTTPClient). It refreshes a token shortly before it expires.
func (o OAuth2) TokenSource(ctx context.Context, client *http.Client) oauth2.TokenSource {
	cfg := oauth2.Config{
		ClientID:     o.ClientID,
		ClientSecret: o.ClientSecret,
		Endpoint:     oauth2.Endpoint{TokenURL: o.TokenURL, AuthStyle: oauth2.AuthStyleInParams},
		Scopes:       o.Scopes,
	}
	ctx = context.WithValue(ctx, oauth2.HTTPClient, client)
	return cfg.TokenSource(ctx, &oauth2.Token{RefreshToken: o.RefreshToken})
}
