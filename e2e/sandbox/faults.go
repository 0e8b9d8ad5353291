package sandbox

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"time"

	"k8s.io/client-go/rest"
)

// Helpers for fault and attack tests: an API server outage that refuses
// connections (not only a frozen one), a pod whose network exists before
// its Pod object, and listeners inside a namespace for upstreams a test
// controls.

// NetnsListen opens a listener whose socket lives in the named network
// namespace, for a server the test itself runs there (a slow or broken
// upstream in the cloud namespace). Like NetnsDialer, only the socket is
// in the namespace: Accept works from any goroutine.
func NetnsListen(netns, network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := inNetns(netns, func() error {
		var err error
		ln, err = net.Listen(network, addr)
		return err
	})
	return ln, err
}

// StopAPIServer kills kube-apiserver (etcd keeps running): connections to
// it are refused, as to a control plane that crashed or is being upgraded.
// The killed process no longer counts for Healthy. StartAPIServer brings it
// back with the same flags, certificates and etcd.
func (s *Sandbox) StopAPIServer() error {
	s.mu.Lock()
	p := s.apiserver
	s.procs = slices.DeleteFunc(s.procs, func(q *Process) bool { return q == p })
	s.mu.Unlock()
	if p == nil {
		return errors.New("no kube-apiserver is running")
	}
	return p.Kill()
}

// StartAPIServer starts kube-apiserver again exactly as it was first
// started and waits until its /readyz is 200. It is a no-op while the API
// server runs.
func (s *Sandbox) StartAPIServer(ctx context.Context) error {
	s.mu.Lock()
	old := s.apiserver
	s.mu.Unlock()
	if old == nil {
		return errors.New("the sandbox never started a kube-apiserver")
	}
	if ok, _ := old.Exited(); !ok {
		return nil
	}
	// The old command line is "ip netns exec <node> <path> <args...>".
	argv := old.cmd.Args
	if len(argv) < 5 {
		return fmt.Errorf("unexpected kube-apiserver command line %q", argv)
	}
	p, err := s.startProc(procSpec{netns: s.nodeNetns(), name: "kube-apiserver", path: argv[4], args: argv[5:], disposable: true})
	if err != nil {
		return err
	}
	httpClient, err := rest.HTTPClientFor(s.admin)
	if err != nil {
		return fmt.Errorf("building admin HTTP client: %w", err)
	}
	err = pollUntil(ctx, 60*time.Second, 100*time.Millisecond, func() (bool, error) {
		if ok, werr := p.Exited(); ok {
			return false, fmt.Errorf("%s exited (%v):\n%s", p.Name, werr, p.tail(20))
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, APIServerURL+"/readyz", nil)
		if err != nil {
			return false, err
		}
		resp, err := httpClient.Do(req)
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for the restarted kube-apiserver: %w", err)
	}
	s.mu.Lock()
	s.apiserver = p
	s.mu.Unlock()
	return nil
}

// AddPodNetwork makes the pod's network namespace and addresses on node-a
// but no Pod object: a pod the kubelet started while the API server could
// not be told, or an address that later turns up in another pod's status.
// CreatePodObject publishes it. Only node-a pods with their own namespace
// qualify.
func (s *Sandbox) AddPodNetwork(ctx context.Context, spec PodSpec) (*Pod, error) {
	if spec.Namespace == "" {
		spec.Namespace = "default"
	}
	if spec.Node == "" {
		spec.Node = NodeName
	}
	if spec.Node != NodeName || spec.APIOnly || spec.HostNetwork {
		return nil, fmt.Errorf("pod %s/%s: only a node-a pod with its own network namespace can exist without its object", spec.Namespace, spec.Name)
	}
	pod, err := s.allocate(spec)
	if err != nil {
		return nil, err
	}
	if err := s.addPodNetns(ctx, pod.Netns, pod.hostVeth, pod.IP, pod.IPv6); err != nil {
		s.release(pod)
		return nil, fmt.Errorf("wiring pod %s: %w", pod, err)
	}
	return pod, nil
}

// CreatePodObject creates the Pod object of a pod made by AddPodNetwork,
// with spec's labels, service account and phase, and publishes its IPs.
func (s *Sandbox) CreatePodObject(ctx context.Context, pod *Pod, spec PodSpec) error {
	spec.Namespace, spec.Name, spec.Node = pod.Namespace, pod.Name, pod.Node
	if spec.ServiceAccount == "" {
		spec.ServiceAccount = "default"
	}
	return s.createPodObject(ctx, spec, pod)
}
