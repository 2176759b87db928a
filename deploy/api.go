// Package deploy holds the Kubernetes and Knative manifests of StreamSpace
// Functions (kustomize: base/, functions/<name>/, overlays/) and the tests
// that keep them honest: every document is decoded strictly into the
// Knative and Kubernetes Go types and run through Knative's own SetDefaults
// and Validate, the Triggers match the routing table in events/, no
// function's event path, /metrics or /health is reachable from outside the
// cluster, and the PostgreSQL connections the functions may open fit the
// budget on the ConfigMap in base/config.yaml, with and without the
// PgBouncer component (components/pgbouncer).
//
// Some files are generated from the routing table and from APIPaths below:
// each function folder's triggers.yaml, each overlay's Triggers, HTTPRoute
// or Ingress, and the event-auth component's subject lists. Regenerate them
// with
//
//	go test ./deploy -run TestGenerated -update
package deploy

// PathMatch is one Gateway API HTTPRoute path match.
type PathMatch struct {
	// Type is Exact, PathPrefix or RegularExpression.
	Type  string
	Value string
}

// APIPaths are the REST paths each function serves (docs/routes.md), the
// only paths the HTTPRoute or the Ingress forwards to it. Everything else
// under /api/v1 stays with the StreamSpace API, and nothing outside /api/v1
// is exposed. The Ingress expands each regular expression into Traefik path
// templates that match exactly the same paths (ingressPaths in the tests),
// so a pattern here may use only literals, groups, alternation, ? and
// [^/]+.
//
// Where a function's paths differ from another's only after a path
// parameter, the match is a RegularExpression (RE2, matched against the
// whole path). Gateway API calls regular expressions implementation-specific;
// Envoy-based gateways (Envoy Gateway, Istio, Cilium) and NGINX Gateway
// Fabric support them.
var APIPaths = map[string][]PathMatch{
	"tags": {
		{Type: "Exact", Value: "/api/v1/batch/sessions/update-tags"},
		{Type: "Exact", Value: "/api/v1/search/filters/tags"},
	},
	"sharing": {
		{Type: "RegularExpression", Value: `^/api/v1/session-templates/[^/]+/(share|shares|shares/[^/]+)$`},
	},
	"versioning": {
		{Type: "RegularExpression", Value: `^/api/v1/session-templates/[^/]+/versions(/[^/]+/(restore|diff))?$`},
	},
	"snapshot": {
		{Type: "RegularExpression", Value: `^/api/v1/(sessions/[^/]+/snapshots(/[^/]+)?|snapshots(/stats)?)$`},
	},
	"restore": {
		{Type: "RegularExpression", Value: `^/api/v1/sessions/[^/]+/snapshots/[^/]+/restore(/status)?$`},
	},
	"mailtest": {
		{Type: "RegularExpression", Value: `^/api/v1/integrations/email(/[^/]+(/test)?)?$`},
	},
	"autoscale": {
		{Type: "PathPrefix", Value: "/api/v1/scaling/autoscaling"},
	},
	"auth": {
		{Type: "PathPrefix", Value: "/api/v1/auth/oidc"},
		// The keys and discovery document of its ES256 tokens, when it
		// issues those (docs/auth.md).
		{Type: "Exact", Value: "/api/v1/auth/.well-known/jwks.json"},
		{Type: "Exact", Value: "/api/v1/auth/.well-known/openid-configuration"},
	},
}
