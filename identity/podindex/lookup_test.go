package podindex

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"metaguard.dev/metaguard/identity"
)

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func counterFor(h *harness, result string) float64 {
	m := h.index.metrics
	switch result {
	case resultFound:
		return testutil.ToFloat64(m.found)
	case resultWaited:
		return testutil.ToFloat64(m.waited)
	case resultUnknown:
		return testutil.ToFloat64(m.unknown)
	case resultAmbiguous:
		return testutil.ToFloat64(m.ambiguous)
	}
	panic("no such result " + result)
}

func TestFoundAnswerIsTheWholeIdentity(t *testing.T) {
	h := start(t, Options{})
	h.create(pod("web", "10.0.0.1", "fd00::1"))
	h.expectAnswer("10.0.0.1", found("web"))

	want := identity.Identity{
		Namespace:       testNS,
		Name:            "web",
		UID:             "uid-web",
		ServiceAccount:  "sa-web",
		Labels:          map[string]string{"app": "web"},
		NamespaceLabels: map[string]string{"env": "dev"},
	}
	for _, ip := range []string{"10.0.0.1", "::ffff:10.0.0.1", "fd00::1"} {
		t.Run("looking up "+ip+" returns every field", func(t *testing.T) {
			got, err := h.index.Lookup(t.Context(), addr(ip))
			if err != nil {
				t.Fatalf("Lookup: %v", err)
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("Lookup = %+v, want %+v", got, want)
			}
		})
	}
}

func TestWaitingLookupReturnsAsSoonAsThePodAppears(t *testing.T) {
	const wait = 20 * time.Second // far longer than the test may take
	h := start(t, Options{Wait: wait})

	type result struct {
		id  identity.Identity
		err error
		dur time.Duration
	}
	done := make(chan result, 1)
	go func() {
		begin := time.Now()
		id, err := h.index.Lookup(context.Background(), addr("10.0.0.1"))
		done <- result{id, err, time.Since(begin)}
	}()
	// The lookup is waiting once it has asked for the change channel.
	eventually(t, "the lookup to wait", func() bool {
		h.index.mu.RLock()
		defer h.index.mu.RUnlock()
		return h.index.changed != nil
	})
	h.create(pod("late", "10.0.0.1"))

	r := <-done
	if r.err != nil || r.id.Name != "late" {
		t.Fatalf("Lookup = %+v, %v; want pod late", r.id, r.err)
	}
	if r.dur >= wait {
		t.Errorf("Lookup took %s, the whole wait", r.dur)
	}
	if got := counterFor(h, resultWaited); got != 1 {
		t.Errorf("lookups{result=waited} = %v, want 1", got)
	}
}

func TestUnknownAddressIsDeniedAfterTheWait(t *testing.T) {
	const wait = 50 * time.Millisecond
	h := start(t, Options{Wait: wait})
	begin := time.Now()
	_, err := h.index.Lookup(t.Context(), addr("10.0.0.1"))
	if !errors.Is(err, identity.ErrNotFound) {
		t.Fatalf("Lookup error = %v, want ErrNotFound", err)
	}
	if d := time.Since(begin); d < wait {
		t.Errorf("Lookup answered after %s, before the %s wait ran out", d, wait)
	}
	if got := counterFor(h, resultUnknown); got != 1 {
		t.Errorf("lookups{result=unknown} = %v, want 1", got)
	}
}

func TestCancelledCallerStopsWaiting(t *testing.T) {
	h := start(t, Options{Wait: 20 * time.Second})
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	_, err := h.index.Lookup(ctx, addr("10.0.0.1"))
	if !errors.Is(err, identity.ErrNotFound) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lookup error = %v, want ErrNotFound and DeadlineExceeded", err)
	}
	if h.index.negative.Contains(addr("10.0.0.1")) {
		t.Error("an address whose wait was cut short went into the negative cache")
	}
}

