package sandbox

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
)

// PodSpec describes a pod to add. Zero values mean: namespace "default",
// service account "default", node NodeName, next free address, Running.
type PodSpec struct {
	Namespace      string
	Name           string
	Labels         map[string]string
	ServiceAccount string
	Node           string
	// HostNetwork pods share the node's namespace and addresses.
	HostNetwork bool
	// IP picks the pod's IPv4 address instead of the next free one: a
	// node-b pod that claims a node-a pod's address, or a new pod that
	// reuses a deleted one's.
	IP netip.Addr
	// APIOnly creates only the Pod object, no namespace: what a pod on
	// another node is, or a stale object still claiming an IP.
	APIOnly bool
	// Pending leaves the pod Pending without IPs in its status, as a pod
	// whose sandbox is being set up; SetPodPhase publishes them later.
	Pending bool
}

// Pod is a pod the sandbox added.
type Pod struct {
	Namespace string
	Name      string
	Node      string
	UID       types.UID
	IP        netip.Addr
	IPv6      netip.Addr
	// Netns is the pod's network namespace: its own, the node's for
	// hostNetwork pods, "" for API-only pods.
	Netns string

	slot     int // last byte of IP on node-a, 0 if none
	hostVeth string
}

func (p *Pod) String() string { return p.Namespace + "/" + p.Name }

// AddPod creates the pod's namespace and Pod object (with its Kubernetes
// namespace and service account when missing) and publishes its IPs
// through the status subresource, as a kubelet would once the sandbox is
// up.
func (s *Sandbox) AddPod(ctx context.Context, spec PodSpec) (*Pod, error) {
	if spec.Namespace == "" {
		spec.Namespace = metav1.NamespaceDefault
	}
	if spec.ServiceAccount == "" {
		spec.ServiceAccount = "default"
	}
	if spec.Node == "" {
		spec.Node = NodeName
	}
	pod, err := s.allocate(spec)
	if err != nil {
		return nil, err
	}
	if pod.Netns != "" && pod.slot != 0 {
		if err := s.addPodNetns(ctx, pod.Netns, pod.hostVeth, pod.IP, pod.IPv6); err != nil {
			s.release(pod)
			return nil, fmt.Errorf("wiring pod %s: %w", pod, err)
		}
	}
	if err := s.createPodObject(ctx, spec, pod); err != nil {
		s.release(pod)
		return nil, err
	}
	return pod, nil
}

// allocate picks the pod's addresses and names under the sandbox lock.
func (s *Sandbox) allocate(spec PodSpec) (*Pod, error) {
	pod := &Pod{Namespace: spec.Namespace, Name: spec.Name, Node: spec.Node}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case spec.HostNetwork:
		pod.IP, pod.IPv6 = HostIP, HostIPv6
		if spec.Node == NodeName {
			pod.Netns = s.nodeNetns()
		}
	case spec.Node == NodeName && !spec.APIOnly:
		slot := 0
		if spec.IP.IsValid() {
			if !PodCIDR.Contains(spec.IP) {
				return nil, fmt.Errorf("pod %s: IP %s is not in node-a's %s", pod, spec.IP, PodCIDR)
			}
			slot = int(spec.IP.As4()[3])
			if slot < 2 || slot > 254 || s.slots[slot] {
				return nil, fmt.Errorf("pod %s: IP %s is in use or reserved", pod, spec.IP)
			}
		} else {
			for n := 2; n <= 254; n++ {
				if !s.slots[n] {
					slot = n
					break
				}
			}
			if slot == 0 {
				return nil, fmt.Errorf("pod %s: node-a has no free pod address", pod)
			}
		}
		s.slots[slot] = true
		pod.slot = slot
		pod.IP = netip.AddrFrom4([4]byte{10, 244, 0, byte(slot)})
		pod.IPv6 = slotV6(PodCIDRv6, slot)
		pod.Netns = fmt.Sprintf("%s-p%d", s.Prefix, slot)
		pod.hostVeth = fmt.Sprintf("vp%d", slot)
	default:
		switch {
		case spec.IP.IsValid():
			pod.IP = spec.IP
		case spec.Node == NodeName:
			return nil, fmt.Errorf("pod %s: an API-only pod on %s must name the IP it claims", pod, NodeName)
		default:
			s.apiOnly++
			pod.IP = netip.AddrFrom4([4]byte{10, 244, 1, byte(s.apiOnly%250 + 2)})
		}
		if !pod.IP.Is4() {
			return nil, fmt.Errorf("pod %s: IP %s is not IPv4", pod, pod.IP)
		}
		v6net := netip.MustParsePrefix("fd00:10:244:1::/64")
		if PodCIDR.Contains(pod.IP) {
			v6net = PodCIDRv6
		}
		pod.IPv6 = slotV6(v6net, int(pod.IP.As4()[3]))
	}
	return pod, nil
}

func slotV6(p netip.Prefix, slot int) netip.Addr {
	b := p.Addr().As16()
	b[15] = byte(slot)
	return netip.AddrFrom16(b)
}

// release gives a pod's namespace and slot back.
func (s *Sandbox) release(pod *Pod) {
	if pod.slot != 0 {
		if err := deleteNetns(pod.Netns); err != nil {
			s.logf("deleting %s: %v", pod.Netns, err)
		}
		s.mu.Lock()
		delete(s.slots, pod.slot)
		s.mu.Unlock()
	}
}

