package podindex

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// The fake clientset ignores field selectors, so what keeps other nodes'
// pods out of memory in a real cluster is the selector sent; check it.
func TestPodsAreListedAndWatchedForThisNodeOnly(t *testing.T) {
	h := start(t, Options{NodeName: "node-7"})
	var podLists, podWatches, nsLists int
	for _, a := range h.client.Actions() {
		switch {
		case a.Matches("list", "pods"):
			podLists++
			if got := a.(k8stesting.ListAction).GetListRestrictions().Fields.String(); got != "spec.nodeName=node-7" {
				t.Errorf("pods list field selector = %q, want spec.nodeName=node-7", got)
			}
		case a.Matches("watch", "pods"):
			podWatches++
			if got := a.(k8stesting.WatchAction).GetWatchRestrictions().Fields.String(); got != "spec.nodeName=node-7" {
				t.Errorf("pods watch field selector = %q, want spec.nodeName=node-7", got)
			}
		case a.Matches("list", "namespaces"):
			nsLists++
			if got := a.(k8stesting.ListAction).GetListRestrictions().Fields.String(); got != "" {
				t.Errorf("namespaces list field selector = %q, want none", got)
			}
		}
	}
	if podLists == 0 || podWatches == 0 || nsLists == 0 {
		t.Errorf("saw %d pod lists, %d pod watches, %d namespace lists; want each at least once", podLists, podWatches, nsLists)
	}
}

func TestReadinessWaitsForBothInformers(t *testing.T) {
	h := newHarness(t, Options{}, testNamespaces()...)
	var nsDown atomic.Bool
	nsDown.Store(true)
	h.client.PrependReactor("list", "namespaces", func(k8stesting.Action) (bool, runtime.Object, error) {
		if nsDown.Load() {
			return true, nil, errors.New("test: namespaces unavailable")
		}
		return false, nil, nil
	})

	if h.index.HasSynced() {
		t.Fatal("HasSynced before Run")
	}
	h.run()
	eventually(t, "the pods informer to sync", func() bool {
		return h.index.podFactory.Core().V1().Pods().Informer().HasSynced()
	})
	eventually(t, "a namespaces list failure to be counted", func() bool {
		return testutil.ToFloat64(h.index.metrics.watchErrors.WithLabelValues(resourceNamespaces)) > 0
	})
	if h.index.HasSynced() {
		t.Error("HasSynced with only the pods informer synced")
	}
	if got := testutil.ToFloat64(h.index.metrics.synced); got != 0 {
		t.Errorf("metaguard_identity_synced = %v before sync, want 0", got)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Millisecond)
	defer cancel()
	if h.index.WaitForSync(ctx) {
		t.Error("WaitForSync reported sync with only the pods informer synced")
	}

	nsDown.Store(false)
	h.waitForSync()
	if got := testutil.ToFloat64(h.index.metrics.synced); got != 1 {
		t.Errorf("metaguard_identity_synced = %v after sync, want 1", got)
	}
}

// outage makes the fake API server refuse pod lists and watches while down,
// and lets the test cut the watch in progress, as a dropped connection does.
type outage struct {
	down atomic.Bool

	mu      sync.Mutex
	current watch.Interface
}

func (o *outage) install(client *fake.Clientset) {
	client.PrependReactor("list", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		if o.down.Load() {
			return true, nil, errors.New("test: API server unreachable")
		}
		return false, nil, nil
	})
	client.PrependWatchReactor("pods", func(a k8stesting.Action) (bool, watch.Interface, error) {
		if o.down.Load() {
			return true, nil, errors.New("test: API server unreachable")
		}
		w, err := client.Tracker().Watch(a.GetResource(), a.GetNamespace(), a.(k8stesting.WatchActionImpl).ListOptions)
		if err != nil {
			return true, nil, err
		}
		o.mu.Lock()
		o.current = w
		o.mu.Unlock()
		return true, w, nil
	})
}

func (o *outage) start() {
	o.down.Store(true)
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.current != nil {
		o.current.Stop()
	}
}

