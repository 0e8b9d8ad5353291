package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// NodeOptions make node-a a real node: kube-controller-manager and
// kube-scheduler join the control plane, containerd (with runc and the CNI
// plugins) and the kubelet run in the node's network namespace, the
// kubelet registers node-a itself, and pods are real containers on the
// node's bridge; hostNetwork pods share the node namespace, where their
// iptables rules act on pod traffic. The cloud namespace and its metadata
// services are the same as in the default sandbox.
type NodeOptions struct {
	// RegisterWithTaints are taints node-a registers with, as the kubelet's
	// --register-with-taints takes them: key[=value]:Effect.
	RegisterWithTaints []string
}

// nodeBinaries are the programs a real node adds, under BinDir.
var nodeBinaries = []string{
	"kubelet", "kube-controller-manager", "kube-scheduler", "kubectl",
	"containerd", "containerd-shim-runc-v2", "ctr", "runc",
	"cni/bridge", "cni/host-local", "cni/loopback", "cni/portmap", "pause",
}

// nodeState is what a real node adds to a sandbox.
type nodeState struct {
	dir        string   // <run>/node
	holder     *Process // holds the node's mount namespace
	mntns      string   // /proc/<holder>/ns/mnt
	socket     string   // containerd's
	containerd *Process
	kubelet    *Process
}

// kubernetesService is the ClusterIP of the default namespace's kubernetes
// Service, which in-cluster clients (metaguard in its pod) dial.
const kubernetesService = "10.96.0.1"

// startRealNode brings up everything NodeOptions describe and waits until
// node-a is Ready and the controllers serve the default namespace.
func (s *Sandbox) startRealNode(ctx context.Context, opts NodeOptions) error {
	begin := time.Now()
	s.node = &nodeState{dir: filepath.Join(s.dir, "node")}
	if err := os.MkdirAll(s.node.dir, 0o700); err != nil {
		return err
	}
	if err := s.routeKubernetesService(ctx); err != nil {
		return err
	}
	if err := s.startControllers(); err != nil {
		return err
	}
	if err := s.createCgroupRoot(); err != nil {
		return err
	}
	if err := s.startMountNamespace(ctx); err != nil {
		return err
	}
	if err := s.startContainerd(ctx); err != nil {
		return err
	}
	if err := s.importBaseImages(ctx); err != nil {
		return fmt.Errorf("importing the pause and workload images: %w", err)
	}
	s.logf("containerd ready with the base images after %v", time.Since(begin).Round(time.Millisecond))
	if err := s.startKubelet(opts.RegisterWithTaints); err != nil {
		return err
	}
	if err := s.WaitNodeReady(ctx, 2*time.Minute); err != nil {
		return err
	}
	// The service account controller makes every namespace's "default"
	// ServiceAccount; pods cannot be created before it exists.
	err := pollUntil(ctx, time.Minute, 100*time.Millisecond, func() (bool, error) {
		_, err := s.client.CoreV1().ServiceAccounts(metav1.NamespaceDefault).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for the default ServiceAccount (is kube-controller-manager running?): %w", err)
	}
	s.logf("node %s Ready after %v", NodeName, time.Since(begin).Round(time.Millisecond))
	return nil
}

// routeKubernetesService does, for the one Service the node needs, what
// kube-proxy would: connections from the node to the kubernetes Service's
// ClusterIP reach the API server on the node's loopback. The address is
// local to the node namespace and a DNAT rule in its OUTPUT chain (in a
// chain of the harness's own) maps 443 to the API server's port.
func (s *Sandbox) routeKubernetesService(ctx context.Context) error {
	if err := ipBatch(ctx, s.nodeNetns(), "addr add "+kubernetesService+"/32 dev lo"); err != nil {
		return err
	}
	for _, args := range [][]string{
		{"-t", "nat", "-N", "MG-E2E-SERVICES"},
		{"-t", "nat", "-A", "MG-E2E-SERVICES", "-d", kubernetesService + "/32", "-p", "tcp", "--dport", "443",
			"-j", "DNAT", "--to-destination", "127.0.0.1:6443"},
		{"-t", "nat", "-A", "OUTPUT", "-j", "MG-E2E-SERVICES"},
	} {
		if _, err := s.ExecInNode(ctx, append([]string{"iptables", "-w"}, args...)...); err != nil {
			return fmt.Errorf("routing the kubernetes Service: %w", err)
		}
	}
	return nil
}

// WaitNodeReady waits until node-a's Ready condition is True.
func (s *Sandbox) WaitNodeReady(ctx context.Context, timeout time.Duration) error {
	var last string
	err := pollUntil(ctx, timeout, 200*time.Millisecond, func() (bool, error) {
		if s.node != nil && s.node.kubelet != nil {
			if ok, werr := s.node.kubelet.Exited(); ok {
				return false, fmt.Errorf("kubelet exited (%v):\n%s", werr, s.node.kubelet.tail(30))
			}
		}
		n, err := s.client.CoreV1().Nodes().Get(ctx, NodeName, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			last = "not registered"
			return false, nil
		}
		if err != nil {
			last = err.Error()
			return false, nil
		}
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady {
				last = string(c.Status) + ": " + c.Message
				return c.Status == corev1.ConditionTrue, nil
			}
		}
		last = "no Ready condition"
		return false, nil
	})
	if err != nil {
		tail := ""
		if s.node != nil && s.node.kubelet != nil {
			tail = s.node.kubelet.tail(30)
		}
		return fmt.Errorf("waiting for node %s to be Ready (last: %s): %w\n%s", NodeName, last, err, tail)
	}
	return nil
}

