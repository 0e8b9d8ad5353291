package podindex

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	"metaguard.dev/metaguard/identity"
)

// podEntry is what the index keeps per live pod: its identity, computed once
// per event so a lookup only copies it, and the addresses it claims, so the
// next event for the same pod can take exactly those back.
type podEntry struct {
	key string // namespace/name, the informer's key
	id  identity.Identity
	ips []netip.Addr
	// gone is when the pod stops answering for its addresses although no
	// event says so: its deletion deadline (deletionTimestamp, which the
	// API server sets to the request time plus the grace period). By then
	// the kubelet has killed it and the CNI may hand its address to a new
	// pod whose own object this node has not seen yet. Zero: never.
	gone time.Time
}

// IdentityOf returns the identity policy sees for pod, with namespaceLabels
// as the labels of its namespace. The maps are shared, not copied.
func IdentityOf(pod *corev1.Pod, namespaceLabels map[string]string) identity.Identity {
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		// Older clients set only the deprecated alias; the API server treats
		// the two as one field.
		sa = pod.Spec.DeprecatedServiceAccount
	}
	return identity.Identity{
		Namespace:       pod.Namespace,
		Name:            pod.Name,
		UID:             string(pod.UID),
		ServiceAccount:  sa,
		Labels:          pod.Labels,
		NamespaceLabels: namespaceLabels,
	}
}

// entryFor returns the entry to index for pod, or nil when the pod must not
// answer for any address.
func (x *Index) entryFor(pod *corev1.Pod) *podEntry {
	switch {
	case pod.Spec.NodeName != x.opts.NodeName:
		// The field selector already keeps these out; this guards against a
		// server or a fake that ignores it.
		return nil
	case pod.Spec.HostNetwork:
		// Its addresses are the node's: it would answer for every
		// hostNetwork pod and the node itself.
		return nil
	case pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed:
		// Its sandbox is gone and the CNI may already have handed the
		// address to a new pod.
		return nil
	case allTerminated(pod):
		// Every container has exited (the kubelet says so before the
		// phase follows): nothing of the pod can still make a request,
		// and its sandbox is being torn down.
		return nil
	}
	ips := podAddrs(pod)
	if len(ips) == 0 {
		return nil
	}
	e := &podEntry{key: cache.MetaObjectToName(pod).String(), id: IdentityOf(pod, nil), ips: ips}
	if pod.DeletionTimestamp != nil {
		e.gone = pod.DeletionTimestamp.Time
	}
	return e
}

// allTerminated reports whether the kubelet reports every container of the
// pod terminated (init containers aside: they run before the others).
func allTerminated(pod *corev1.Pod) bool {
	if len(pod.Status.ContainerStatuses) == 0 || len(pod.Status.ContainerStatuses) < len(pod.Spec.Containers) {
		return false
	}
	for _, c := range pod.Status.ContainerStatuses {
		if c.State.Terminated == nil {
			return false
		}
	}
	return true
}

// podAddrs parses every address of status.podIPs (and status.podIP, which
// old or hand-written objects may carry alone), in the form Lookup uses.
func podAddrs(pod *corev1.Pod) []netip.Addr {
	ips := make([]netip.Addr, 0, len(pod.Status.PodIPs)+1)
	add := func(s string) {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return
		}
		a = a.Unmap()
		if !slices.Contains(ips, a) {
			ips = append(ips, a)
		}
	}
	for _, p := range pod.Status.PodIPs {
		add(p.IP)
	}
	add(pod.Status.PodIP)
	return ips
}

func (x *Index) onPod(obj any) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		x.log.Warn("pod event with unexpected object", "type", typeName(obj))
		return
	}
	key := cache.MetaObjectToName(pod).String()
	e := x.entryFor(pod)

	x.mu.Lock()
	defer x.mu.Unlock()
	x.unindexLocked(key)
	if e != nil {
		x.indexLocked(e)
	}
	x.changedLocked()
}

