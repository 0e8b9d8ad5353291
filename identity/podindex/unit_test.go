package podindex

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"

	"metaguard.dev/metaguard/identity"
)

// unstarted returns an Index fed by calling its handlers directly, for tests
// that need exact control over events (tombstones) or no informer noise
// (allocation counts, benchmarks).
func unstarted(t testing.TB) *Index {
	t.Helper()
	x, err := New(fake.NewClientset(), Options{NodeName: testNode}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, ns := range testNamespaces() {
		x.onNamespace(ns)
	}
	return x
}

func TestTombstonesUnindex(t *testing.T) {
	t.Run("a pod tombstone removes the pod by key", func(t *testing.T) {
		x := unstarted(t)
		p := pod("a", "10.0.0.1")
		x.onPod(p)
		if got := lookup(x, "10.0.0.1"); got != found("a") {
			t.Fatalf("lookup = %v, want pod a", got)
		}
		x.onPodDelete(cache.DeletedFinalStateUnknown{Key: testNS + "/a", Obj: p})
		if got := lookup(x, "10.0.0.1"); got != unknown {
			t.Errorf("lookup after tombstone = %v, want unknown", got)
		}
		if x.Len() != 0 {
			t.Errorf("Len = %d after tombstone, want 0", x.Len())
		}
	})
	t.Run("a tombstone whose object is stale still removes the pod", func(t *testing.T) {
		x := unstarted(t)
		x.onPod(pod("a", "10.0.0.2"))
		x.onPodDelete(cache.DeletedFinalStateUnknown{Key: testNS + "/a", Obj: pod("a", "10.0.0.1")})
		if got := lookup(x, "10.0.0.2"); got != unknown {
			t.Errorf("lookup = %v, want unknown", got)
		}
	})
	t.Run("a namespace tombstone forgets the namespace", func(t *testing.T) {
		x := unstarted(t)
		x.onPod(pod("a", "10.0.0.1"))
		x.onNamespaceDelete(cache.DeletedFinalStateUnknown{Key: testNS})
		// Without its namespace's labels a pod cannot be judged; with no
		// wait configured that is an immediate unknown.
		if got := lookup(x, "10.0.0.1"); got != unknown {
			t.Errorf("lookup = %v, want unknown", got)
		}
	})
	t.Run("objects of the wrong type are ignored", func(t *testing.T) {
		x := unstarted(t)
		x.onPod("not a pod")
		x.onPodDelete(42)
		x.onNamespace(pod("a"))
		x.onNamespaceDelete(nil)
		if x.Len() != 0 {
			t.Errorf("Len = %d, want 0", x.Len())
		}
	})
}

func TestIdentityOf(t *testing.T) {
	nsLabels := map[string]string{"env": "prod"}
	tests := []struct {
		name string
		pod  func(*corev1.Pod)
		want identity.Identity
	}{
		{
			name: "every field comes from the pod and the namespace labels given",
			pod:  func(*corev1.Pod) {},
			want: identity.Identity{Namespace: testNS, Name: "web", UID: "uid-web", ServiceAccount: "sa-web",
				Labels: map[string]string{"app": "web"}, NamespaceLabels: nsLabels},
		},
		{
			name: "the deprecated serviceAccount field is used when serviceAccountName is empty",
			pod: func(p *corev1.Pod) {
				p.Spec.ServiceAccountName = ""
				p.Spec.DeprecatedServiceAccount = "legacy"
			},
			want: identity.Identity{Namespace: testNS, Name: "web", UID: "uid-web", ServiceAccount: "legacy",
				Labels: map[string]string{"app": "web"}, NamespaceLabels: nsLabels},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := pod("web", "10.0.0.1")
			tt.pod(p)
			if got := IdentityOf(p, nsLabels); fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("IdentityOf = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestSlimPodKeepsOnlyWhatTheIndexReads(t *testing.T) {
	full := pod("web", "10.0.0.1", "fd00::1")
	full.Annotations = map[string]string{"big": "annotation"}
	full.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kubelet"}}
	full.OwnerReferences = []metav1.OwnerReference{{Name: "rs"}}
	full.Spec.Containers = []corev1.Container{{Name: "c", Image: "img"}}
	full.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady}}
	now := metav1.Now()
	full.DeletionTimestamp = &now

	out, err := slimPod(full)
	if err != nil {
		t.Fatal(err)
	}
	slim := out.(*corev1.Pod)
	if slim.Annotations != nil || slim.ManagedFields != nil || slim.OwnerReferences != nil ||
		len(slim.Spec.Containers) != 1 || slim.Spec.Containers[0].Image != "" || slim.Status.Conditions != nil {
		t.Errorf("slimPod kept fields the index never reads: %+v", slim)
	}
	x := unstarted(t)
	if got, want := fmt.Sprint(x.entryFor(slim)), fmt.Sprint(x.entryFor(full)); got != want {
		t.Errorf("entry from slim pod = %s, from full pod = %s", got, want)
	}
	if slim.DeletionTimestamp == nil {
		t.Error("slimPod dropped deletionTimestamp")
	}
	again, _ := slimPod(slim)
	if fmt.Sprint(again) != fmt.Sprint(slim) {
		t.Error("slimPod is not idempotent")
	}
	if other, _ := slimPod("not a pod"); other != "not a pod" {
		t.Error("slimPod changed an object that is not a pod")
	}
}

func TestSlimNamespaceKeepsLabels(t *testing.T) {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name: "team-a", Labels: map[string]string{"env": "dev"},
		Annotations:   map[string]string{"a": "b"},
		ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}},
	}}
	out, _ := slimNamespace(ns)
	slim := out.(*corev1.Namespace)
	if slim.Name != "team-a" || slim.Labels["env"] != "dev" || slim.Annotations != nil || slim.ManagedFields != nil {
		t.Errorf("slimNamespace = %+v", slim)
	}
}

