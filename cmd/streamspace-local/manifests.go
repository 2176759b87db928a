package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	rbacv1 "k8s.io/api/rbac/v1"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	sourcesv1 "knative.dev/eventing/pkg/apis/sources/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// Manifests are the eventing objects of a kustomize overlay that the local
// broker runs, and the RBAC the local API server grants the function.
// Everything else in the overlay is ignored.
type Manifests struct {
	Brokers      []*eventingv1.Broker
	Triggers     []*eventingv1.Trigger
	PingSources  []*sourcesv1.PingSource
	Roles        []*rbacv1.Role
	RoleBindings []*rbacv1.RoleBinding
}

// defaultNamespace is where an object without a namespace lives, as kubectl
// would apply it.
const defaultNamespace = "default"

// loadOverlay builds the overlay in dir with kustomize, in process, and
// decodes its Brokers, Triggers, PingSources, Roles and RoleBindings strictly into Knative's Go
// types, so a field the types do not know is an error here as it would be
// at the API server.
func loadOverlay(dir string) (*Manifests, error) {
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	resources, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return nil, fmt.Errorf("kustomize build %s: %w", dir, err)
	}
	m := &Manifests{}
	for _, r := range resources.Resources() {
		var obj interface {
			GetNamespace() string
			SetNamespace(string)
		}
		switch gvk := r.GetGvk(); {
		case gvk.Group == eventingv1.SchemeGroupVersion.Group && gvk.Version == "v1" && gvk.Kind == "Broker":
			b := &eventingv1.Broker{}
			m.Brokers, obj = append(m.Brokers, b), b
		case gvk.Group == eventingv1.SchemeGroupVersion.Group && gvk.Version == "v1" && gvk.Kind == "Trigger":
			t := &eventingv1.Trigger{}
			m.Triggers, obj = append(m.Triggers, t), t
		case gvk.Group == sourcesv1.SchemeGroupVersion.Group && gvk.Version == "v1" && gvk.Kind == "PingSource":
			p := &sourcesv1.PingSource{}
			m.PingSources, obj = append(m.PingSources, p), p
		case gvk.Group == rbacv1.GroupName && gvk.Version == "v1" && gvk.Kind == "Role":
			ro := &rbacv1.Role{}
			m.Roles, obj = append(m.Roles, ro), ro
		case gvk.Group == rbacv1.GroupName && gvk.Version == "v1" && gvk.Kind == "RoleBinding":
			rb := &rbacv1.RoleBinding{}
			m.RoleBindings, obj = append(m.RoleBindings, rb), rb
		default:
			continue
		}
		doc, err := r.AsYAML()
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", r.GetKind(), r.GetName(), err)
		}
		if err := yaml.UnmarshalStrict(doc, obj); err != nil {
			return nil, fmt.Errorf("decode %s %s: %w", r.GetKind(), r.GetName(), err)
		}
		if obj.GetNamespace() == "" {
			obj.SetNamespace(defaultNamespace)
		}
	}
	return m, nil
}

// findOverlay returns dir if it exists; a relative dir that does not is
// looked up from each parent of the working directory in turn.
func findOverlay(dir string) (string, error) {
	p, err := findUp(dir, true)
	if err != nil {
		return "", fmt.Errorf("overlay %w; set DEPLOY_OVERLAY", err)
	}
	return p, nil
}

// findUp returns rel if it exists (as a directory when dir is set, else as a
// file); a relative rel that does not is looked up from each parent of the
// working directory in turn, so the runner works from anywhere in the
// repository.
func findUp(rel string, dir bool) (string, error) {
	if exists(rel, dir) || filepath.IsAbs(rel) {
		return rel, nil
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := wd; ; {
		if candidate := filepath.Join(d, rel); exists(candidate, dir) {
			return candidate, nil
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", errors.New(rel + " not found in " + wd + " or any parent")
		}
		d = parent
	}
}

func exists(path string, dir bool) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.IsDir() == dir
}
