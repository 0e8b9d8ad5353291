package podindex

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestIPReuseEventOrders replays, through the fake API server and the real
// informer, the orders in which a reused address can be seen, and checks the
// answer after every step.
func TestIPReuseEventOrders(t *testing.T) {
	const ip = "10.0.0.5"
	a, b := pod("a", ip), pod("b", ip)

	type step struct {
		do   func(h *harness)
		want answer
	}
	addA := func(h *harness) { h.create(a) }
	addB := func(h *harness) { h.create(b) }
	deleteA := func(h *harness) { h.delete(a) }
	deleteB := func(h *harness) { h.delete(b) }
	failA := func(h *harness) { h.update(withPhase(a, corev1.PodFailed)) }
	succeedA := func(h *harness) { h.update(withPhase(a, corev1.PodSucceeded)) }
	terminateA := func(h *harness) {
		// A pod being deleted that still runs (grace period) is still
		// live: the API server sets deletionTimestamp to the end of the
		// grace period.
		p := a.DeepCopy()
		deadline := metav1.NewTime(time.Now().Add(time.Hour))
		p.DeletionTimestamp = &deadline
		h.update(p)
	}
	overdueA := func(h *harness) {
		// Past its grace period the kubelet has killed it and the CNI may
		// have handed the address on, whether or not its end was seen.
		p := a.DeepCopy()
		deadline := metav1.NewTime(time.Now().Add(-time.Second))
		p.DeletionTimestamp = &deadline
		h.update(p)
	}
	exitedA := func(h *harness) {
		p := a.DeepCopy()
		p.Spec.Containers = []corev1.Container{{Name: "app"}, {Name: "sidecar"}}
		p.Status.ContainerStatuses = []corev1.ContainerStatus{
			{Name: "app", State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 0}}},
			{Name: "sidecar", State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 1}}},
		}
		h.update(p)
	}

	tests := []struct {
		name  string
		steps []step
	}{
		{
			name: "B added before A's delete is ambiguous until A's delete is seen",
			steps: []step{
				{addA, found("a")},
				{addB, ambiguousAnswer},
				{deleteA, found("b")},
			},
		},
		{
			name: "A updated to Failed while B claims the address hands it to B",
			steps: []step{
				{addA, found("a")},
				{addB, ambiguousAnswer},
				{failA, found("b")},
				{deleteA, found("b")},
			},
		},
		{
			name: "A deleted after B was added leaves B the owner",
			steps: []step{
				{addB, found("b")},
				{addA, ambiguousAnswer},
				{deleteA, found("b")},
			},
		},
		{
			name: "A's delete seen before B's add never overlaps",
			steps: []step{
				{addA, found("a")},
				{deleteA, unknown},
				{addB, found("b")},
			},
		},
		{
			name: "A Succeeded before B arrives frees the address",
			steps: []step{
				{addA, found("a")},
				{succeedA, unknown},
				{addB, found("b")},
			},
		},
		{
			name: "A terminating but still running keeps the address ambiguous",
			steps: []step{
				{addA, found("a")},
				{terminateA, found("a")},
				{addB, ambiguousAnswer},
				{deleteA, found("b")},
			},
		},
		{
			name: "A past its deletion deadline no longer claims the address",
			steps: []step{
				{addA, found("a")},
				{addB, ambiguousAnswer},
				{overdueA, found("b")},
			},
		},
		{
			name: "A whose containers have all exited hands the address to B",
			steps: []step{
				{addA, found("a")},
				{addB, ambiguousAnswer},
				{exitedA, found("b")},
			},
		},
		{
			name: "B deleted while A lives gives the address back to A",
			steps: []step{
				{addA, found("a")},
				{addB, ambiguousAnswer},
				{deleteB, found("a")},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := start(t, Options{})
			for _, s := range tt.steps {
				s.do(h)
				h.expectAnswer(ip, s.want)
			}
		})
	}
}

