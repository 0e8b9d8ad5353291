//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"metaguard.dev/metaguard/deploy/image/imagebuild"
	"metaguard.dev/metaguard/e2e/sandbox"
)

// metaguardImageArchive is what `make image` writes: the same archive an
// operator would push to a registry.
const metaguardImageArchive = "../bin/metaguard-image.tar"

// realNode is a sandbox whose node-a is a real kubelet with containerd, and
// the directory where the tests keep an operator's own kustomizations.
type realNode struct {
	t     *testing.T
	s     *sandbox.Sandbox
	ctx   context.Context
	dir   string
	image string // the metaguard image as `make image` named it
	// state is shared by the copies subtests get (with).
	state *installState
}

// startRealNode starts a real node, imports the metaguard image built by
// `make image` (the workload and pause images are the sandbox's own), and
// returns it; nothing of metaguard is installed yet.
func startRealNode(t *testing.T, opts sandbox.NodeOptions) *realNode {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	t.Cleanup(cancel)
	refs, err := imagebuild.ArchiveRefs(metaguardImageArchive)
	if err != nil || len(refs) != 1 {
		t.Fatalf("the metaguard image (make image): refs %v, %v", refs, err)
	}
	s := sandbox.StartT(t, sandbox.Options{Node: &opts})
	if err := s.ImportImage(ctx, metaguardImageArchive); err != nil {
		t.Fatal(err)
	}
	n := &realNode{t: t, s: s, ctx: ctx, dir: filepath.Join(s.ArtifactDir(), "operator"), image: refs[0], state: &installState{}}
	if err := os.MkdirAll(n.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return n
}

// kubectl runs the pinned kubectl as the cluster admin, failing the test
// on an error.
func (n *realNode) kubectl(args ...string) string {
	n.t.Helper()
	out, err := n.s.Kubectl(n.ctx, args...)
	if err != nil {
		n.t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func splitRef(t *testing.T, ref string) (repo, tag string) {
	t.Helper()
	i := strings.LastIndex(ref, ":")
	if i < 0 || strings.Contains(ref[i:], "/") {
		t.Fatalf("image %q has no tag", ref)
	}
	return ref[:i], ref[i+1:]
}

// metaguardPod is the DaemonSet's running pod on node-a.
func (n *realNode) metaguardPod() *corev1.Pod {
	n.t.Helper()
	pods, err := n.s.AdminClient().CoreV1().Pods("metaguard").List(n.ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=metaguard"})
	if err != nil {
		n.t.Fatal(err)
	}
	for i := range pods.Items {
		if p := &pods.Items[i]; p.DeletionTimestamp == nil && p.Status.Phase == corev1.PodRunning {
			return p
		}
	}
	n.t.Fatalf("no running metaguard pod among %d", len(pods.Items))
	return nil
}

// workload is a pod of the workload image (podclient only) on node-a.
type workload struct {
	Namespace, Name string
}

// runWorkload creates a workload pod (namespace created with nsLabels when
// missing) running args (default: sleep) and waits until it is Ready.
func (n *realNode) runWorkload(ns, name string, nsLabels, labels map[string]string, args ...string) workload {
	n.t.Helper()
	w := n.createWorkload(ns, name, nsLabels, labels, args...)
	n.kubectl("-n", ns, "wait", "--for=condition=Ready", "pod/"+name, "--timeout=120s")
	return w
}

func (n *realNode) createWorkload(ns, name string, nsLabels, labels map[string]string, args ...string) workload {
	n.t.Helper()
	nsObj := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: nsLabels}}
	if _, err := n.s.AdminClient().CoreV1().Namespaces().Create(n.ctx, nsObj, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		n.t.Fatal(err)
	}
	grace := int64(1)
	noToken := false
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: &grace,
			AutomountServiceAccountToken:  &noToken,
			Containers: []corev1.Container{{
				Name: "workload", Image: sandbox.WorkloadImage, ImagePullPolicy: corev1.PullNever, Args: args,
			}},
		},
	}
	// The namespace's default ServiceAccount comes from the controller
	// manager a moment after the namespace: admission refuses the pod
	// until then.
	eventually(n.t, time.Minute, func() bool {
		_, err := n.s.AdminClient().CoreV1().Pods(ns).Create(n.ctx, pod, metav1.CreateOptions{})
		return err == nil || apierrors.IsAlreadyExists(err)
	})
	return workload{ns, name}
}

// podResult is what podclient printed inside a container.
type podResult = sandbox.PodClientResult

// exec runs podclient inside the workload's container through the API
// server's exec (kubectl exec), and decodes what it printed.
func (n *realNode) exec(w workload, args ...string) podResult {
	n.t.Helper()
	out := n.kubectl(append([]string{"-n", w.Namespace, "exec", w.Name, "-c", "workload", "--", "podclient"}, args...)...)
	var res podResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		n.t.Fatalf("podclient %v in %s/%s printed %q: %v", args, w.Namespace, w.Name, out, err)
	}
	return res
}

// get is one plain GET from inside the container.
func (n *realNode) get(w workload, url string) podResult {
	n.t.Helper()
	return n.exec(w, "get", url)
}

// iptablesSave is the node namespace's ruleset, both back ends.
func (n *realNode) iptablesSave() string {
	n.t.Helper()
	var b strings.Builder
	for _, tool := range []string{"iptables-nft-save", "iptables-legacy-save", "ip6tables-nft-save", "ip6tables-legacy-save"} {
		out, err := n.s.ExecInNode(n.ctx, tool)
		if err != nil {
			n.t.Fatalf("%s: %v", tool, err)
		}
		b.Write(out)
	}
	return b.String()
}
