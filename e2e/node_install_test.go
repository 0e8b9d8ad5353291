//go:build e2e

package e2e

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"

	"metaguard.dev/metaguard/e2e/sandbox"
)

// credsURL is the instance role listing: metaguard refuses it to every pod
// no rule grants credentials (in audit mode too), and the mock answers it
// with the role's name to anyone who reaches it directly. So a 200 here
// from an ordinary pod means the pod went around metaguard.
const credsURL = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"

// TestNodeAWSOverlay installs deploy/overlays/aws on a real kubelet exactly
// as the operator guide says (a kustomization of the operator's own that
// only moves the image), then runs the product as users meet it, in
// order: the DaemonSet's pod, the AWS SDK in containers, a rolling update,
// policy edits through the ConfigMap (seed scenario 001 among them), and
// the uninstall with deploy/cleanup. Every request is made by podclient
// inside a container, through the API server's exec.
func TestNodeAWSOverlay(t *testing.T) {
	n := startRealNode(t, sandbox.NodeOptions{})
	bystander := n.runWorkload("shop", "web", nil, map[string]string{"app": "web"})
	before := n.get(bystander, credsURL)
	if before.Status != 200 || before.Body == "" {
		t.Fatalf("before metaguard, a pod reads the role listing directly: got %+v; without that this test proves nothing", before)
	}

	// The operator guide's install, verbatim.
	n.writeGuideFile("Install", "install/kustomization.yaml", n.image, nil)
	n.runGuide("Install")
	*n.state = installState{ref: n.image}
	install := filepath.Join(n.dir, "install")

	steps := []struct {
		name string
		run  func(*testing.T, *realNode)
	}{
		{"the DaemonSet's pod runs Ready with the manifest's security context", func(t *testing.T, n *realNode) { checkMetaguardPod(t, n, install) }},
		{"the AWS SDK in containers gets an IMDSv2 session and the instance id, credentials only where allowed", func(t *testing.T, n *realNode) { checkSDK(t, n, bystander) }},
		{"a rolling update to a new tag never lets a workload reach the IMDS directly", checkRollingUpdate},
		{"a policy edit reaches the pod through the kubelet: seed scenario 001 on real containers", checkSeedScenario},
		{"a broken policy edit keeps the policy in force", checkBrokenEdit},
		{"uninstalling with deploy/cleanup leaves pods reaching the IMDS as before", func(t *testing.T, n *realNode) { checkUninstall(t, n, bystander, before) }},
	}
	for _, st := range steps {
		// Each step starts from where the previous one left the node.
		if !t.Run(st.name, func(t *testing.T) { st.run(t, n.with(t)) }) {
			return
		}
	}
}

// with is the node, reporting to a subtest.
func (n *realNode) with(t *testing.T) *realNode {
	c := *n
	c.t = t
	return &c
}

// renderedDaemonSet is the DaemonSet kubectl kustomize makes of dir.
func renderedDaemonSet(n *realNode, dir, name string) *appsv1.DaemonSet {
	n.t.Helper()
	out := n.kubectl("kustomize", dir)
	dec := utilyaml.NewYAMLReader(bufio.NewReader(strings.NewReader(out)))
	for {
		doc, err := dec.Read()
		if err != nil {
			n.t.Fatalf("no DaemonSet %s in kubectl kustomize %s: %v", name, dir, err)
		}
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(doc, nil, nil)
		if ds, ok := obj.(*appsv1.DaemonSet); err == nil && ok && ds.Name == name {
			return ds
		}
	}
}

func checkMetaguardPod(t *testing.T, n *realNode, install string) {
	want := renderedDaemonSet(n, install, "metaguard").Spec.Template.Spec
	pod := n.metaguardPod()
	if pod.Spec.NodeName != sandbox.NodeName || !podReady(pod) {
		t.Fatalf("metaguard pod %s on %q, ready %v", pod.Name, pod.Spec.NodeName, podReady(pod))
	}
	got := pod.Spec
	if !equality.Semantic.DeepEqual(got.Containers[0].SecurityContext, want.Containers[0].SecurityContext) {
		t.Errorf("the running container's securityContext\n%+v\ndiffers from the manifest's\n%+v", got.Containers[0].SecurityContext, want.Containers[0].SecurityContext)
	}
	if !equality.Semantic.DeepEqual(got.SecurityContext.SeccompProfile, want.SecurityContext.SeccompProfile) {
		t.Errorf("pod seccompProfile %+v, manifest %+v", got.SecurityContext.SeccompProfile, want.SecurityContext.SeccompProfile)
	}
	if got.Containers[0].Image != n.image {
		t.Errorf("image %s, want %s", got.Containers[0].Image, n.image)
	}

	// What the kernel enforces on the process, not just what the API
	// server stored.
	pid, err := n.s.ContainerPID(n.ctx, pod.Status.ContainerStatuses[0].ContainerID)
	if err != nil {
		t.Fatal(err)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for field, value := range map[string]string{
		// NET_ADMIN (12) and NET_RAW (13), nothing else, in every set
		// a process could use.
		"CapEff": "0000000000003000", "CapPrm": "0000000000003000", "CapBnd": "0000000000003000",
		"CapAmb": "0000000000000000", "NoNewPrivs": "1", "Seccomp": "2", "Uid": "0\t0\t0\t0",
	} {
		if m := regexp.MustCompile(`(?m)^` + field + `:\t(.*)$`).FindSubmatch(status); m == nil || string(m[1]) != value {
			t.Errorf("/proc/%d/status %s: %q, want %q", pid, field, m, value)
		}
	}
	mounts, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^\S+ \S+ \S+ \S+ / (ro|ro,\S*) `).Match(mounts) {
		t.Errorf("the container's root is not mounted read-only:\n%s", firstLines(string(mounts), 5))
	}

	// The image's iptables wrapper answers to the plain name, inside the
	// read-only container, with the node's back end.
	out := n.kubectl("-n", "metaguard", "exec", pod.Name, "-c", "metaguard", "--", "iptables", "--version")
	if !strings.Contains(out, "nf_tables") {
		t.Errorf("iptables --version in the container: %q, want the nft back end the kubelet uses here", out)
	}
	// HOST_IP from the downward API is where pods' metadata traffic goes.
	port := ""
	for _, p := range want.Containers[0].Ports {
		if p.Name == "proxy" {
			port = fmt.Sprint(p.ContainerPort)
		}
	}
	if rules := n.iptablesSave(); !strings.Contains(rules, "--to-destination "+sandbox.HostIP.String()+":"+port) {
		t.Errorf("no DNAT to %s:%s (the downward API's host IP and the proxy port) in the node's rules:\n%s", sandbox.HostIP, port, rules)
	}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func firstLines(s string, n int) string {
	lines := strings.SplitN(s, "\n", n+1)
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, "\n")
}