func TestLookupHitDoesNotAllocate(t *testing.T) {
	x := unstarted(t)
	x.onPod(pod("web", "10.0.0.1", "fd00::1"))
	ctx := context.Background()
	for _, ip := range []string{"10.0.0.1", "fd00::1", "::ffff:10.0.0.1"} {
		t.Run("a hit on "+ip+" allocates nothing", func(t *testing.T) {
			a := netip.MustParseAddr(ip)
			allocs := testing.AllocsPerRun(1000, func() {
				if _, err := x.Lookup(ctx, a); err != nil {
					t.Fatal(err)
				}
			})
			if allocs != 0 {
				t.Errorf("Lookup hit allocates %v times per call, want 0", allocs)
			}
		})
	}
}

// benchIndex holds a node's worth of pods (110, the kubelet default maximum)
// plus a few dual-stack ones.
func benchIndex(b *testing.B) *Index {
	x := unstarted(b)
	for i := range 110 {
		x.onPod(pod(fmt.Sprintf("pod-%d", i), fmt.Sprintf("10.0.%d.%d", i/250, 1+i%250)))
	}
	x.onPod(pod("dual", "10.0.9.1", "fd00::9:1"))
	return x
}

func BenchmarkLookupHit(b *testing.B) {
	x := benchIndex(b)
	ctx := context.Background()
	a := netip.MustParseAddr("10.0.0.50")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := x.Lookup(ctx, a); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkLookupHitIPv6(b *testing.B) {
	x := benchIndex(b)
	ctx := context.Background()
	a := netip.MustParseAddr("fd00::9:1")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := x.Lookup(ctx, a); err != nil {
			b.Fatal(err)
		}
	}
}

// Concurrent hits share the read lock; this shows what contention on it
// costs with every core asking.
func BenchmarkLookupHitParallel(b *testing.B) {
	x := benchIndex(b)
	a := netip.MustParseAddr("10.0.0.50")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		for pb.Next() {
			if _, err := x.Lookup(ctx, a); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// A never-pod address already in the negative cache: the flood case.
func BenchmarkLookupNegativeHit(b *testing.B) {
	x := benchIndex(b)
	ctx := context.Background()
	a := netip.MustParseAddr("10.200.0.1")
	_, _ = x.Lookup(ctx, a) // zero wait: straight into the negative cache
	b.ReportAllocs()
	for b.Loop() {
		_, _ = x.Lookup(ctx, a)
	}
}
