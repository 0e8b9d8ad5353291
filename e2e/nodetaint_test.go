//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/client-go/util/retry"

	"metaguard.dev/metaguard/deploy/render"
	"metaguard.dev/metaguard/e2e/sandbox"
)

const (
	taintKey   = "startup-taint.cluster-autoscaler.kubernetes.io/metaguard-not-ready"
	otherTaint = "example.com/other"
)

// TestNodeTaintLeastPrivilege shows, on a real API server, that the
// node-taint feature's grant (get and patch on nodes) is narrowed by its
// ValidatingAdmissionPolicy to removing metaguard's taint from the node its
// token is bound to: with a token bound to a Pod on node-a, patching
// node-b, relabelling node-a or removing another taint is refused, and the
// patch metaguard sends is allowed. Then metaguard itself removes the taint
// from node-a once it is ready, and leaves node-b's alone.
func TestNodeTaintLeastPrivilege(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s := sandbox.StartT(t, sandbox.Options{})
	admin := s.AdminClient()
	applyChart(t, ctx, s, chartValues(map[string]any{"preset": "aws", "nodeTaint": map[string]any{"enabled": true}}))
	for _, n := range []string{sandbox.NodeName, sandbox.OtherNodeName} {
		setTaints(t, ctx, admin, n, []corev1.Taint{
			{Key: otherTaint, Effect: corev1.TaintEffectNoSchedule},
			{Key: taintKey, Effect: corev1.TaintEffectNoSchedule},
		})
	}

	bound := podBoundClient(t, ctx, s, sandbox.NodeName)
	unbound := tokenClient(t, s, requestToken(t, ctx, admin, nil))
	waitPolicyInForce(t, ctx, bound)

	refused := []struct {
		name   string
		client kubernetes.Interface
		node   string
		patch  func(n *corev1.Node) (types.PatchType, []byte)
		why    string // the refusing validation's message
	}{
		{"removing the taint from another node", bound, sandbox.OtherNodeName, removeKey(taintKey), "only the node its token was issued for"},
		{"removing another taint from its own node", bound, sandbox.NodeName, removeKey(otherTaint), "may only remove the " + taintKey + " taint"},
		{"removing every taint from its own node", bound, sandbox.NodeName, replaceTaints(nil), "may only remove the " + taintKey + " taint"},
		{"relabelling its own node", bound, sandbox.NodeName, func(*corev1.Node) (types.PatchType, []byte) {
			return types.MergePatchType, []byte(`{"metadata":{"labels":{"node-role.kubernetes.io/control-plane":""}}}`)
		}, "may only remove the " + taintKey + " taint"},
		// The same with the taint's removal in the same patch, so that only
		// the other change is left to refuse.
		{"relabelling its own node while removing the taint", bound, sandbox.NodeName,
			alsoOp(removeKey(taintKey), map[string]any{"op": "add", "path": "/metadata/labels/node-role.kubernetes.io~1control-plane", "value": ""}),
			"labels, annotations, finalizers or owners"},
		{"cordoning its own node while removing the taint", bound, sandbox.NodeName,
			alsoOp(removeKey(taintKey), map[string]any{"op": "add", "path": "/spec/unschedulable", "value": true}),
			"spec beyond removing its taint"},
		{"adding a taint to its own node", bound, sandbox.NodeName, func(n *corev1.Node) (types.PatchType, []byte) {
			return replaceTaints(append(slices.Clone(n.Spec.Taints), corev1.Taint{Key: "x/y", Effect: corev1.TaintEffectNoExecute}))(n)
		}, "may only remove the " + taintKey + " taint"},
		{"removing the taint with a token bound to no pod, so naming no node", unbound, sandbox.NodeName, removeKey(taintKey), "only the node its token was issued for"},
	}
	for _, c := range refused {
		t.Run(c.name+" is refused", func(t *testing.T) {
			n, err := admin.CoreV1().Nodes().Get(ctx, c.node, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			pt, data := c.patch(n)
			_, err = c.client.CoreV1().Nodes().Patch(ctx, c.node, pt, data, metav1.PatchOptions{})
			if !apierrors.IsForbidden(err) || !contains(err.Error(), c.why) || contains(err.Error(), "resulted in error") {
				t.Fatalf("patch %s: err = %v, want the admission policy's refusal %q", data, err, c.why)
			}
			after, err := admin.CoreV1().Nodes().Get(ctx, c.node, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if after.ResourceVersion != n.ResourceVersion {
				t.Errorf("the node changed anyway")
			}
		})
	}

	t.Run("deleting a node is refused by RBAC", func(t *testing.T) {
		if err := bound.CoreV1().Nodes().Delete(ctx, sandbox.OtherNodeName, metav1.DeleteOptions{}); !apierrors.IsForbidden(err) {
			t.Errorf("delete: %v", err)
		}
	})

	t.Run("metaguard removes the taint from its own node once ready, and only there", func(t *testing.T) {
		kubeconfig := writeKubeconfig(t, s, podBoundToken(t, ctx, admin, sandbox.NodeName))
		pol, err := filepath.Abs("../deploy/overlays/aws/policy.yaml")
		if err != nil {
			t.Fatal(err)
		}
		// Later flags win: this kubeconfig's pod-bound token replaces the
		// sandbox's unbound one.
		if _, err := s.StartMetaguard(ctx, "--config="+pol, "--node-taint="+taintKey, "--kubeconfig="+kubeconfig); err != nil {
			t.Fatalf("starting metaguard: %v", err)
		}
		eventually(t, 20*time.Second, func() bool {
			n, err := admin.CoreV1().Nodes().Get(ctx, sandbox.NodeName, metav1.GetOptions{})
			return err == nil && !hasTaint(n, taintKey)
		})
		a, _ := admin.CoreV1().Nodes().Get(ctx, sandbox.NodeName, metav1.GetOptions{})
		b, _ := admin.CoreV1().Nodes().Get(ctx, sandbox.OtherNodeName, metav1.GetOptions{})
		if !hasTaint(a, otherTaint) || !hasTaint(b, taintKey) || !hasTaint(b, otherTaint) {
			t.Errorf("taints after: node-a %+v node-b %+v", a.Spec.Taints, b.Spec.Taints)
		}
	})
}

// waitPolicyInForce waits until the API server enforces the admission
// policy just applied (it loads policies asynchronously), probing with a
// dry-run relabel that the policy refuses.
func waitPolicyInForce(t *testing.T, ctx context.Context, c kubernetes.Interface) {
	t.Helper()
	probe := []byte(`{"metadata":{"labels":{"metaguard-e2e/probe":"x"}}}`)
	eventually(t, 30*time.Second, func() bool {
		_, err := c.CoreV1().Nodes().Patch(ctx, sandbox.NodeName, types.MergePatchType, probe, metav1.PatchOptions{DryRun: []string{metav1.DryRunAll}})
		return apierrors.IsForbidden(err) || apierrors.IsInvalid(err)
	})
}

func hasTaint(n *corev1.Node, key string) bool {
	return slices.ContainsFunc(n.Spec.Taints, func(t corev1.Taint) bool { return t.Key == key })
}

func setTaints(t *testing.T, ctx context.Context, c kubernetes.Interface, node string, taints []corev1.Taint) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		n, err := c.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return err
		}
		n.Spec.Taints = taints
		_, err = c.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("tainting %s: %v", node, err)
	}
}

