//go:build e2e

package e2e

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"metaguard.dev/metaguard/e2e/sandbox"
)

// TestIPReusePastTheDeletionDeadline: pod A, which may read credentials,
// is deleted with a grace period; no kubelet ever confirms it gone, so
// its object stays, marked for deletion, still claiming its address, as
// it does when the kubelet's report is late or lost. Until its deadline
// the address is still A's (its containers may still be stopping); from
// the deadline on it is nobody's (503 unknown-pod), and when pod B turns
// up with the address it is B's. It is never again judged as A.
func TestIPReusePastTheDeletionDeadline(t *testing.T) {
	const grace = 3 * time.Second
	n := startNode(t, relPolicy)
	// One network namespace holds the address; the Pod objects claiming
	// it come and go, as a CNI reassigning it would leave them.
	wire, err := n.s.AddPodNetwork(n.ctx, sandbox.PodSpec{Namespace: "ops", Name: "wire"})
	if err != nil {
		t.Fatal(err)
	}
	a := n.addPod(sandbox.PodSpec{Namespace: "ops", Name: "pod-a", Labels: map[string]string{"role": "metadata-accessor"}, IP: wire.IP, APIOnly: true})
	eventually(t, 5*time.Second, func() bool { return n.get(wire, awsCreds, nil).status == 200 })

	deadline, err := n.s.DeletePodGracefully(n.ctx, a, grace)
	if err != nil {
		t.Fatal(err)
	}
	// Every request from the address from here on, until B is known.
	type probe struct {
		at     time.Time
		status int
		body   string
	}
	var probes []probe
	// An unknown address is answered after --identity-wait (1 s), then
	// from the negative cache.
	for time.Now().Before(deadline.Add(2500 * time.Millisecond)) {
		// When the request is sent: metaguard judges it after that, so one
		// sent past the deadline must never get A's access, while one sent
		// just before it may be answered after it.
		sent := time.Now()
		r, _, err := podGet(n.ctx, n.s, wire, awsCreds, nil)
		if err != nil {
			t.Fatal(err)
		}
		probes = append(probes, probe{sent, r.status, r.body})
		time.Sleep(50 * time.Millisecond) // a steady trickle, not a flood
	}
	var before, after, leaks int
	for _, p := range probes {
		switch {
		case p.at.Before(deadline):
			before++
			// The deadline is kept in whole seconds.
			if p.status != 200 && p.at.Before(deadline.Add(-time.Second)) {
				t.Errorf("%s before the deadline: %d %q, want A's access: its containers may still be stopping", deadline.Sub(p.at).Round(time.Millisecond), p.status, p.body)
			}
		case p.status == 200:
			leaks++
		default:
			after++
			if p.status != 503 || !contains(p.body, "unknown-pod") {
				t.Errorf("after the deadline: %d %q, want 503 unknown-pod", p.status, p.body)
			}
		}
	}
	if leaks > 0 {
		t.Errorf("%d requests after pod A's deletion deadline were answered with its access", leaks)
	}
	if after < 2 {
		t.Fatalf("%d requests were made after the deadline, want at least 2", after)
	}

	// B gets the address; A's object is still there, marked for deletion.
	n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "pod-b", Labels: map[string]string{"app": "batch"}, IP: wire.IP, APIOnly: true})
	eventually(t, 5*time.Second, func() bool {
		r := n.get(wire, awsCreds, nil)
		return r.status == 403 && contains(r.body, "shop/pod-b")
	})
	if _, err := n.s.AdminClient().CoreV1().Pods(a.Namespace).Get(n.ctx, a.Name, metav1.GetOptions{}); err != nil {
		t.Fatalf("pod A's object should still exist, marked for deletion: %v", err)
	}
	reportf(t, "grace %s: %d requests before the deadline (A's access), %d after it (503 unknown-pod), %d with A's access after it; then B's own decision while A's object stays marked for deletion",
		grace, before, after, leaks)
}

// TestIPReuseAfterTheContainersTerminated: the kubelet reports every
// container of pod A terminated while A's phase is still Running and its
// object stays; from then on the address is nobody's, then pod B's when
// B turns up with it, never A's.
func TestIPReuseAfterTheContainersTerminated(t *testing.T) {
	n := startNode(t, relPolicy)
	wire, err := n.s.AddPodNetwork(n.ctx, sandbox.PodSpec{Namespace: "ops", Name: "wire"})
	if err != nil {
		t.Fatal(err)
	}
	a := n.addPod(sandbox.PodSpec{Namespace: "ops", Name: "pod-a", Labels: map[string]string{"role": "metadata-accessor"}, IP: wire.IP, APIOnly: true})
	eventually(t, 5*time.Second, func() bool { return n.get(wire, awsCreds, nil).status == 200 })
	if err := n.s.SetContainersTerminated(n.ctx, a); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() bool {
		r := n.get(wire, awsCreds, nil)
		return r.status == 503 && contains(r.body, "unknown-pod")
	})
	n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "pod-b", Labels: map[string]string{"app": "batch"}, IP: wire.IP, APIOnly: true})
	eventually(t, 5*time.Second, func() bool {
		r := n.get(wire, awsCreds, nil)
		return r.status == 403 && contains(r.body, "shop/pod-b")
	})
	for range 20 {
		if r := n.get(wire, awsCreds, nil); r.status != 403 || !contains(r.body, "shop/pod-b") {
			t.Fatalf("after B turned up: %d %q, want B's own 403", r.status, r.body)
		}
	}
}