func (x *Index) onPodDelete(obj any) {
	// A relist that no longer contains a pod whose deletion we missed
	// delivers a tombstone; its key is all we need.
	var key string
	switch o := obj.(type) {
	case *corev1.Pod:
		key = cache.MetaObjectToName(o).String()
	case cache.DeletedFinalStateUnknown:
		key = o.Key
	default:
		x.log.Warn("pod delete with unexpected object", "type", typeName(obj))
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	x.unindexLocked(key)
	x.changedLocked()
}

func (x *Index) indexLocked(e *podEntry) {
	x.pods[e.key] = e
	for _, ip := range e.ips {
		claims := append(x.byIP[ip], e)
		x.byIP[ip] = claims
		if len(claims) == 2 {
			// The old pod's end has not been seen yet; both are denied until
			// it is, since either could be the caller.
			x.log.Warn("address claimed by two live pods; denying it until one is gone",
				"ip", ip, "pod", claims[0].key, "other_pod", claims[1].key)
		}
		// An address known to be nobody's is now somebody's.
		x.negative.Remove(ip)
	}
	x.metrics.podsTracked.Set(float64(len(x.pods)))
}

func (x *Index) unindexLocked(key string) {
	old, ok := x.pods[key]
	if !ok {
		return
	}
	delete(x.pods, key)
	for _, ip := range old.ips {
		claims := slices.DeleteFunc(x.byIP[ip], func(e *podEntry) bool { return e == old })
		if len(claims) == 0 {
			delete(x.byIP, ip)
		} else {
			x.byIP[ip] = claims
		}
	}
	x.metrics.podsTracked.Set(float64(len(x.pods)))
}

func (x *Index) onNamespace(obj any) {
	ns, ok := obj.(*corev1.Namespace)
	if !ok {
		x.log.Warn("namespace event with unexpected object", "type", typeName(obj))
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	x.nsLabels[ns.Name] = ns.Labels
	x.changedLocked()
}

func (x *Index) onNamespaceDelete(obj any) {
	var name string
	switch o := obj.(type) {
	case *corev1.Namespace:
		name = o.Name
	case cache.DeletedFinalStateUnknown:
		name = o.Key // cluster-scoped: the key is the name
	default:
		x.log.Warn("namespace delete with unexpected object", "type", typeName(obj))
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	delete(x.nsLabels, name)
	x.changedLocked()
}

// changedLocked wakes every waiting Lookup to look again. The channel is made
// only when someone waits, so events cost nothing in the common case.
func (x *Index) changedLocked() {
	if x.changed != nil {
		close(x.changed)
		x.changed = nil
	}
}

// slimPod keeps only what entryFor reads, so the informer's store holds a
// few hundred bytes per pod instead of full specs and managedFields.
func slimPod(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:              pod.Name,
			Namespace:         pod.Namespace,
			UID:               pod.UID,
			ResourceVersion:   pod.ResourceVersion,
			Labels:            pod.Labels,
			DeletionTimestamp: pod.DeletionTimestamp,
		},
		Spec: corev1.PodSpec{
			NodeName:                 pod.Spec.NodeName,
			HostNetwork:              pod.Spec.HostNetwork,
			ServiceAccountName:       pod.Spec.ServiceAccountName,
			DeprecatedServiceAccount: pod.Spec.DeprecatedServiceAccount,
			// Only the count matters, for allTerminated.
			Containers: make([]corev1.Container, len(pod.Spec.Containers)),
		},
		Status: corev1.PodStatus{
			Phase:             pod.Status.Phase,
			PodIP:             pod.Status.PodIP,
			PodIPs:            pod.Status.PodIPs,
			ContainerStatuses: slimContainerStatuses(pod.Status.ContainerStatuses),
		},
	}, nil
}

// slimContainerStatuses keeps whether each container has terminated.
func slimContainerStatuses(in []corev1.ContainerStatus) []corev1.ContainerStatus {
	if len(in) == 0 {
		return nil
	}
	out := make([]corev1.ContainerStatus, len(in))
	for i, c := range in {
		if c.State.Terminated != nil {
			out[i].State.Terminated = &corev1.ContainerStateTerminated{}
		}
	}
	return out
}

// slimNamespace keeps a namespace's name and labels, all namespaceSelector
// reads.
func slimNamespace(obj any) (any, error) {
	ns, ok := obj.(*corev1.Namespace)
	if !ok {
		return obj, nil
	}
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		Name:            ns.Name,
		UID:             ns.UID,
		ResourceVersion: ns.ResourceVersion,
		Labels:          ns.Labels,
	}}, nil
}

func typeName(obj any) string { return fmt.Sprintf("%T", obj) }