// removeKey builds the patch metaguard sends (cmd/metaguard/taint.go): a
// JSON patch that tests the taints it read and replaces them with the
// same list less one key.
func removeKey(key string) func(n *corev1.Node) (types.PatchType, []byte) {
	return func(n *corev1.Node) (types.PatchType, []byte) {
		kept := slices.DeleteFunc(slices.Clone(n.Spec.Taints), func(t corev1.Taint) bool { return t.Key == key })
		return jsonPatch(n.Spec.Taints, kept)
	}
}

// alsoOp appends one more JSON patch operation to a taint patch.
func alsoOp(p func(n *corev1.Node) (types.PatchType, []byte), op map[string]any) func(n *corev1.Node) (types.PatchType, []byte) {
	return func(n *corev1.Node) (types.PatchType, []byte) {
		pt, data := p(n)
		var ops []map[string]any
		if err := json.Unmarshal(data, &ops); err != nil {
			panic(err)
		}
		b, err := json.Marshal(append(ops, op))
		if err != nil {
			panic(err)
		}
		return pt, b
	}
}

func replaceTaints(taints []corev1.Taint) func(n *corev1.Node) (types.PatchType, []byte) {
	return func(n *corev1.Node) (types.PatchType, []byte) { return jsonPatch(n.Spec.Taints, taints) }
}

