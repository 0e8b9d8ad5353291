package sandbox

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/client-go/util/retry"
)

// fieldManager owns what the harness applies.
const fieldManager = "metaguard-e2e"

// applyOrder puts the kinds others depend on first, as kubectl users learn
// to; anything not listed comes after, in file order.
var applyOrder = []string{"Namespace", "CustomResourceDefinition", "ServiceAccount", "ClusterRole", "Role", "ClusterRoleBinding", "RoleBinding", "ConfigMap", "Secret"}

// ApplyManifests server-side applies every YAML or JSON file directly in
// dir (multi-document files included), as `kubectl apply --server-side -f
// dir` would. Kustomize's own files (kustomization.yaml, Components) are
// skipped: the e2e applies deploy/base's resources as they are.
func (s *Sandbox) ApplyManifests(ctx context.Context, dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("reading manifests: %w", err)
	}
	var all bytes.Buffer
	for _, e := range entries {
		ext := filepath.Ext(e.Name())
		if e.IsDir() || (ext != ".yaml" && ext != ".yml" && ext != ".json") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return fmt.Errorf("reading manifest: %w", err)
		}
		all.WriteString("\n---\n")
		all.Write(b)
	}
	return s.Apply(ctx, all.Bytes())
}

// Apply server-side applies the objects of a (multi-document) YAML or JSON
// stream. Namespaced objects without a namespace go to "default".
func (s *Sandbox) Apply(ctx context.Context, manifests []byte) error {
	objs, err := decodeObjects(manifests)
	if err != nil {
		return err
	}
	dyn, err := dynamic.NewForConfig(s.admin)
	if err != nil {
		return fmt.Errorf("building dynamic client: %w", err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(s.client.Discovery()))
	for _, obj := range objs {
		gvk := obj.GroupVersionKind()
		mapping, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			return fmt.Errorf("mapping %s: %w", gvk, err)
		}
		var ri dynamic.ResourceInterface = dyn.Resource(mapping.Resource)
		if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
			if obj.GetNamespace() == "" {
				obj.SetNamespace(metav1.NamespaceDefault)
			}
			ri = dyn.Resource(mapping.Resource).Namespace(obj.GetNamespace())
		}
		data, err := json.Marshal(obj.Object)
		if err != nil {
			return fmt.Errorf("encoding %s %s: %w", gvk.Kind, obj.GetName(), err)
		}
		force := true
		if _, err := ri.Patch(ctx, obj.GetName(), types.ApplyPatchType, data,
			metav1.PatchOptions{FieldManager: fieldManager, Force: &force}); err != nil {
			return fmt.Errorf("applying %s %s/%s: %w", gvk.Kind, obj.GetNamespace(), obj.GetName(), err)
		}
	}
	return nil
}

func decodeObjects(manifests []byte) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(manifests), 4096)
	var objs []*unstructured.Unstructured
	for {
		var raw map[string]any
		if err := dec.Decode(&raw); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, fmt.Errorf("decoding manifests: %w", err)
		}
		if len(raw) == 0 {
			continue
		}
		obj := &unstructured.Unstructured{Object: raw}
		if strings.HasPrefix(obj.GetAPIVersion(), "kustomize.config.k8s.io/") {
			continue
		}
		if obj.GetKind() == "" || obj.GetName() == "" {
			return nil, fmt.Errorf("manifest without kind or name: %v", raw)
		}
		objs = append(objs, obj)
	}
	rank := func(o *unstructured.Unstructured) int {
		if i := slices.Index(applyOrder, o.GetKind()); i >= 0 {
			return i
		}
		return len(applyOrder)
	}
	slices.SortStableFunc(objs, func(a, b *unstructured.Unstructured) int { return rank(a) - rank(b) })
	return objs, nil
}

// ServiceAccountKubeconfig writes a kubeconfig that authenticates as the
// ServiceAccount with a TokenRequest token (valid 24h), for a process in
// the node namespace, and returns its path. This is how metaguard runs in
// the e2e: with exactly the rights RBAC gives its ServiceAccount.
func (s *Sandbox) ServiceAccountKubeconfig(ctx context.Context, namespace, name string) (string, error) {
	exp := int64(24 * 60 * 60)
	tr, err := s.client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name,
		&authv1.TokenRequest{Spec: authv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("requesting a token for %s/%s: %w", namespace, name, err)
	}
	path := filepath.Join(s.dir, fmt.Sprintf("kubeconfig-%s-%s", namespace, name))
	return path, s.writeKubeconfig(path, namespace+"/"+name, &clientcmdapi.AuthInfo{Token: tr.Status.Token})
}

func (s *Sandbox) writeKubeconfig(path, user string, auth *clientcmdapi.AuthInfo) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["e2e"] = &clientcmdapi.Cluster{Server: APIServerURL, CertificateAuthorityData: s.pki.caPEM}
	cfg.AuthInfos[user] = auth
	cfg.Contexts["e2e"] = &clientcmdapi.Context{Cluster: "e2e", AuthInfo: user}
	cfg.CurrentContext = "e2e"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("writing kubeconfig: %w", err)
	}
	return nil
}

// EnsureNamespace creates the namespace if it is missing, with its
// "default" ServiceAccount (no controller manager runs to make it), and
// sets the given labels on it (others are kept).
func (s *Sandbox) EnsureNamespace(ctx context.Context, name string, labels map[string]string) error {
	nsClient := s.client.CoreV1().Namespaces()
	_, err := nsClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) && len(labels) > 0 {
		err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
			ns, err := nsClient.Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			if ns.Labels == nil {
				ns.Labels = map[string]string{}
			}
			maps.Copy(ns.Labels, labels)
			_, err = nsClient.Update(ctx, ns, metav1.UpdateOptions{})
			return err
		})
	}
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating or labelling namespace %s: %w", name, err)
	}
	return s.ensureServiceAccount(ctx, name, "default")
}

func (s *Sandbox) ensureServiceAccount(ctx context.Context, namespace, name string) error {
	_, err := s.client.CoreV1().ServiceAccounts(namespace).Create(ctx,
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating service account %s/%s: %w", namespace, name, err)
	}
	return nil
}

// shippedGoEnv returns the Go runtime settings (GOGC, GOMEMLIMIT,
// GOMAXPROCS, ...) that the applied metaguard DaemonSet gives its
// container as literal values; none when it was not applied.
// StartMetaguard runs metaguard with them, so the e2e, the demo and the
// benchmark measure the runtime tuning that ships.
func (s *Sandbox) shippedGoEnv(ctx context.Context) ([]string, error) {
	ds, err := s.client.AppsV1().DaemonSets(MetaguardNamespace).Get(ctx, metaguardDaemonSet, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading metaguard's DaemonSet: %w", err)
	}
	return goRuntimeEnv(ds.Spec.Template.Spec), nil
}

// goRuntimeEnv is the literal GO* env of the metaguard container. NODE_NAME
// and HOST_IP come from the downward API, which the sandbox answers with
// flags instead.
func goRuntimeEnv(spec corev1.PodSpec) []string {
	var env []string
	for _, c := range spec.Containers {
		if c.Name != "metaguard" {
			continue
		}
		for _, e := range c.Env {
			if e.ValueFrom == nil && strings.HasPrefix(e.Name, "GO") {
				env = append(env, e.Name+"="+e.Value)
			}
		}
	}
	return env
}
