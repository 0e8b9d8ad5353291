//go:build e2e

package e2e

import (
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"metaguard.dev/metaguard/e2e/sandbox"
)

// notReadyTaint is the taint deploy/components/node-taint has metaguard
// remove.
const notReadyTaint = "metaguard.dev/not-ready"

// installWithNodeTaint installs the guide's kustomization with the
// node-taint component and applies it (without waiting for the rollout:
// the taint's removal is what the test watches). components are further
// components of this checkout (e.g. deploy/components/...), listed after
// node-taint, as an operator would add an admission policy that narrows
// what the taint grant allows.
func (n *realNode) installWithNodeTaint(components ...string) {
	n.t.Helper()
	const taintComponent = "  - " + guideCheckout + "deploy/components/node-taint\n"
	n.writeGuideFile("Install", "install/kustomization.yaml, with the node-taint component", n.image, func(s string) string {
		if !strings.Contains(s, taintComponent) {
			n.t.Fatalf("the guide's node-taint kustomization no longer lists %q", taintComponent)
		}
		more := taintComponent
		for _, c := range components {
			more += "  - " + guideCheckout + c + "\n"
		}
		return strings.Replace(s, taintComponent, more, 1)
	})
	n.runGuide("Install", 0)
}

// nodeTainted reports whether node-a carries the taint.
func (n *realNode) nodeTainted(key string) bool {
	n.t.Helper()
	node, err := n.s.AdminClient().CoreV1().Nodes().Get(n.ctx, sandbox.NodeName, metav1.GetOptions{})
	if err != nil {
		n.t.Fatal(err)
	}
	for _, t := range node.Spec.Taints {
		if t.Key == key {
			return true
		}
	}
	return false
}

func podCondition(p *corev1.Pod, typ corev1.PodConditionType) *corev1.PodCondition {
	for i := range p.Status.Conditions {
		if p.Status.Conditions[i].Type == typ {
			return &p.Status.Conditions[i]
		}
	}
	return nil
}

// TestNodeTaintComponent registers node-a with the taint, as an operator's
// node group would, and installs the overlay with the node-taint
// component: a workload created first waits, metaguard becomes ready and
// removes the taint, and only then is the workload scheduled, so its very
// first metadata request already goes through metaguard.
func TestNodeTaintComponent(t *testing.T) {
	n := startRealNode(t, sandbox.NodeOptions{RegisterWithTaints: []string{notReadyTaint + ":NoSchedule"}})
	if !n.nodeTainted(notReadyTaint) {
		t.Fatalf("node-a registered without %s", notReadyTaint)
	}
	early := n.createWorkload("shop", "early", nil, map[string]string{"app": "early"})
	eventually(t, time.Minute, func() bool {
		p, err := n.s.AdminClient().CoreV1().Pods("shop").Get(n.ctx, early.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		c := podCondition(p, corev1.PodScheduled)
		return c != nil && c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable
	})

	n.installWithNodeTaint()
	eventually(t, 3*time.Minute, func() bool { return !n.nodeTainted(notReadyTaint) })
	untainted := time.Now()
	// metaguard removes the taint once its own /readyz holds (rules in
	// place, pods synced, a policy loaded), which is before the kubelet's
	// next readiness probe marks the pod Ready: check the node itself.
	if status, body := n.nodeGet("http://127.0.0.1:9181/readyz"); status != 200 {
		t.Errorf("the taint is gone but metaguard's /readyz answers %d %q", status, body)
	}
	if rules := n.iptablesSave(); !strings.Contains(rules, "METAGUARD-PREROUTING") {
		t.Errorf("the taint is gone but metaguard's rules are not on the node:\n%s", rules)
	}
	mg := n.metaguardPod()

	n.kubectl("-n", "shop", "wait", "--for=condition=Ready", "pod/"+early.Name, "--timeout=120s")
	p, err := n.s.AdminClient().CoreV1().Pods("shop").Get(n.ctx, early.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// It was seen unschedulable while the taint was there; condition
	// times have one-second resolution.
	if sched := podCondition(p, corev1.PodScheduled); sched == nil || sched.LastTransitionTime.Time.Before(untainted.Add(-time.Second).Truncate(time.Second)) {
		t.Errorf("the workload was scheduled (%+v) before the taint was removed (%s)", sched, untainted.Format(time.RFC3339))
	}
	if r := n.get(early, credsURL); r.Status != 403 {
		t.Errorf("the workload's first metadata request: %+v, want metaguard's 403", r)
	}

	t.Run("metaguard's projected token is bound to its pod and node", func(t *testing.T) {
		checkTokenBinding(t, n.with(t), mg)
	})
}

// checkTokenBinding reviews the ServiceAccount token the kubelet projected
// into metaguard's container, as the API server sees it on every request
// metaguard makes: bound to the pod, and (what an admission policy can key
// the node-taint grant on) to node-a.
func checkTokenBinding(t *testing.T, n *realNode, mg *corev1.Pod) {
	const tokenPath = "/var/run/secrets/kubernetes.io/serviceaccount/token"
	token := strings.TrimSpace(n.kubectl("-n", "metaguard", "exec", mg.Name, "-c", "metaguard", "--", "cat", tokenPath))
	review, err := n.s.AdminClient().AuthenticationV1().TokenReviews().Create(n.ctx,
		&authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{Token: token}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	u := review.Status.User
	if !review.Status.Authenticated || u.Username != "system:serviceaccount:metaguard:metaguard" {
		t.Fatalf("token review: %+v", review.Status)
	}
	for key, want := range map[string]string{
		"authentication.kubernetes.io/pod-name":  mg.Name,
		"authentication.kubernetes.io/pod-uid":   string(mg.UID),
		"authentication.kubernetes.io/node-name": sandbox.NodeName,
	} {
		if got := u.Extra[key]; len(got) != 1 || got[0] != want {
			t.Errorf("user extra %s = %v, want [%s]", key, got, want)
		}
	}
}