func (s *Sandbox) createPodObject(ctx context.Context, spec PodSpec, pod *Pod) error {
	if err := s.EnsureNamespace(ctx, spec.Namespace, nil); err != nil {
		return err
	}
	if err := s.ensureServiceAccount(ctx, spec.Namespace, spec.ServiceAccount); err != nil {
		return err
	}
	zero := int64(0)
	obj := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: spec.Namespace, Name: spec.Name, Labels: spec.Labels},
		Spec: corev1.PodSpec{
			NodeName:                      spec.Node,
			ServiceAccountName:            spec.ServiceAccount,
			HostNetwork:                   spec.HostNetwork,
			TerminationGracePeriodSeconds: &zero,
			Containers:                    []corev1.Container{{Name: "app", Image: "registry.k8s.io/pause:3.10"}},
		},
	}
	created, err := s.client.CoreV1().Pods(spec.Namespace).Create(ctx, obj, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("creating pod %s: %w", pod, err)
	}
	pod.UID = created.UID
	phase := corev1.PodRunning
	if spec.Pending {
		phase = corev1.PodPending
	}
	return s.SetPodPhase(ctx, pod, phase)
}

// SetPodPhase sets the pod's phase through the status subresource. Every
// phase but Pending publishes the pod's IPs, as the kubelet keeps them on
// Succeeded and Failed pods.
func (s *Sandbox) SetPodPhase(ctx context.Context, pod *Pod, phase corev1.PodPhase) error {
	pods := s.client.CoreV1().Pods(pod.Namespace)
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := pods.Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		now := metav1.NewTime(time.Now())
		hostIP := HostIP.String()
		if pod.Node != NodeName {
			hostIP = "172.31.1.1"
		}
		cur.Status.Phase = phase
		cur.Status.HostIP = hostIP
		cur.Status.HostIPs = []corev1.HostIP{{IP: hostIP}}
		cur.Status.StartTime = &now
		ready := corev1.ConditionFalse
		if phase == corev1.PodRunning {
			ready = corev1.ConditionTrue
		}
		cur.Status.Conditions = []corev1.PodCondition{
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodReady, Status: ready, LastTransitionTime: now},
		}
		if phase != corev1.PodPending {
			cur.Status.PodIP = pod.IP.String()
			cur.Status.PodIPs = []corev1.PodIP{{IP: pod.IP.String()}, {IP: pod.IPv6.String()}}
		}
		_, err = pods.UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("setting status of pod %s: %w", pod, err)
	}
	return nil
}

// SetPodLabels replaces the pod's labels.
func (s *Sandbox) SetPodLabels(ctx context.Context, pod *Pod, labels map[string]string) error {
	pods := s.client.CoreV1().Pods(pod.Namespace)
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := pods.Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		cur.Labels = labels
		_, err = pods.Update(ctx, cur, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("labelling pod %s: %w", pod, err)
	}
	return nil
}

// DeletePod deletes the Pod object at once (no kubelet would finish a
// graceful deletion) and then the pod's network namespace.
func (s *Sandbox) DeletePod(ctx context.Context, pod *Pod) error {
	zero := int64(0)
	err := s.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	if err != nil {
		return fmt.Errorf("deleting pod %s: %w", pod, err)
	}
	s.release(pod)
	return nil
}

// NodeHTTPClient is an HTTP client whose connections start in the node
// namespace (metaguard's metrics port, the node's own IMDS access). It
// never reuses connections, follows no redirects and uses no proxy.
func (s *Sandbox) NodeHTTPClient() *http.Client { return netnsHTTPClient(s.nodeNetns()) }

// PodHTTPClient is an HTTP client whose connections start in the pod's
// namespace, from the pod's IP, as the workload's own would. Like
// NodeHTTPClient it opens a new connection per request, so a test sees the
// rules in force now, not those of a kept-alive connection.
func (s *Sandbox) PodHTTPClient(pod *Pod) *http.Client { return netnsHTTPClient(pod.Netns) }

func netnsHTTPClient(netns string) *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			DialContext:       NetnsDialer(netns),
			DisableKeepAlives: true,
			Proxy:             nil,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       30 * time.Second,
	}
}

// PodClientResult is what bin/podclient or bin/jsclient printed.
type PodClientResult struct {
	OK          bool   `json:"ok"`
	Status      int    `json:"status"`
	Body        string `json:"body"`
	Error       string `json:"error"`
	Role        string `json:"role"`
	AccessKeyID string `json:"access_key_id"`
	// Values and Errors are what the GCP and Azure subcommands read, by
	// name ("project_id", "token"), and the errors by the same names.
	Values map[string]string `json:"values"`
	Errors map[string]string `json:"errors"`
	// ElapsedMS is how long the client's call took, retries included.
	ElapsedMS int64 `json:"elapsed_ms"`
}

// PodClient runs bin/podclient (the AWS SDK for Go v2 IMDS client) in the
// pod's namespace with args such as "aws-get", "instance-id" or
// "-endpoint", "http://169.254.169.250", "aws-creds".
func (s *Sandbox) PodClient(ctx context.Context, pod *Pod, args ...string) (PodClientResult, error) {
	var res PodClientResult
	out, err := s.ExecInPod(ctx, pod, append([]string{filepath.Join(s.binDir, "podclient")}, args...)...)
	if err != nil {
		return res, err
	}
	if err := json.Unmarshal(out, &res); err != nil {
		return res, fmt.Errorf("decoding podclient output %q: %w", out, err)
	}
	return res, nil
}
