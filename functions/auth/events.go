package function

import (
	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/streamspace-dev/functions/events"
)

// userLogin reports a completed login of u through provider.
func userLogin(u User, provider string) (cloudevents.Event, error) {
	return events.New(Name, events.UserLogin, events.UserLoginData{
		UserID: u.ID, Provider: "oidc:" + provider, Email: u.Email, Role: u.Role,
	})
}
