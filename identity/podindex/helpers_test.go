package podindex

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"metaguard.dev/metaguard/identity"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	testNode = "node-1"
	testNS   = "team-a"
)

// harness is one Index running on a fake clientset, stopped (and checked to
// have stopped) when the test ends.
type harness struct {
	t      *testing.T
	client *fake.Clientset
	index  *Index
	reg    *prometheus.Registry
	// watched receives the resource of every watch the fake has registered.
	watched chan string
}

// newHarness builds an Index on a fake clientset holding objs, without
// starting it, so a test can add reactors first.
func newHarness(t *testing.T, opts Options, objs ...runtime.Object) *harness {
	t.Helper()
	if opts.NodeName == "" {
		opts.NodeName = testNode
	}
	h := &harness{t: t, client: fake.NewClientset(objs...), reg: prometheus.NewRegistry(), watched: make(chan string, 64)}
	// The fake delivers an event only to watches registered when it
	// happens, and an informer syncs on its list, before its watch: report
	// each watch once the tracker has it, so start can wait for both.
	h.client.PrependWatchReactor("*", func(a k8stesting.Action) (bool, watch.Interface, error) {
		var lo metav1.ListOptions
		if wa, ok := a.(k8stesting.WatchActionImpl); ok {
			lo = wa.ListOptions
		}
		w, err := h.client.Tracker().Watch(a.GetResource(), a.GetNamespace(), lo)
		if err != nil {
			return true, nil, err
		}
		select {
		case h.watched <- a.GetResource().Resource:
		default:
		}
		return true, w, nil
	})
	x, err := New(h.client, opts, h.reg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	h.index = x
	return h
}

// run starts the Index and stops it at the end of the test.
func (h *harness) run() {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.index.Run(ctx) }()
	h.t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				h.t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			h.t.Errorf("Run did not return 10s after its context was cancelled")
		}
	})
}

// start builds, runs and waits for the sync of an Index whose cluster holds
// the test namespaces and objs.
func start(t *testing.T, opts Options, objs ...runtime.Object) *harness {
	t.Helper()
	h := newHarness(t, opts, append(testNamespaces(), objs...)...)
	h.run()
	h.waitForSync()
	h.waitForWatches()
	return h
}

// waitForWatches waits until the pods and the namespaces informers both
// watch, so that no event a test makes is lost to the fake.
func (h *harness) waitForWatches() {
	h.t.Helper()
	seen := map[string]bool{}
	timeout := time.After(10 * time.Second)
	for !seen["pods"] || !seen["namespaces"] {
		select {
		case r := <-h.watched:
			seen[r] = true
		case <-timeout:
			h.t.Fatalf("the informers did not watch within 10s (watching: %v)", seen)
		}
	}
}

func (h *harness) waitForSync() {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if !h.index.WaitForSync(ctx) {
		h.t.Fatal("index did not sync within 10s")
	}
}

func (h *harness) create(pod *corev1.Pod) {
	h.t.Helper()
	if _, err := h.client.CoreV1().Pods(pod.Namespace).Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		h.t.Fatalf("creating pod %s: %v", pod.Name, err)
	}
}

func (h *harness) update(pod *corev1.Pod) {
	h.t.Helper()
	if _, err := h.client.CoreV1().Pods(pod.Namespace).Update(context.Background(), pod, metav1.UpdateOptions{}); err != nil {
		h.t.Fatalf("updating pod %s: %v", pod.Name, err)
	}
}

func (h *harness) delete(pod *corev1.Pod) {
	h.t.Helper()
	if err := h.client.CoreV1().Pods(pod.Namespace).Delete(context.Background(), pod.Name, metav1.DeleteOptions{}); err != nil {
		h.t.Fatalf("deleting pod %s: %v", pod.Name, err)
	}
}

// answer is a lookup result reduced to what tests compare: the pod's name,
// or the sentinel error.
type answer struct {
	pod string
	err error
}

func (a answer) String() string {
	if a.err != nil {
		return a.err.Error()
	}
	return "pod " + a.pod
}

func found(name string) answer { return answer{pod: name} }

var (
	unknown         = answer{err: identity.ErrNotFound}
	ambiguousAnswer = answer{err: identity.ErrAmbiguous}
)

func lookup(x *Index, ip string) answer {
	id, err := x.Lookup(context.Background(), netip.MustParseAddr(ip))
	switch {
	case errors.Is(err, identity.ErrNotFound):
		return unknown
	case errors.Is(err, identity.ErrAmbiguous):
		return ambiguousAnswer
	case err != nil:
		return answer{err: err}
	}
	return found(id.Name)
}

// eventually polls check until it returns true or five seconds pass; events
// travel through the fake API and the informer asynchronously.
func eventually(t *testing.T, what string, check func() bool) {
	t.Helper()
	eventuallyWithin(t, 5*time.Second, what, check)
}

func eventuallyWithin(t *testing.T, limit time.Duration, what string, check func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !check() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// expectAnswer waits until ip resolves to want. The index must use a zero
// Wait so an unknown answer is immediate.
func (h *harness) expectAnswer(ip string, want answer) {
	h.t.Helper()
	h.expectAnswerWithin(5*time.Second, ip, want)
}

func (h *harness) expectAnswerWithin(limit time.Duration, ip string, want answer) {
	h.t.Helper()
	deadline := time.Now().Add(limit)
	for {
		got := lookup(h.index, ip)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("%s still resolves to %v after %s, want %v", ip, got, limit, want)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func testNamespaces() []runtime.Object {
	return []runtime.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: testNS, Labels: map[string]string{"env": "dev"}}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "team-b"}},
	}
}

// pod returns a running pod on the test node in the test namespace, with
// ips as status.podIPs.
func pod(name string, ips ...string) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:      name,
			Namespace: testNS,
			UID:       types.UID("uid-" + name),
			Labels:    map[string]string{"app": name},
		},
		Spec: corev1.PodSpec{
			NodeName:           testNode,
			ServiceAccountName: "sa-" + name,
		},
		Status: corev1.PodStatus{Phase: corev1.PodRunning},
	}
	for _, ip := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	if len(ips) > 0 {
		p.Status.PodIP = ips[0]
	}
	return p
}

func withPhase(p *corev1.Pod, phase corev1.PodPhase) *corev1.Pod {
	p = p.DeepCopy()
	p.Status.Phase = phase
	return p
}
