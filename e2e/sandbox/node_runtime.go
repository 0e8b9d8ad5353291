package sandbox

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"metaguard.dev/metaguard/deploy/image/imagebuild"
)

// The images every real node has before the kubelet starts; nothing is ever
// pulled (no registry can be reached, and the kubelet is never allowed to
// try: the tests' pods say imagePullPolicy IfNotPresent or Never).
const (
	// PauseImage is the pod sandbox image, pinned in containerd's config
	// so that image garbage collection never removes it. Its content is
	// e2e/cmd/pause.
	PauseImage = "registry.k8s.io/pause:3.10"
	// WorkloadImage holds podclient and nothing else: the workload
	// containers of the node tests.
	WorkloadImage = "localhost/metaguard-e2e/workload:1"
)

// startMountNamespace starts the process that holds the node's mount
// namespace, private to the node's kubelet and containerd (and so to every
// container): their mounts (overlay snapshots, volumes, network namespace
// handles) never show in the machine's mount table and vanish with the
// namespace. ip netns exec is not used for them because it remounts /sys
// for the network namespace, which drops /sys/fs/cgroup. In the namespace,
// fresh tmpfs hide /var and /run: the kubelet and containerd write to a few
// fixed paths there (/var/log/containers, /var/lib/cni, /run/containerd)
// that must be neither the machine's nor another run's.
func (s *Sandbox) startMountNamespace(ctx context.Context) error {
	holder, err := s.startProc(procSpec{name: "node-mounts", path: "unshare", disposable: true,
		args: []string{"--mount", "--propagation", "private", "sleep", "infinity"}})
	if err != nil {
		return err
	}
	self, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return err
	}
	mntns := fmt.Sprintf("/proc/%d/ns/mnt", holder.Pid())
	err = pollUntil(ctx, 10*time.Second, 10*time.Millisecond, func() (bool, error) {
		if ok, werr := holder.Exited(); ok {
			return false, fmt.Errorf("unshare exited (%v): %s", werr, holder.tail(5))
		}
		ns, err := os.Readlink(mntns)
		return err == nil && ns != self, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for the node's mount namespace: %w", err)
	}
	s.node.holder, s.node.mntns = holder, mntns
	script := strings.Join([]string{
		"mount -t tmpfs -o mode=0755 node-var /var",
		"mkdir -p /var/lib/cni /var/log/containers /var/log/pods /var/lib/kubelet",
		"mkdir -m 1777 /var/tmp",
		"ln -s /run /var/run",
		"mount -t tmpfs -o mode=0755 node-run /run",
		"mkdir -p /run/lock",
	}, "\n")
	if out, err := s.inNode(ctx, "", "sh", "-ec", script).CombinedOutput(); err != nil {
		return fmt.Errorf("preparing the node's mount namespace: %w: %s", err, out)
	}
	return nil
}

// nodeArgv runs argv in the node's mount namespace and, when netns is not
// empty, in that network namespace, through nsenter, which execs in place:
// the pid is the program's own.
func (s *Sandbox) nodeArgv(netns string, argv ...string) []string {
	out := []string{"nsenter", "--mount=" + s.node.mntns}
	if netns != "" {
		out = append(out, "--net="+filepath.Join(netnsDir, netns))
	}
	return append(append(out, "--"), argv...)
}