func jsonPatch(old, taints []corev1.Taint) (types.PatchType, []byte) {
	if taints == nil {
		taints = []corev1.Taint{}
	}
	b, err := json.Marshal([]map[string]any{
		{"op": "test", "path": "/spec/taints", "value": old},
		{"op": "replace", "path": "/spec/taints", "value": taints},
	})
	if err != nil {
		panic(err)
	}
	return types.JSONPatchType, b
}

// podBoundToken creates a Pod of metaguard's ServiceAccount on node and
// returns a token bound to it, as the kubelet projects into the pod: the
// API server records the pod's node in the token.
func podBoundToken(t *testing.T, ctx context.Context, admin kubernetes.Interface, node string) string {
	t.Helper()
	name := fmt.Sprintf("metaguard-%s-%d", node, time.Now().UnixNano()%100000)
	pod, err := admin.CoreV1().Pods(render.Namespace).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app.kubernetes.io/name": "metaguard"}},
		Spec: corev1.PodSpec{
			NodeName: node, ServiceAccountName: "metaguard", HostNetwork: true,
			Containers: []corev1.Container{{Name: "metaguard", Image: "metaguard:v0.1.0"}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating the pod the token is bound to: %v", err)
	}
	return requestToken(t, ctx, admin, &authv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID})
}

func podBoundClient(t *testing.T, ctx context.Context, s *sandbox.Sandbox, node string) kubernetes.Interface {
	t.Helper()
	return tokenClient(t, s, podBoundToken(t, ctx, s.AdminClient(), node))
}

func requestToken(t *testing.T, ctx context.Context, admin kubernetes.Interface, bound *authv1.BoundObjectReference) string {
	t.Helper()
	exp := int64(3600)
	tr, err := admin.CoreV1().ServiceAccounts(render.Namespace).CreateToken(ctx, "metaguard",
		&authv1.TokenRequest{Spec: authv1.TokenRequestSpec{ExpirationSeconds: &exp, BoundObjectRef: bound}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("requesting a token: %v", err)
	}
	return tr.Status.Token
}

func tokenClient(t *testing.T, s *sandbox.Sandbox, token string) kubernetes.Interface {
	t.Helper()
	// The admin config's transport (it dials into the node namespace),
	// without the admin's credentials.
	cfg := rest.AnonymousClientConfig(s.AdminConfig())
	cfg.BearerToken = token
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// writeKubeconfig writes a kubeconfig that authenticates with token, for a
// process in the node namespace.
func writeKubeconfig(t *testing.T, s *sandbox.Sandbox, token string) string {
	t.Helper()
	admin := s.AdminConfig()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["e2e"] = &clientcmdapi.Cluster{Server: admin.Host, CertificateAuthorityData: admin.CAData, CertificateAuthority: admin.CAFile}
	cfg.AuthInfos["metaguard"] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["e2e"] = &clientcmdapi.Context{Cluster: "e2e", AuthInfo: "metaguard"}
	cfg.CurrentContext = "e2e"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}
