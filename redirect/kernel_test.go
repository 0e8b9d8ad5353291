package redirect

import (
	"context"
	"errors"
	"flag"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

var update = flag.Bool("update", false, "rewrite the iptables-save golden files under testdata/")

// dropWait is how long a connection or datagram that must be dropped is given
// to show up anyway; the namespaces are on one machine, so a real answer
// takes well under a millisecond.
const dropWait = 300 * time.Millisecond

var kernelEndpoints = []Endpoint{
	{Name: "aws", Addr: netip.MustParseAddrPort("169.254.169.254:80")},
	{Name: "aws-v6", Addr: netip.MustParseAddrPort("[fd00:ec2::254]:80")},
	{Name: "private", Addr: netip.MustParseAddrPort("192.168.100.21:32000")},
}

// foreignKernelRules stand for a CNI and kube-proxy. The CNI's FORWARD rule
// accepts all pod traffic: were metaguard's jump not first, it would shadow
// the drop.
var foreignKernelRules = map[family][]string{
	ipv4: {
		"-t nat -N KUBE-SERVICES",
		"-t nat -A PREROUTING -m comment --comment kubernetes-service-portals -j KUBE-SERVICES",
		"-t nat -A POSTROUTING -s 10.200.0.0/24 ! -d 10.200.0.0/24 -j MASQUERADE",
		"-t filter -N CNI-FORWARD",
		"-t filter -A FORWARD -m comment --comment cni-firewall -j CNI-FORWARD",
		"-t filter -A CNI-FORWARD -s 10.200.0.0/24 -j ACCEPT",
	},
	ipv6: {
		"-t nat -N KUBE-SERVICES",
		"-t nat -A PREROUTING -m comment --comment kubernetes-service-portals -j KUBE-SERVICES",
		"-t filter -N CNI-FORWARD",
		"-t filter -A FORWARD -m comment --comment cni-firewall -j CNI-FORWARD",
		"-t filter -A CNI-FORWARD -s fd00:200::/64 -j ACCEPT",
	},
}

func expectGolden(t *testing.T, got, name string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("iptables-save differs from %s:\n%s\nwant:\n%s", path, got, want)
	}
}

func TestKernel(t *testing.T) {
	requireKernel(t)
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			t.Parallel()
			testKernel(t, b)
		})
	}
}

