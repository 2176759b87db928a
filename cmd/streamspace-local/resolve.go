package main

import (
	"errors"
	"fmt"

	"knative.dev/pkg/apis"
	duckv1 "knative.dev/pkg/apis/duck/v1"
)

// resolver gives the Destinations in the manifests local addresses, as
// Knative's URIResolver gives them cluster addresses: a ref names an object
// whose address is known here, and a relative uri beside it is resolved
// against that address.
type resolver struct {
	// services maps a Knative Service name to where it listens locally.
	services map[string]*apis.URL
	// brokers maps a Broker "namespace/name" to its local ingress.
	brokers map[string]*apis.URL
}

// resolve returns the address of dest, whose references default to
// namespace.
func (r resolver) resolve(dest duckv1.Destination, namespace string) (*apis.URL, error) {
	if dest.Ref == nil {
		if dest.URI == nil || !dest.URI.URL().IsAbs() || dest.URI.Host == "" {
			return nil, errors.New("destination has neither a ref nor an absolute uri")
		}
		return dest.URI, nil
	}
	ref := dest.Ref
	ns := ref.Namespace
	if ns == "" {
		ns = namespace
	}
	var base *apis.URL
	switch {
	case ref.Kind == "Service" && (ref.APIVersion == "serving.knative.dev/v1" || ref.APIVersion == "v1"):
		base = r.services[ref.Name]
	case ref.Kind == "Broker" && ref.APIVersion == "eventing.knative.dev/v1":
		base = r.brokers[ns+"/"+ref.Name]
	}
	if base == nil {
		return nil, fmt.Errorf("%s %s/%s (%s) has no local address", ref.Kind, ns, ref.Name, ref.APIVersion)
	}
	if dest.URI == nil {
		return base, nil
	}
	if dest.URI.URL().IsAbs() {
		return nil, errors.New("absolute uri is not allowed beside a ref")
	}
	return base.ResolveReference(dest.URI), nil
}
