package deploy

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	structuralschema "k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel"
	structuraldefaulting "k8s.io/apiextensions-apiserver/pkg/apiserver/schema/defaulting"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/pruning"
	apiservervalidation "k8s.io/apiextensions-apiserver/pkg/apiserver/validation"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	celconfig "k8s.io/apiserver/pkg/apis/cel"
	"sigs.k8s.io/yaml"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Gateway API has no Go validation: its rules are the OpenAPI schema and the
// CEL expressions of its CRDs. These are the CRDs of the gateway-api module
// version this module builds against, and the API server's own code
// (apiextensions-apiserver) applies them as it would on admission: prune,
// default, validate the schema, run the CEL rules.
var crdFiles = map[string]string{
	"gateway.networking.k8s.io/HTTPRoute":      "gateway.networking.k8s.io_httproutes.yaml",
	"gateway.networking.k8s.io/ReferenceGrant": "gateway.networking.k8s.io_referencegrants.yaml",
}

type crdValidator struct {
	structural *structuralschema.Structural
	schema     apiservervalidation.SchemaValidator
	cel        *cel.Validator
}

var (
	crdMu         sync.Mutex
	crdValidators = map[string]*crdValidator{}
)

func validatorFor(t *testing.T, apiVersion, kind string) *crdValidator {
	t.Helper()
	crdMu.Lock()
	defer crdMu.Unlock()
	key := apiVersion + "/" + kind
	if v, ok := crdValidators[key]; ok {
		return v
	}
	group, version, _ := cutLast(apiVersion, "/")
	file, ok := crdFiles[group+"/"+kind]
	require.True(t, ok, "no CRD registered for %s", key)
	dir, err := moduleDir("sigs.k8s.io/gateway-api")
	require.NoError(t, err)
	data, err := os.ReadFile(filepath.Join(dir, "config", "crd", "standard", file))
	require.NoError(t, err)
	var crd apiextensionsv1.CustomResourceDefinition
	require.NoError(t, yaml.UnmarshalStrict(data, &crd), file)
	for _, v := range crd.Spec.Versions {
		if v.Name != version {
			continue
		}
		require.True(t, v.Served, "%s: version %s is not served", file, version)
		var internal apiextensions.CustomResourceValidation
		require.NoError(t, apiextensionsv1.Convert_v1_CustomResourceValidation_To_apiextensions_CustomResourceValidation(v.Schema, &internal, nil))
		ss, err := structuralschema.NewStructural(internal.OpenAPIV3Schema)
		require.NoError(t, err)
		sv, _, err := apiservervalidation.NewSchemaValidator(internal.OpenAPIV3Schema)
		require.NoError(t, err)
		cv := &crdValidator{structural: ss, schema: sv, cel: cel.NewValidator(ss, true, celconfig.PerCallLimit)}
		crdValidators[key] = cv
		return cv
	}
	require.FailNow(t, "no such version", "%s: no version %s", file, version)
	return nil
}

func cutLast(s, sep string) (string, string, bool) {
	for i := len(s) - len(sep); i >= 0; i-- {
		if s[i:i+len(sep)] == sep {
			return s[:i], s[i+len(sep):], true
		}
	}
	return "", s, false
}

// validateCR admits one custom resource document as the API server would.
func (v *crdValidator) validateCR(doc []byte) []string {
	js, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return []string{err.Error()}
	}
	var u map[string]any
	if err := utiljson.Unmarshal(js, &u); err != nil { // int64 numbers, like the API server
		return []string{err.Error()}
	}
	var problems []string
	if pruned := pruning.PruneWithOptions(u, v.structural, true, structuralschema.UnknownFieldPathOptions{TrackUnknownFieldPaths: true}); len(pruned) > 0 {
		problems = append(problems, fmt.Sprintf("unknown fields: %v", pruned))
	}
	structuraldefaulting.Default(u, v.structural)
	for _, e := range apiservervalidation.ValidateCustomResource(nil, u, v.schema) {
		problems = append(problems, e.Error())
	}
	errs, _ := v.cel.Validate(context.Background(), nil, v.structural, u, nil, celconfig.RuntimeCELCostBudget)
	for _, e := range errs {
		problems = append(problems, e.Error())
	}
	return problems
}

// TestGatewayAPIValidation: the HTTPRoute and the ReferenceGrant pass the
// schema and CEL rules of their CRDs. The ingress overlays have none.
func TestGatewayAPIValidation(t *testing.T) {
	for _, ov := range overlays {
		t.Run(ov.name, func(t *testing.T) {
			n := 0
			for _, o := range loadOverlay(t, ov).objects {
				group, _, _ := cutLast(o.apiVersion, "/")
				if group != "gateway.networking.k8s.io" {
					continue
				}
				n++
				assert.Empty(t, validatorFor(t, o.apiVersion, o.kind).validateCR(o.doc), "%s", o)
			}
			if ov.ingress {
				assert.Zero(t, n, "Gateway API objects beside the Ingress")
			} else {
				assert.NotZero(t, n, "no Gateway API objects")
			}
		})
	}
}

// TestGatewayAPIValidationBites: the CRD rules do reject a bad route.
func TestGatewayAPIValidationBites(t *testing.T) {
	v := validatorFor(t, "gateway.networking.k8s.io/v1", "HTTPRoute")
	tests := []struct{ name, doc string }{
		{"path not starting with /", "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: x, namespace: y}\nspec: {rules: [{matches: [{path: {type: Exact, value: api}}]}]}\n"},
		{"hostname rewrite not a hostname", "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: x, namespace: y}\nspec: {rules: [{filters: [{type: URLRewrite, urlRewrite: {hostname: 'a b'}}]}]}\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			assert.NotEmpty(t, v.validateCR([]byte(tc.doc)), "accepted:\n%s", tc.doc)
		})
	}
}