func testKernel(t *testing.T, b backend) {
	topo := newTopology(t)
	for _, f := range families {
		for _, cmd := range foreignKernelRules[f] {
			topo.inNode(t, binaryName(f, b), splitQuoted(cmd)...)
		}
	}
	before := map[family]string{ipv4: topo.save(t, ipv4, b), ipv6: topo.save(t, ipv6, b)}
	srv := topo.startServers(t)
	aws, awsV6, private := kernelEndpoints[0], kernelEndpoints[1], kernelEndpoints[2]

	// Positive controls: without metaguard the pod reaches the IMDS, so the
	// checks below would notice rules that do nothing.
	for _, addr := range []string{"169.254.169.254:80", "169.254.169.254:81", "[fd00:ec2::254]:81", "192.168.100.21:32000"} {
		if got := greeting(t, topo.pod, addr); got != "imds" {
			t.Fatalf("before install, pod's connection to %s reached %q", addr, got)
		}
	}
	srv.expectUDP(t, topo.pod, "169.254.169.254:80", ":80", "before")
	keepAlive, err := dial(t, topo.pod, "169.254.169.254:80", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if got := readLine(t, keepAlive); got != "imds" {
		t.Fatalf("keep-alive connection reached %q", got)
	}

	rec := topo.install(t, b)
	ctx := context.Background()
	if !rec.Ready() {
		t.Fatal("not ready after install")
	}
	golden := func(t *testing.T) {
		t.Helper()
		expectGolden(t, topo.save(t, ipv4, b), string(b)+"-ipv4.golden")
		expectGolden(t, topo.save(t, ipv6, b), string(b)+"-ipv6.golden")
	}
	golden(t)

	t.Run("a pod's connection to each endpoint lands on the proxy with its own source IP and the endpoint as SO_ORIGINAL_DST", func(t *testing.T) {
		for _, ep := range kernelEndpoints {
			expectProxied(t, topo, srv, ep)
		}
	})
	t.Run("a pod's connection to another port of an endpoint is dropped", func(t *testing.T) {
		expectDropped(t, topo.pod, "169.254.169.254:81")
		expectDropped(t, topo.pod, "[fd00:ec2::254]:81")
	})
	t.Run("a pod's UDP to an endpoint is dropped", func(t *testing.T) {
		srv.expectUDPDropped(t, topo.pod, "169.254.169.254:80", ":80")
		srv.expectUDPDropped(t, topo.pod, "[fd00:ec2::254]:80", ":80")
	})
	t.Run("a pod's DNS and NTP to an endpoint address reach the IMDS, as GCP and Azure serve them there", func(t *testing.T) {
		srv.expectUDP(t, topo.pod, "169.254.169.254:53", ":53", "dns")
		srv.expectUDP(t, topo.pod, "[fd00:ec2::254]:53", ":53", "dns6")
		srv.expectUDP(t, topo.pod, "169.254.169.254:123", ":123", "ntp")
		if got := greeting(t, topo.pod, "169.254.169.254:53"); got != "imds" {
			t.Errorf("pod's DNS over TCP reached %q, want the IMDS", got)
		}
	})
	t.Run("a pod's ICMP echo to an endpoint is answered", func(t *testing.T) {
		ping(t, topo.pod, netip.MustParseAddr("169.254.169.254"))
		ping(t, topo.pod, netip.MustParseAddr("fd00:ec2::254"))
	})
	t.Run("the node's own connection goes straight to the IMDS", func(t *testing.T) {
		for _, ep := range kernelEndpoints {
			if got := greeting(t, topo.node, ep.Addr.String()); got != "imds" {
				t.Errorf("node's connection to %s reached %q", ep.Addr, got)
			}
		}
	})
	t.Run("a keep-alive connection opened before install is reset instead of reaching the IMDS", func(t *testing.T) {
		keepAlive.Write([]byte("after install\n"))
		keepAlive.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, err := keepAlive.Read(make([]byte, 16))
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("read on the old connection: %v, want connection reset", err)
		}
		select {
		case got := <-srv.imds:
			t.Errorf("IMDS received %q over the old connection", got)
		default:
		}
	})
	t.Run("a second sync changes nothing", func(t *testing.T) {
		if err := rec.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		golden(t)
		if n := repairsOf(rec); n != 0 {
			t.Errorf("repairs = %v, want 0", n)
		}
	})

	disruptions := []struct {
		name    string
		disrupt func(t *testing.T)
		undo    func(t *testing.T)
	}{
		{"flushing both chains", func(t *testing.T) {
			topo.inNode(t, binaryName(ipv4, b), "-t", "nat", "-F", NATChain)
			topo.inNode(t, binaryName(ipv4, b), "-t", "filter", "-F", FilterChain)
		}, nil},
		{"another agent's iptables-restore of the rules before metaguard", func(t *testing.T) {
			cmd := "iptables-" + string(b) + "-restore"
			if out, err := runWithInput(before[ipv4]+"", "ip", "netns", "exec", topo.node, cmd); err != nil {
				t.Fatalf("%s: %v: %s", cmd, err, out)
			}
		}, nil},
		{"another agent inserting a rule above the jump", func(t *testing.T) {
			topo.inNode(t, binaryName(ipv4, b), "-t", "nat", "-I", "PREROUTING", "1", "-d", "169.254.169.254/32", "-j", "ACCEPT")
		}, func(t *testing.T) {
			topo.inNode(t, binaryName(ipv4, b), "-t", "nat", "-D", "PREROUTING", "-d", "169.254.169.254/32", "-j", "ACCEPT")
		}},
	}
	for i, d := range disruptions {
		t.Run("a sync repairs "+d.name, func(t *testing.T) {
			held := holdThroughProxy(t, topo, srv, aws)
			d.disrupt(t)
			if err := rec.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			if got, want := repairsOf(rec), float64(i+1); got != want {
				t.Errorf("repairs = %v, want %v", got, want)
			}
			// The repair flushed the endpoint's conntrack entries; the
			// proxy's own connections must keep theirs.
			if !topo.trackedToProxy(t, held) {
				t.Errorf("the repair dropped the conntrack entry of a connection the proxy already held (pod port %d): its answers would leave un-NATed and be reset", held.Port())
			}
			expectProxied(t, topo, srv, aws)
			expectDropped(t, topo.pod, "169.254.169.254:81")
			if d.undo != nil {
				d.undo(t)
			}
			golden(t)
		})
	}

	t.Run("an endpoint removed from the policy is removed from the kernel", func(t *testing.T) {
		if err := rec.SetEndpoints([]Endpoint{aws, awsV6}); err != nil {
			t.Fatal(err)
		}
		if err := rec.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		if got := topo.save(t, ipv4, b); strings.Contains(got, "192.168.100.21") {
			t.Errorf("rules for the removed endpoint remain:\n%s", got)
		}
		if got := greeting(t, topo.pod, private.Addr.String()); got != "imds" {
			t.Errorf("pod's connection to the removed endpoint reached %q, want the IMDS", got)
		}
		expectProxied(t, topo, srv, aws)
	})

	t.Run("cleanup leaves iptables-save exactly as before, twice over", func(t *testing.T) {
		for range 2 {
			if err := rec.Cleanup(ctx); err != nil {
				t.Fatal(err)
			}
			if err := cleanupAll(ctx, discard(), *topo.system()); err != nil {
				t.Fatal(err)
			}
			for _, f := range families {
				if got := topo.save(t, f, b); got != before[f] {
					t.Errorf("%s after cleanup:\n%s\nwant:\n%s", f, got, before[f])
				}
			}
		}
		if got := greeting(t, topo.pod, aws.Addr.String()); got != "imds" {
			t.Errorf("after cleanup pod's connection reached %q, want the IMDS", got)
		}
	})
}

