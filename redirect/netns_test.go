package redirect

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"

	"github.com/coreos/go-iptables/iptables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// The kernel tests build a small node in network namespaces the test owns:
//
//	pod  (10.200.0.2, fd00:200::2) --veth-- node --veth-- imds (10.201.0.2, fd00:201::2)
//	                                 (10.200.0.1 | 10.201.0.1 = host IP,           endpoints on lo:
//	                                  fd00:200::1 | fd00:201::1 = host IP)         169.254.169.254, 192.168.100.21, fd00:ec2::254
//
// go-iptables runs the iptables binary, so the reconciler gets wrapper
// scripts that exec the real binary under `nsenter --net=/run/netns/NODE`
// (lighter than `ip netns exec`, which also sets up a mount namespace): every
// child process runs in the node namespace whichever goroutine or thread
// started it, which a Setns-on-this-thread trick cannot promise for Run's
// goroutine.
// Sockets, on the other hand, belong to the namespace they were created in,
// so servers and clients are plain Go sockets created by inNetns on a thread
// moved into the namespace for the duration of the call; they die with the
// test process, and no process outlives the test.

const (
	podIP4, podIP6   = "10.200.0.2", "fd00:200::2"
	hostIP4, hostIP6 = "10.201.0.1", "fd00:201::1"
)

type topology struct {
	node, pod, imds string // namespace names
	bin             string // wrapper scripts
	nodeNS          netns.NsHandle
	rules           netlinkRules // the node's routing rules
}

func requireKernel(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("kernel test skipped: it needs root to create network namespaces and run iptables in them (run `go test` as root)")
	}
	for _, tool := range []string{"ip", "iptables-nft", "ip6tables-nft", "iptables-legacy", "ip6tables-legacy", "iptables-nft-save", "iptables-legacy-save", "conntrack", "nsenter", "sysctl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("kernel test skipped: %s not installed (apt-get install iptables iproute2 conntrack)", tool)
		}
	}
}

