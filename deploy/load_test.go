package deploy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// object is one decoded manifest and the file it came from.
type object struct {
	file string
	obj  metav1.Object
	kind string
}

// decoder decodes YAML into the registered API types, strictly: unknown
// and duplicate fields are errors, and field names are case-sensitive as
// in the API server (encoding/json would take readOnlyRootFileSystem for
// readOnlyRootFilesystem, which the server then drops).
// The Prometheus Operator's kinds are decoded into its own Go types, as
// strictly as the built-in ones.
var decoder = serializer.NewCodecFactory(manifestScheme(), serializer.EnableStrict).UniversalDeserializer()

func manifestScheme() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{scheme.AddToScheme, monitoringv1.AddToScheme} {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	return s
}

// allowedKinds are the kinds deploy/ is meant to contain: a new kind has to
// be added here, and so reviewed, before the tests accept it.
var allowedKinds = map[string]bool{
	"Namespace": true, "ServiceAccount": true, "ConfigMap": true, "ResourceQuota": true,
	"ClusterRole": true, "ClusterRoleBinding": true, "DaemonSet": true,
	"ValidatingAdmissionPolicy": true, "ValidatingAdmissionPolicyBinding": true,
	"Service": true, "PodMonitor": true, "ServiceMonitor": true, "PrometheusRule": true,
}

// decodeManifests splits a multi-document YAML stream and decodes each
// document into its typed API object.
func decodeManifests(name string, data []byte) ([]object, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var out []object
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", name, err)
		}
		if j, err := yaml.YAMLToJSON(doc); err == nil && string(j) == "null" {
			continue // only comments or whitespace
		}
		o, gvk, err := decoder.Decode(doc, nil, nil)
		if err != nil {
			return nil, fmt.Errorf("decoding %s: %w", name, err)
		}
		if !allowedKinds[gvk.Kind] {
			return nil, fmt.Errorf("%s: unexpected kind %s", name, gvk)
		}
		m, ok := o.(metav1.Object)
		if !ok {
			return nil, fmt.Errorf("%s: %s has no object metadata", name, gvk)
		}
		out = append(out, object{file: name, obj: m, kind: gvk.Kind})
	}
}

// kustomization is the part of kustomize's format deploy/ uses. It is
// decoded strictly, so a misspelt field fails here rather than being
// ignored by kustomize's lenient reader.
type kustomization struct {
	APIVersion         string               `json:"apiVersion"`
	Kind               string               `json:"kind"`
	Resources          []string             `json:"resources,omitempty"`
	Components         []string             `json:"components,omitempty"`
	ConfigMapGenerator []configMapGenerator `json:"configMapGenerator,omitempty"`
	Patches            []patch              `json:"patches,omitempty"`
}

type configMapGenerator struct {
	Name      string   `json:"name"`
	Namespace string   `json:"namespace"`
	Behavior  string   `json:"behavior"`
	Files     []string `json:"files"`
	Options   struct {
		DisableNameSuffixHash bool              `json:"disableNameSuffixHash"`
		Labels                map[string]string `json:"labels"`
	} `json:"options"`
}

type patch struct {
	Target struct {
		Group   string `json:"group"`
		Version string `json:"version"`
		Kind    string `json:"kind"`
		Name    string `json:"name"`
	} `json:"target"`
	Patch string `json:"patch"`
}

func readKustomization(t *testing.T, dir string) kustomization {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var k kustomization
	if err := yaml.UnmarshalStrict(data, &k); err != nil {
		t.Fatalf("%s/kustomization.yaml: %v", dir, err)
	}
	return k
}

// loadDir decodes the manifests a kustomization lists as resources that are
// files in its own directory (not other kustomizations).
func loadDir(t *testing.T, dir string) []object {
	t.Helper()
	var out []object
	for _, res := range readKustomization(t, dir).Resources {
		path := filepath.Join(dir, res)
		if fi, err := os.Stat(path); err != nil || fi.IsDir() {
			continue
		}
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		objs, err := decodeManifests(path, data)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, objs...)
	}
	return out
}

// kustomizeBuild builds a kustomization the way `kubectl apply -k` would, with
// kustomize's own library (kubectl embeds the same).
func kustomizeBuild(t *testing.T, dir string) []object {
	t.Helper()
	res, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	out, err := res.AsYaml()
	if err != nil {
		t.Fatal(err)
	}
	objs, err := decodeManifests(dir, out)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

// find returns the object of that kind and name, failing the test when
// there is not exactly one.
func find[T metav1.Object](t *testing.T, objs []object, kind, name string) T {
	t.Helper()
	var found []T
	for _, o := range objs {
		if o.kind == kind && o.obj.GetName() == name {
			found = append(found, o.obj.(T))
		}
	}
	if len(found) != 1 {
		var zero T
		t.Fatalf("want exactly one %s %q, found %d", kind, name, len(found))
		return zero
	}
	return found[0]
}

func countKind(objs []object, kind string) int {
	n := 0
	for _, o := range objs {
		if o.kind == kind {
			n++
		}
	}
	return n
}