func (s *Sandbox) inNode(ctx context.Context, netns string, argv ...string) *exec.Cmd {
	a := s.nodeArgv(netns, argv...)
	cmd := exec.CommandContext(ctx, a[0], a[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// containerdConfig is containerd's configuration (version 3, containerd
// 2.x). restrict_oom_score_adj: the VM's root has no CAP_SYS_RESOURCE, so
// runc could not lower the pause container's oom_score_adj below
// containerd's own. The network namespaces of pods go under the state
// directory, not /run/netns, where `ip netns` would list them.
const containerdConfig = `version = 3
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.erofs", "io.containerd.nri.v1.nri", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = %[3]q

[ttrpc]
  address = %[4]q

[plugins.'io.containerd.cri.v1.runtime']
  enable_selinux = false
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = %[5]q
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = [%[6]q]
    conf_dir = %[7]q

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = %[8]q

[plugins.'io.containerd.grpc.v1.cri']
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
`

// cniConfig puts pods on the node's bridge (the one the default sandbox's
// hand-made pods use, with the gateway address already on it) with
// addresses from the upper half of node-a's pod CIDR, routed, not
// masqueraded: the cloud namespace routes the pod CIDR back to the node,
// and metaguard must see pods' own source addresses.
const cniConfig = `{
  "cniVersion": "1.0.0",
  "name": "mg-e2e",
  "plugins": [
    {
      "type": "bridge",
      "bridge": %[1]q,
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": %[2]q, "rangeStart": "10.244.0.128", "rangeEnd": "10.244.0.250", "gateway": %[3]q}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": %[4]q
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`

// startContainerd writes containerd's and the CNI configuration, starts
// containerd in the node's namespaces and waits for its socket.
func (s *Sandbox) startContainerd(ctx context.Context) error {
	dir := filepath.Join(s.node.dir, "containerd")
	cniDir := filepath.Join(s.node.dir, "cni")
	s.node.socket = filepath.Join(dir, "containerd.sock")
	files := map[string]string{
		filepath.Join(dir, "config.toml"): fmt.Sprintf(containerdConfig, filepath.Join(dir, "root"), filepath.Join(dir, "state"),
			s.node.socket, s.node.socket+".ttrpc", filepath.Join(s.binDir, "runc"), filepath.Join(s.binDir, "cni"),
			filepath.Join(cniDir, "net.d"), PauseImage),
		filepath.Join(cniDir, "net.d", "10-mg-e2e.conflist"): fmt.Sprintf(cniConfig, BridgeName, PodCIDR.String(), BridgeIP.String(), filepath.Join(cniDir, "ipam")),
	}
	for name, data := range files {
		if err := os.MkdirAll(filepath.Dir(name), 0o700); err != nil {
			return err
		}
		if err := os.WriteFile(name, []byte(data), 0o600); err != nil {
			return err
		}
	}
	argv := s.nodeArgv(s.nodeNetns(), filepath.Join(s.binDir, "containerd"), "--config", filepath.Join(dir, "config.toml"))
	// containerd finds containerd-shim-runc-v2 in PATH.
	p, err := s.startProc(procSpec{name: "containerd", path: argv[0], args: argv[1:], disposable: true,
		env: []string{"PATH=" + s.binDir + ":" + os.Getenv("PATH")}})
	if err != nil {
		return err
	}
	s.node.containerd = p
	err = pollUntil(ctx, 30*time.Second, 20*time.Millisecond, func() (bool, error) {
		if ok, werr := p.Exited(); ok {
			return false, fmt.Errorf("containerd exited (%v):\n%s", werr, p.tail(20))
		}
		c, err := net.Dial("unix", s.node.socket)
		if err != nil {
			return false, nil
		}
		c.Close()
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for containerd: %w", err)
	}
	return nil
}

// ctr runs containerd's own client against the node's containerd, in the
// k8s.io namespace (the CRI plugin's).
func (s *Sandbox) ctr(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(s.binDir, "ctr"), append([]string{"--address", s.node.socket, "--namespace", "k8s.io"}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

// ImportImage imports an OCI (or docker save) archive into the node's
// containerd, unpacked for the overlayfs snapshotter, as `ctr -n k8s.io
// images import` does; the kubelet then finds its images there.
func (s *Sandbox) ImportImage(ctx context.Context, archive string) error {
	if s.node == nil {
		return fmt.Errorf("importing %s: the sandbox has no real node", archive)
	}
	_, err := s.ctr(ctx, "images", "import", "--snapshotter", "overlayfs", archive)
	return err
}

// TagImage gives an imported image another name, as a registry push under
// a new tag would: a DaemonSet rolled to that tag gets new pods.
func (s *Sandbox) TagImage(ctx context.Context, src, dst string) error {
	if s.node == nil {
		return fmt.Errorf("tagging %s: the sandbox has no real node", src)
	}
	_, err := s.ctr(ctx, "images", "tag", "--force", src, dst)
	return err
}

// importBaseImages builds the pause and workload images from bin/pause and
// bin/podclient with the project's image builder and imports them.
func (s *Sandbox) importBaseImages(ctx context.Context) error {
	for _, img := range []struct{ ref, binary, path, cmd string }{
		{PauseImage, "pause", "/pause", ""},
		{WorkloadImage, "podclient", "/usr/local/bin/podclient", "sleep"},
	} {
		bin, err := os.ReadFile(filepath.Join(s.binDir, img.binary))
		if err != nil {
			return err
		}
		image, err := imagebuild.Static(img.path, bin, strings.Fields(img.cmd), imagebuild.BuildInfo{Version: "e2e"})
		if err != nil {
			return err
		}
		archive := filepath.Join(s.node.dir, img.binary+"-image.tar")
		if err := imagebuild.WriteOCIArchive(archive, imagebuild.Tagged{Ref: img.ref, Image: image}); err != nil {
			return err
		}
		if err := s.ImportImage(ctx, archive); err != nil {
			return err
		}
	}
	return nil
}

// ContainerPID is the host pid of a running container's main process,
// given the container ID a pod's status reports (containerd://<id> or the
// bare id): a test reads /proc/<pid> to see what the kernel enforces on it
// (capabilities, no_new_privs, seccomp, its mounts).
func (s *Sandbox) ContainerPID(ctx context.Context, containerID string) (int, error) {
	if s.node == nil {
		return 0, errors.New("the sandbox has no real node")
	}
	id := strings.TrimPrefix(containerID, "containerd://")
	out, err := s.ctr(ctx, "tasks", "ls")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == id && f[2] == "RUNNING" {
			return strconv.Atoi(f[1])
		}
	}
	return 0, fmt.Errorf("container %s is not running (ctr tasks ls:\n%s)", id, out)
}