// Kubectl runs the pinned kubectl as the cluster admin in the node
// namespace (where the API server listens), as an operator on the node
// would, and returns its stdout; a failure carries stderr.
func (s *Sandbox) Kubectl(ctx context.Context, args ...string) ([]byte, error) {
	return execIn(ctx, s.nodeNetns(), append([]string{filepath.Join(s.binDir, "kubectl"), "--kubeconfig=" + s.adminKubeconfig}, args...)...)
}

// HasRealNode reports whether node-a is a real node (Options.Node).
func (s *Sandbox) HasRealNode() bool { return s.node != nil }

// stopRealNode stops the node before the rest of the sandbox: the kubelet
// first (so it restarts nothing), then every container (by cgroup: a
// container's processes are children of a shim, not of anything we
// started), containerd and its shims (every process left in the node's
// mount namespace), the namespace's holder, and last the cgroups.
func (s *Sandbox) stopRealNode() error {
	n := s.node
	if n == nil {
		return nil
	}
	var errs []error
	if n.kubelet != nil {
		errs = append(errs, n.kubelet.Stop())
	}
	errs = append(errs, killCgroupTasks(s.cgroupRoot()))
	if n.containerd != nil {
		errs = append(errs, n.containerd.Stop())
	}
	if n.holder != nil {
		killMountNamespace(n.mntns, n.holder.Pid())
		errs = append(errs, n.holder.Kill())
	}
	errs = append(errs, removeCgroupTree(s.cgroupRoot()))
	return errors.Join(errs...)
}

// killCgroupTasks SIGKILLs every process under the cgroup, in every
// hierarchy.
func killCgroupTasks(name string) error {
	hs, err := cgroupHierarchies()
	if err != nil {
		return err
	}
	for _, h := range hs {
		killCgroupProcs(cgroupDirs(filepath.Join(h, name)))
	}
	return nil
}

// killMountNamespace SIGKILLs every process (but holder) whose mount
// namespace is the node's: containerd's shims, which outlive containerd by
// design.
func killMountNamespace(mntns string, holder int) {
	want, err := os.Readlink(mntns)
	if err != nil {
		return
	}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == holder {
			continue
		}
		if ns, err := os.Readlink("/proc/" + e.Name() + "/ns/mnt"); err == nil && ns == want {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// nodeMissing lists what Options.Node needs that BinDir (make
// e2e-node-tools bin/pause) and PATH lack.
func nodeMissing(binDir string) (bins, tools []string) {
	for _, b := range nodeBinaries {
		if _, err := os.Stat(filepath.Join(binDir, b)); err != nil {
			bins = append(bins, "bin/"+b)
		}
	}
	for _, tool := range []string{"nsenter", "unshare", "mount"} {
		if _, err := exec.LookPath(tool); err != nil {
			tools = append(tools, tool+" in PATH (apt-get install util-linux mount)")
		}
	}
	return bins, tools
}