func newTopology(t *testing.T) *topology {
	t.Helper()
	requireKernel(t)
	topo := &topology{node: newNamespace(t, "node"), pod: newNamespace(t, "pod"), imds: newNamespace(t, "imds"), bin: t.TempDir()}
	n, p, m := topo.node, topo.pod, topo.imds
	steps := [][]string{
		{"-n", n, "link", "add", "pod0", "type", "veth", "peer", "name", "eth0", "netns", p},
		{"-n", n, "link", "add", "imds0", "type", "veth", "peer", "name", "eth0", "netns", m},
		{"-n", n, "addr", "add", "10.200.0.1/24", "dev", "pod0"},
		{"-n", n, "addr", "add", "fd00:200::1/64", "dev", "pod0", "nodad"},
		{"-n", n, "addr", "add", hostIP4 + "/24", "dev", "imds0"},
		{"-n", n, "addr", "add", hostIP6 + "/64", "dev", "imds0", "nodad"},
		{"-n", p, "addr", "add", podIP4 + "/24", "dev", "eth0"},
		{"-n", p, "addr", "add", podIP6 + "/64", "dev", "eth0", "nodad"},
		{"-n", m, "addr", "add", "10.201.0.2/24", "dev", "eth0"},
		{"-n", m, "addr", "add", "fd00:201::2/64", "dev", "eth0", "nodad"},
		{"-n", m, "addr", "add", "169.254.169.254/32", "dev", "lo"},
		{"-n", m, "addr", "add", "192.168.100.21/32", "dev", "lo"},
		{"-n", m, "addr", "add", "fd00:ec2::254/128", "dev", "lo"},
	}
	for _, ns := range []string{n, p, m} {
		steps = append(steps, []string{"-n", ns, "link", "set", "lo", "up"})
	}
	steps = append(steps,
		[]string{"-n", n, "link", "set", "pod0", "up"},
		[]string{"-n", n, "link", "set", "imds0", "up"},
		[]string{"-n", p, "link", "set", "eth0", "up"},
		[]string{"-n", m, "link", "set", "eth0", "up"},
		[]string{"-n", p, "route", "add", "default", "via", "10.200.0.1"},
		[]string{"-n", p, "-6", "route", "add", "default", "via", "fd00:200::1"},
		[]string{"-n", m, "route", "add", "default", "via", hostIP4},
		[]string{"-n", m, "-6", "route", "add", "default", "via", hostIP6},
		[]string{"-n", n, "route", "add", "169.254.169.254/32", "via", "10.201.0.2"},
		[]string{"-n", n, "route", "add", "192.168.100.21/32", "via", "10.201.0.2"},
		[]string{"-n", n, "-6", "route", "add", "fd00:ec2::254/128", "via", "fd00:201::2"},
	)
	for _, s := range steps {
		mustRun(t, "ip", s...)
	}
	mustRun(t, "ip", "netns", "exec", n, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")

	writeWrappers(t, topo.bin, n)
	topo.nodeNS, topo.rules = openNetlink(t, n)
	return topo
}

// openNetlink opens namespace ns for netlink sockets (the watchers') and a
// netlink handle in it (the routing rules'), both closed when the test ends,
// before the namespace is deleted.
func openNetlink(t *testing.T, ns string) (netns.NsHandle, netlinkRules) {
	t.Helper()
	h, err := netns.GetFromPath("/run/netns/" + ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	nl, err := netlink.NewHandleAt(h, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nl.Close)
	return h, netlinkRules{h: nl}
}

// newNamespace creates one namespace named for this run and deletes it when
// the test ends.
func newNamespace(t *testing.T, role string) string {
	t.Helper()
	suffix := make([]byte, 4)
	if _, err := rand.Read(suffix); err != nil {
		t.Fatal(err)
	}
	ns := "mgr-" + hex.EncodeToString(suffix) + "-" + role
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		if strings.Contains(string(out), "Operation not permitted") {
			t.Skipf("kernel test skipped: root here may not create network namespaces (needs CAP_SYS_ADMIN): %s", out)
		}
		t.Fatalf("ip netns add %s: %v: %s", ns, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("deleting netns %s: %v: %s", ns, err, out)
		}
	})
	// Duplicate address detection holds new link-local addresses tentative
	// for about two seconds, during which IPv6 neighbours are not resolved;
	// the namespace is ours, so skip it.
	mustRun(t, "ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
	return ns
}

// writeWrappers puts scripts named like the iptables and conntrack binaries
// into dir, each running the real binary in namespace ns.
func writeWrappers(t *testing.T, dir, ns string) {
	t.Helper()
	for _, name := range []string{"iptables-nft", "ip6tables-nft", "iptables-legacy", "ip6tables-legacy", "conntrack"} {
		real, err := exec.LookPath(name)
		if err != nil {
			t.Fatal(err)
		}
		script := fmt.Sprintf("#!/bin/sh\nexec nsenter --net=/run/netns/%s %s \"$@\"\n", ns, real)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

func mustRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// inNode runs a command in the node namespace.
func (topo *topology) inNode(t *testing.T, name string, args ...string) string {
	t.Helper()
	return mustRun(t, "nsenter", append([]string{"--net=/run/netns/" + topo.node, name}, args...)...)
}

// system gives the reconciler the node namespace's iptables, conntrack,
// routing rules and change notifications.
func (topo *topology) system() *system {
	sys := nsSystem(topo.bin, topo.node)
	sys.rules = topo.rules
	sys.watchers = func(b backend) []changeWatcher { return kernelWatchers(b, int(topo.nodeNS)) }
	return sys
}

// nsSystem is the machine as seen from namespace ns, through the wrappers in
// bin.
func nsSystem(bin, ns string) *system {
	return &system{
		newRunner: func(f family, b backend) (runner, error) {
			proto := iptables.ProtocolIPv4
			if f == ipv6 {
				proto = iptables.ProtocolIPv6
			}
			return iptables.New(iptables.IPFamily(proto), iptables.Path(filepath.Join(bin, binaryName(f, b))), iptables.Timeout(lockWaitSeconds))
		},
		legacyTables: func(f family) (tables []string, err error) {
			inNetns(nil, ns, func() { tables, err = procLegacyTables(f) })
			return tables, err
		},
		flusher: execConntrack{path: filepath.Join(bin, "conntrack")},
	}
}

var counters = regexp.MustCompile(` \[\d+:\d+\]$`)

// save is iptables-save for one family and back end in the node namespace,
// without the comment lines and packet counters that change from run to run.
func (topo *topology) save(t *testing.T, f family, b backend) string {
	t.Helper()
	name := "iptables-" + string(b) + "-save"
	if f == ipv6 {
		name = "ip6tables-" + string(b) + "-save"
	}
	var out []string
	for _, l := range strings.Split(topo.inNode(t, name), "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		out = append(out, counters.ReplaceAllString(l, ""))
	}
	return strings.Join(out, "\n") + "\n"
}

// inNetns runs fn on this goroutine's thread moved into namespace ns. Sockets
// fn creates stay in ns. If the thread cannot be moved back it is left locked,
// so the runtime retires it when the goroutine ends instead of reusing a
// thread in the wrong namespace. t may be nil (then failures panic).
func inNetns(t *testing.T, ns string, fn func()) {
	fail := func(format string, args ...any) {
		if t == nil {
			panic(fmt.Sprintf(format, args...))
		}
		t.Helper()
		t.Fatalf(format, args...)
	}
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		fail("opening own netns: %v", err)
	}
	defer orig.Close()
	target, err := os.Open("/run/netns/" + ns)
	if err != nil {
		runtime.UnlockOSThread()
		fail("opening netns %s: %v", ns, err)
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		fail("entering netns %s: %v", ns, err)
	}
	fn()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		fail("leaving netns %s: %v", ns, err) // thread stays locked and dies
	}
	runtime.UnlockOSThread()
}

func listenIn(t *testing.T, ns, network, addr string) net.Listener {
	t.Helper()
	var l net.Listener
	var err error
	inNetns(t, ns, func() { l, err = net.Listen(network, addr) })
	if err != nil {
		t.Fatalf("listening on %s in %s: %v", addr, ns, err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func listenPacketIn(t *testing.T, ns, network, addr string) net.PacketConn {
	t.Helper()
	var c net.PacketConn
	var err error
	inNetns(t, ns, func() { c, err = net.ListenPacket(network, addr) })
	if err != nil {
		t.Fatalf("listening on %s %s in %s: %v", network, addr, ns, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
