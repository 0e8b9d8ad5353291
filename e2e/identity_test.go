//go:build e2e

package e2e

import (
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"metaguard.dev/metaguard/e2e/sandbox"
)

// TestLabelChangeAppliesToTheNextRequest: access follows a live pod's
// labels without a restart.
func TestLabelChangeAppliesToTheNextRequest(t *testing.T) {
	n := startNode(t, awsPolicy)
	pod := n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "worker", Labels: map[string]string{"app": "worker"}})
	const url = "http://169.254.169.254/latest/meta-data/instance-id"
	if r := n.get(pod, url, nil); r.status != 403 {
		t.Fatalf("before: %d, want 403", r.status)
	}
	if err := n.s.SetPodLabels(n.ctx, pod, map[string]string{"app": "web"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() bool { return n.get(pod, url, nil).status == 200 })
	if err := n.s.SetPodLabels(n.ctx, pod, map[string]string{"app": "worker"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() bool { return n.get(pod, url, nil).status == 403 })
}

// TestIdentityOnARealAPIServer: only this node's pods are cached, a pod's
// IP resolves once its status publishes it, and IP reuse never hands a
// new pod the old one's access.
func TestIdentityOnARealAPIServer(t *testing.T) {
	n := startNode(t, awsPolicy)
	web := n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "web", Labels: map[string]string{"app": "web"}})
	// Pods of node-b exist only in the API; one even claims web's address.
	for i, ip := range []string{"10.244.1.5", "10.244.1.6", web.IP.String()} {
		n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "remote-" + string(rune('a'+i)), Node: sandbox.OtherNodeName, APIOnly: true,
			IP: netip.MustParseAddr(ip), Labels: map[string]string{"role": "metadata-accessor"}})
	}
	const url = "http://169.254.169.254/latest/meta-data/instance-id"

	t.Run("only this node's pods are cached", func(t *testing.T) {
		eventually(t, 5*time.Second, func() bool { return metric(n.metrics(), "metaguard_pods_tracked", nil) == 1 })
		if r := n.get(web, url, nil); r.status != 200 {
			t.Fatalf("a node-b pod claiming web's IP changed web's answer: %d %q", r.status, r.body)
		}
	})
	t.Run("a pod's IP resolves once its status publishes it", func(t *testing.T) {
		pending := n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "starting", Labels: map[string]string{"app": "web"}, Pending: true})
		if r := n.get(pending, url, nil); r.status != 503 || !contains(r.body, "unknown-pod") {
			t.Fatalf("before its IP is published: %d %q, want 503 unknown-pod (the SDKs retry it)", r.status, r.body)
		}
		if err := n.s.SetPodPhase(n.ctx, pending, corev1.PodRunning); err != nil {
			t.Fatal(err)
		}
		eventually(t, 15*time.Second, func() bool { return n.get(pending, url, nil).status == 200 })
	})
	t.Run("a new pod reusing an IP never gets the old pod's access", func(t *testing.T) {
		old := n.addPod(sandbox.PodSpec{Namespace: "ops", Name: "old-agent", Labels: map[string]string{"role": "metadata-accessor"}})
		creds := "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
		if r := n.get(old, creds, nil); r.status != 200 {
			t.Fatalf("the accessor itself: %d", r.status)
		}
		// The old pod is Failed (its IP may be reused) and a new pod with
		// the same address appears before the old one is deleted.
		if err := n.s.SetPodPhase(n.ctx, old, corev1.PodFailed); err != nil {
			t.Fatal(err)
		}
		n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "new-batch", Labels: map[string]string{"app": "batch"}, IP: old.IP, APIOnly: true})
		eventually(t, 5*time.Second, func() bool {
			r := n.get(old, creds, nil) // same address, now new-batch's
			return r.status == 403 && contains(r.body, "shop/new-batch")
		})
	})
}