func TestCachedIdentitiesSurviveAnAPIServerOutage(t *testing.T) {
	a := pod("a", "10.0.0.1")
	h := newHarness(t, Options{}, append(testNamespaces(), a)...)
	var o outage
	o.install(h.client)
	h.run()
	h.waitForSync()
	h.expectAnswer("10.0.0.1", found("a"))

	o.start()
	podErrors := h.index.metrics.watchErrors.WithLabelValues(resourcePods)
	eventually(t, "the outage to show in metaguard_identity_watch_errors_total", func() bool {
		return testutil.ToFloat64(podErrors) > 0
	})
	t.Run("a cached pod still resolves during the outage", func(t *testing.T) {
		if got := lookup(h.index, "10.0.0.1"); got != found("a") {
			t.Errorf("lookup = %v, want pod a", got)
		}
		if !h.index.HasSynced() {
			t.Error("HasSynced turned false during the outage")
		}
	})

	// Changes made while this node cannot see them: A goes, B comes.
	h.delete(a)
	h.create(pod("b", "10.0.0.2"))
	o.down.Store(false)

	t.Run("after reconnecting, the relist removes what was deleted meanwhile", func(t *testing.T) {
		// A's deletion was never watched; the relist drops it with a
		// tombstone, the path that must unindex by key. The reflector
		// retries with exponential backoff (0.8s doubling, with jitter), so
		// the relist can take seconds.
		h.expectAnswerWithin(30*time.Second, "10.0.0.2", found("b"))
		h.expectAnswer("10.0.0.1", unknown)
	})
	t.Run("after reconnecting, new events flow again", func(t *testing.T) {
		h.create(pod("c", "10.0.0.3"))
		h.expectAnswer("10.0.0.3", found("c"))
	})
}

func TestPodsTrackedGauge(t *testing.T) {
	h := start(t, Options{}, pod("a", "10.0.0.1"), pod("b", "10.0.0.2", "fd00::2"))
	gauge := func() float64 { return testutil.ToFloat64(h.index.metrics.podsTracked) }
	if got := gauge(); got != 2 {
		t.Errorf("metaguard_pods_tracked = %v, want 2", got)
	}
	h.delete(pod("a"))
	eventually(t, "the gauge to drop to 1", func() bool { return gauge() == 1 })
	if got := h.index.Len(); got != 1 {
		t.Errorf("Len = %d, want 1", got)
	}
}

func TestMetricNamesOnTheRegistry(t *testing.T) {
	h := start(t, Options{})
	lookup(h.index, "10.0.0.1")
	want := []string{
		"metaguard_identity_lookups_total",
		"metaguard_pods_tracked",
		"metaguard_identity_synced",
		"metaguard_identity_watch_errors_total",
	}
	for _, name := range want {
		n, err := testutil.GatherAndCount(h.reg, name)
		if err != nil || n == 0 {
			t.Errorf("%s: %d series, err %v; want it registered", name, n, err)
		}
	}
}

func TestRunTwiceIsAnError(t *testing.T) {
	h := start(t, Options{})
	if err := h.index.Run(t.Context()); err == nil {
		t.Error("second Run returned nil")
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	client := fake.NewClientset()
	tests := []struct {
		name string
		opts Options
	}{
		{"a missing node name is refused", Options{}},
		{"a negative wait is refused", Options{NodeName: testNode, Wait: -time.Second}},
		{"a negative cache size is refused", Options{NodeName: testNode, NegativeCacheSize: -1}},
		{"a negative TTL is refused", Options{NodeName: testNode, NegativeTTL: -time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(client, tt.opts, nil); err == nil {
				t.Error("New returned no error")
			}
		})
	}
	t.Run("a nil client is refused", func(t *testing.T) {
		if _, err := New(nil, Options{NodeName: testNode}, nil); err == nil {
			t.Error("New returned no error")
		}
	})
	t.Run("registering twice on one registry is an error, not a panic", func(t *testing.T) {
		reg := prometheus.NewRegistry()
		if _, err := New(client, Options{NodeName: testNode}, reg); err != nil {
			t.Fatal(err)
		}
		if _, err := New(client, Options{NodeName: testNode}, reg); err == nil {
			t.Error("second New on the same registry returned no error")
		}
	})
}

func TestRunStopsPromptlyBeforeSync(t *testing.T) {
	h := newHarness(t, Options{})
	h.client.PrependReactor("list", "*", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, errors.New("test: never syncs")
	})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- h.index.Run(ctx) }()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancellation")
	}
	if h.index.HasSynced() {
		t.Error("HasSynced after a run that never synced")
	}
}