func repairsOf(r *Reconciler) float64 {
	return testutil.ToFloat64(r.metrics.repairs)
}

// TestKernelEndpointWithoutHostIPOfItsFamily is an IPv4-only node (one IPv4
// host IP) whose policy names an IPv6 endpoint, as the shipped AWS policy
// does: the IPv6 endpoint cannot be redirected, so pods must not reach it at
// all.
func TestKernelEndpointWithoutHostIPOfItsFamily(t *testing.T) {
	requireKernel(t)
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			t.Parallel()
			testKernelWithoutIPv6HostIP(t, b)
		})
	}
}

func testKernelWithoutIPv6HostIP(t *testing.T, b backend) {
	topo := newTopology(t)
	for _, f := range families {
		for _, cmd := range foreignKernelRules[f] {
			topo.inNode(t, binaryName(f, b), splitQuoted(cmd)...)
		}
	}
	before := map[family]string{ipv4: topo.save(t, ipv4, b), ipv6: topo.save(t, ipv6, b)}
	srv := topo.startServers(t)
	aws, awsV6 := kernelEndpoints[0], kernelEndpoints[1]

	// Positive control: the pod has IPv6 and reaches the IPv6 endpoint
	// until metaguard is installed.
	if got := greeting(t, topo.pod, awsV6.Addr.String()); got != "imds" {
		t.Fatalf("before install, pod's IPv6 connection reached %q", got)
	}
	srv.expectUDP(t, topo.pod, awsV6.Addr.String(), ":80", "before")

	rec, err := New(Config{
		HostIPs:    []netip.Addr{netip.MustParseAddr(hostIP4)},
		ListenPort: 8181, UpstreamMark: testMark, Mode: string(b), Logger: discard(), sys: topo.system(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := rec.SetEndpoints(kernelEndpoints); err != nil {
		t.Fatalf("SetEndpoints with an IPv6 endpoint and no IPv6 host IP: %v", err)
	}
	if err := rec.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if !rec.Ready() {
		t.Fatal("not ready after install")
	}
	// IPv4 is exactly as on a dual-stack node; IPv6 has the filter chain
	// and no nat chain.
	expectGolden(t, topo.save(t, ipv4, b), string(b)+"-ipv4.golden")
	expectGolden(t, topo.save(t, ipv6, b), string(b)+"-ipv6-without-host-ip.golden")

	t.Run("a pod's IPv6 connection to the IPv6 endpoint is refused by the routing rules and never reaches the IMDS", func(t *testing.T) {
		expectRefusedByRoute(t, topo.pod, awsV6.Addr.String())
		srv.expectUDPDropped(t, topo.pod, awsV6.Addr.String(), ":80")
		select {
		case acc := <-srv.proxy:
			t.Errorf("the proxy got a connection from %s", acc.remote)
		default:
		}
	})
	t.Run("a pod's DNS to the IPv6 endpoint address still reaches the IMDS", func(t *testing.T) {
		srv.expectUDP(t, topo.pod, "[fd00:ec2::254]:53", ":53", "dns6")
	})
	t.Run("the IPv4 endpoint is still redirected to the proxy", func(t *testing.T) {
		expectProxied(t, topo, srv, aws)
	})
	t.Run("a second sync changes nothing", func(t *testing.T) {
		if err := rec.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		expectGolden(t, topo.save(t, ipv6, b), string(b)+"-ipv6-without-host-ip.golden")
		if n := repairsOf(rec); n != 0 {
			t.Errorf("repairs = %v, want 0", n)
		}
	})
	t.Run("cleanup leaves iptables-save of both families exactly as before", func(t *testing.T) {
		if err := rec.Cleanup(ctx); err != nil {
			t.Fatal(err)
		}
		for _, f := range families {
			if got := topo.save(t, f, b); got != before[f] {
				t.Errorf("%s after cleanup:\n%s\nwant:\n%s", f, got, before[f])
			}
		}
		if got := greeting(t, topo.pod, awsV6.Addr.String()); got != "imds" {
			t.Errorf("after cleanup pod's IPv6 connection reached %q, want the IMDS", got)
		}
	})
}

// holdThroughProxy opens a pod connection to ep that lands on the proxy and
// returns the pod's end of it. The stand-in closes it after its greeting;
// the connection's conntrack entry stays (TIME_WAIT) for minutes, and only a
// flush that matches it removes it.
func holdThroughProxy(t *testing.T, topo *topology, srv *servers, ep Endpoint) netip.AddrPort {
	t.Helper()
	c, err := dial(t, topo.pod, ep.Addr.String(), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if got := readLine(t, c); got != "proxy" {
		t.Fatalf("pod's connection to %s reached %q, want the proxy", ep.Addr, got)
	}
	<-srv.proxy
	return c.LocalAddr().(*net.TCPAddr).AddrPort()
}

// trackedToProxy reports whether the node's conntrack still has the entry
// that redirects the pod connection from src to the proxy.
func (topo *topology) trackedToProxy(t *testing.T, src netip.AddrPort) bool {
	t.Helper()
	out, err := exec.Command("nsenter", "--net=/run/netns/"+topo.node, "conntrack", "-L", "-p", "tcp",
		"--orig-src", src.Addr().Unmap().String(), "--orig-port-src", strconv.Itoa(int(src.Port()))).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "0 flow entries") {
		t.Fatalf("conntrack -L: %v: %s", err, out)
	}
	return strings.Contains(string(out), "sport=8181 dport="+strconv.Itoa(int(src.Port())))
}

// install runs a dual-stack reconciler with back end b in the node
// namespace and syncs the kernel endpoints once.
func (topo *topology) install(t *testing.T, b backend) *Reconciler {
	t.Helper()
	rec, err := New(Config{
		HostIPs:    []netip.Addr{netip.MustParseAddr(hostIP4), netip.MustParseAddr(hostIP6)},
		ListenPort: 8181, UpstreamMark: testMark, Mode: string(b), Logger: discard(), sys: topo.system(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := rec.SetEndpoints(kernelEndpoints); err != nil {
		t.Fatal(err)
	}
	if err := rec.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	return rec
}