// TestWhatIsIndexed checks which pods answer for which addresses once the
// informer has delivered them.
func TestWhatIsIndexed(t *testing.T) {
	hostNet := pod("host", "192.168.1.10")
	hostNet.Spec.HostNetwork = true
	otherNode := pod("elsewhere", "10.0.9.9")
	otherNode.Spec.NodeName = "node-2"
	// A marker pod created last: once it resolves, every earlier event has
	// been handled, so an unknown answer for the others is final.
	marker := pod("marker", "10.0.0.99")

	tests := []struct {
		name string
		pod  *corev1.Pod
		ips  []string
		want answer
	}{
		{"a running pod answers for its address", pod("web", "10.0.0.1"), []string{"10.0.0.1"}, found("web")},
		{"a dual-stack pod answers for both families", pod("dual", "10.0.0.2", "fd00::2"), []string{"10.0.0.2", "fd00::2"}, found("dual")},
		{"a pending pod with an address answers", withPhase(pod("pending", "10.0.0.3"), corev1.PodPending), []string{"10.0.0.3"}, found("pending")},
		{"a hostNetwork pod is never indexed", hostNet, []string{"192.168.1.10"}, unknown},
		{"a Succeeded pod is never indexed", withPhase(pod("done", "10.0.0.4"), corev1.PodSucceeded), []string{"10.0.0.4"}, unknown},
		{"a Failed pod is never indexed", withPhase(pod("crashed", "10.0.0.6"), corev1.PodFailed), []string{"10.0.0.6"}, unknown},
		{"a pod on another node is never indexed", otherNode, []string{"10.0.9.9"}, unknown},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := start(t, Options{})
			h.create(tt.pod)
			h.create(marker)
			h.expectAnswer("10.0.0.99", found("marker"))
			for _, ip := range tt.ips {
				if got := lookup(h.index, ip); got != tt.want {
					t.Errorf("lookup %s = %v, want %v", ip, got, tt.want)
				}
			}
		})
	}
}

func TestPodResolvableOnceStatusGivesItAnAddress(t *testing.T) {
	h := start(t, Options{})
	p := withPhase(pod("starting"), corev1.PodPending)
	h.create(p)
	eventually(t, "the pod without an address to be seen", func() bool {
		_, exists, _ := h.index.podFactory.Core().V1().Pods().Informer().GetStore().GetByKey(testNS + "/starting")
		return exists
	})
	if got := h.index.Len(); got != 0 {
		t.Fatalf("Len = %d before the pod has an address, want 0", got)
	}

	p.Status.PodIPs = []corev1.PodIP{{IP: "10.0.0.7"}}
	p.Status.PodIP = "10.0.0.7"
	h.update(p)
	h.expectAnswer("10.0.0.7", found("starting"))
}

func TestAddressChangeMovesTheIndexEntry(t *testing.T) {
	h := start(t, Options{})
	p := pod("mover", "10.0.0.8")
	h.create(p)
	h.expectAnswer("10.0.0.8", found("mover"))

	p.Status.PodIPs = []corev1.PodIP{{IP: "10.0.0.9"}}
	p.Status.PodIP = "10.0.0.9"
	h.update(p)
	h.expectAnswer("10.0.0.9", found("mover"))
	if got := lookup(h.index, "10.0.0.8"); got != unknown {
		t.Errorf("old address answers %v, want unknown", got)
	}
}

func TestLabelChangeIsVisibleOnTheNextLookup(t *testing.T) {
	h := start(t, Options{})
	p := pod("web", "10.0.0.1")
	h.create(p)
	h.expectAnswer("10.0.0.1", found("web"))

	p.Labels = map[string]string{"app": "web", "role": "metadata-accessor"}
	h.update(p)
	eventually(t, "the new label to show", func() bool {
		id, err := h.index.Lookup(t.Context(), addr("10.0.0.1"))
		return err == nil && id.Labels["role"] == "metadata-accessor"
	})
}

func TestNamespaceLabelChangeIsVisibleOnTheNextLookup(t *testing.T) {
	h := start(t, Options{})
	h.create(pod("web", "10.0.0.1"))
	h.expectAnswer("10.0.0.1", found("web"))
	id, err := h.index.Lookup(t.Context(), addr("10.0.0.1"))
	if err != nil || id.NamespaceLabels["env"] != "dev" {
		t.Fatalf("Lookup = %+v, %v; want namespace label env=dev", id, err)
	}

	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: testNS, Labels: map[string]string{"env": "prod"}}}
	if _, err := h.client.CoreV1().Namespaces().Update(t.Context(), ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the namespace label to change", func() bool {
		id, err := h.index.Lookup(t.Context(), addr("10.0.0.1"))
		return err == nil && id.NamespaceLabels["env"] == "prod"
	})
}