func TestNegativeCache(t *testing.T) {
	const wait = 300 * time.Millisecond
	h := start(t, Options{Wait: wait})
	ip := addr("10.0.0.1")

	if _, err := h.index.Lookup(t.Context(), ip); !errors.Is(err, identity.ErrNotFound) {
		t.Fatalf("first lookup error = %v, want ErrNotFound", err)
	}

	t.Run("a repeat lookup is answered without waiting", func(t *testing.T) {
		begin := time.Now()
		_, err := h.index.Lookup(t.Context(), ip)
		if !errors.Is(err, identity.ErrNotFound) {
			t.Fatalf("Lookup error = %v, want ErrNotFound", err)
		}
		if d := time.Since(begin); d >= wait {
			t.Errorf("repeat lookup took %s, as long as the wait", d)
		}
	})

	t.Run("the pod's add clears the entry at once", func(t *testing.T) {
		h.create(pod("late", "10.0.0.1"))
		eventually(t, "the negative entry to go", func() bool { return !h.index.negative.Contains(ip) })
		if got := lookup(h.index, "10.0.0.1"); got != found("late") {
			t.Errorf("lookup = %v, want pod late", got)
		}
	})
}

func TestNegativeEntriesExpire(t *testing.T) {
	const wait = 30 * time.Millisecond
	h := start(t, Options{Wait: wait, NegativeTTL: time.Nanosecond})
	ip := addr("10.0.0.1")
	if _, err := h.index.Lookup(t.Context(), ip); !errors.Is(err, identity.ErrNotFound) {
		t.Fatalf("first lookup error = %v, want ErrNotFound", err)
	}
	begin := time.Now()
	if _, err := h.index.Lookup(t.Context(), ip); !errors.Is(err, identity.ErrNotFound) {
		t.Fatalf("second lookup error = %v, want ErrNotFound", err)
	}
	if d := time.Since(begin); d < wait {
		t.Errorf("second lookup answered after %s: the expired entry was still used", d)
	}
}

func TestFloodOfUnknownAddressesIsBoundedAndCallsNoAPI(t *testing.T) {
	const size = 16
	h := start(t, Options{NegativeCacheSize: size})
	before := len(h.client.Actions())
	for i := range 1000 {
		ip := netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)})
		if _, err := h.index.Lookup(t.Context(), ip); !errors.Is(err, identity.ErrNotFound) {
			t.Fatalf("Lookup %s error = %v, want ErrNotFound", ip, err)
		}
	}
	if got := h.index.negative.Len(); got > size {
		t.Errorf("negative cache holds %d entries, bound is %d", got, size)
	}
	if after := len(h.client.Actions()); after != before {
		t.Errorf("lookups made %d API calls, want none", after-before)
	}
}

func TestPodWaitsForItsNamespaceToBeSeen(t *testing.T) {
	h := start(t, Options{Wait: 20 * time.Second})
	p := pod("early", "10.0.0.1")
	p.Namespace = "brand-new"
	h.create(p)

	done := make(chan answer, 1)
	go func() { done <- lookup(h.index, "10.0.0.1") }()
	eventually(t, "the pod to be indexed", func() bool { return h.index.Len() == 1 })
	select {
	case got := <-done:
		t.Fatalf("lookup answered %v before the namespace was seen", got)
	default:
	}

	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "brand-new"}}
	if _, err := h.client.CoreV1().Namespaces().Create(t.Context(), ns, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := <-done; got != found("early") {
		t.Errorf("lookup = %v, want pod early", got)
	}
}

func TestAmbiguousErrorNamesBothPods(t *testing.T) {
	h := start(t, Options{})
	h.create(pod("a", "10.0.0.5"))
	h.create(pod("b", "10.0.0.5"))
	h.expectAnswer("10.0.0.5", ambiguousAnswer)
	_, err := h.index.Lookup(t.Context(), addr("10.0.0.5"))
	if want := "10.0.0.5 claimed by team-a/a, team-a/b: " + identity.ErrAmbiguous.Error(); err.Error() != want {
		t.Errorf("error = %q, want %q", err, want)
	}
	if got := counterFor(h, resultAmbiguous); got < 1 {
		t.Errorf("lookups{result=ambiguous} = %v, want at least 1", got)
	}
}
