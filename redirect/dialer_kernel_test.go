package redirect

import (
	"bufio"
	"context"
	"errors"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// impostor is a server in the pod namespace that a kube-proxy-like DNAT
// sends the node's connections for the metadata address to, as a Service
// with externalIPs: [169.254.169.254] makes kube-proxy do (CVE-2020-8554).
// It greets like the IMDS stand-in and reports the bytes each connection
// sent before closing.
func startImpostor(t *testing.T, topo *topology) <-chan string {
	t.Helper()
	return recordConnections(t, listenIn(t, topo.pod, "tcp", ":80"), "impostor")
}

// nodeDialer is an UpstreamDialer whose sockets and conntrack lookups are
// the node namespace's.
func nodeDialer(t *testing.T, topo *topology, mark uint32) *UpstreamDialer {
	t.Helper()
	d, err := NewUpstreamDialer(DialerConfig{
		Mark:  mark,
		peers: &conntrackPeers{netns: int(topo.nodeNS)},
		dialNet: func(ctx context.Context, nd *net.Dialer, network, addr string) (c net.Conn, err error) {
			inNetns(nil, topo.node, func() { c, err = nd.DialContext(ctx, network, addr) })
			return c, err
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// dialIn is a plain connection from namespace ns, closed by the caller.
func dialIn(ns, addr string) (c net.Conn, err error) {
	inNetns(nil, ns, func() { c, err = net.DialTimeout("tcp", addr, 2*time.Second) })
	return c, err
}

// exchange greets over c and returns who answered; it sends a line so an
// impostor that got the connection would have something to report.
func exchange(t *testing.T, c net.Conn) string {
	t.Helper()
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("reading the greeting: %v", err)
	}
	c.Write([]byte("GET /latest/meta-data/iam/security-credentials/ HTTP/1.1\r\n\r\n"))
	return strings.TrimSpace(line)
}

func TestKernelUpstreamDialerCannotBeCaptured(t *testing.T) {
	requireKernel(t)
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			t.Parallel()
			testKernelUpstreamDialer(t, b)
		})
	}
}

func testKernelUpstreamDialer(t *testing.T, b backend) {
	topo := newTopology(t)
	topo.startServers(t)
	impostor := startImpostor(t, topo)
	rec := topo.install(t, b)
	ctx := context.Background()
	ipt := binaryName(ipv4, b)
	// kube-proxy's rules for a Service with externalIPs: [169.254.169.254],
	// inserted at the top of nat OUTPUT after metaguard's.
	for _, cmd := range []string{
		"-t nat -N KUBE-SERVICES",
		"-t nat -I OUTPUT 1 -m comment --comment kubernetes-service-portals -j KUBE-SERVICES",
		"-t nat -A KUBE-SERVICES -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination " + podIP4 + ":80",
	} {
		topo.inNode(t, ipt, splitQuoted(cmd)...)
	}
	const imdsAddr = "169.254.169.254:80"
	dial := func(t *testing.T, d *UpstreamDialer) (net.Conn, error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		return d.DialContext(ctx, "tcp", imdsAddr)
	}
	noImpostorBytes := func(t *testing.T) {
		t.Helper()
		select {
		case got := <-impostor:
			if got != "" {
				t.Errorf("the impostor received %q", got)
			}
		case <-time.After(3 * time.Second):
			t.Error("the impostor's connection was never closed")
		}
	}

	t.Run("the node's own unmarked connection is DNATed by the foreign rule as before: metaguard changes nothing for it", func(t *testing.T) {
		c, err := dial(t, nodeDialer(t, topo, 0))
		if !errors.Is(err, ErrUpstreamNAT) {
			t.Fatalf("unmarked dial: %v, want ErrUpstreamNAT (the check still runs)", err)
		}
		if c != nil {
			c.Close()
		}
		noImpostorBytes(t)
		plain, err := dialIn(topo.node, imdsAddr)
		if err != nil {
			t.Fatal(err)
		}
		got := readLine(t, plain)
		plain.Close()
		if got != "impostor" {
			t.Errorf("a plain node connection reached %q, want the impostor: only metaguard's marked connections are exempt", got)
		}
		noImpostorBytes(t)
	})
	t.Run("after the sync puts metaguard's jump back above the foreign one, the marked connection reaches the IMDS", func(t *testing.T) {
		if err := rec.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		d := nodeDialer(t, topo, testMark)
		c, err := dial(t, d)
		if err != nil {
			t.Fatal(err)
		}
		if got := exchange(t, c); got != "imds" {
			t.Errorf("marked connection reached %q, want the IMDS", got)
		}
		if n := testutil.ToFloat64(d.refused); n != 0 {
			t.Errorf("refusals = %v", n)
		}
	})
	t.Run("an IPv6 connection, looked up in the IPv6 conntrack table, reaches the IPv6 endpoint", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		c, err := nodeDialer(t, topo, testMark).DialContext(ctx, "tcp", "[fd00:ec2::254]:80")
		if err != nil {
			t.Fatal(err)
		}
		if got := exchange(t, c); got != "imds" {
			t.Errorf("reached %q", got)
		}
	})
	t.Run("an IPv6 connection DNATed by a rule above metaguard's is refused", func(t *testing.T) {
		ip6t := binaryName(ipv6, b)
		topo.inNode(t, ip6t, "-t", "nat", "-I", "OUTPUT", "1", "-d", "fd00:ec2::254/128", "-p", "tcp", "-m", "tcp", "--dport", "80", "-j", "DNAT", "--to-destination", "["+podIP6+"]:80")
		defer topo.inNode(t, ip6t, "-t", "nat", "-D", "OUTPUT", "-d", "fd00:ec2::254/128", "-p", "tcp", "-m", "tcp", "--dport", "80", "-j", "DNAT", "--to-destination", "["+podIP6+"]:80")
		ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		c, err := nodeDialer(t, topo, testMark).DialContext(ctx, "tcp", "[fd00:ec2::254]:80")
		if !errors.Is(err, ErrUpstreamNAT) {
			if c != nil {
				t.Errorf("reached %q", exchange(t, c))
			}
			t.Fatalf("got %v, want ErrUpstreamNAT", err)
		}
		noImpostorBytes(t)
	})
	t.Run("without metaguard's jump, the marked connection is DNATed, then closed before any byte is sent and counted", func(t *testing.T) {
		h := hookOf(OutputChain)
		topo.inNode(t, ipt, append([]string{"-t", "nat", "-D", "OUTPUT"}, jumpRule(h)...)...)
		d := nodeDialer(t, topo, testMark)
		c, err := dial(t, d)
		if !errors.Is(err, ErrUpstreamNAT) {
			if c != nil {
				t.Errorf("reached %q", exchange(t, c))
			}
			t.Fatalf("got %v, want ErrUpstreamNAT", err)
		}
		if !strings.Contains(err.Error(), podIP4+":80") {
			t.Errorf("the error does not name the impostor: %v", err)
		}
		noImpostorBytes(t)
		if n := testutil.ToFloat64(d.refused); n != 1 {
			t.Errorf("refusals = %v, want 1", n)
		}
	})
	t.Run("an untracked connection (NOTRACK), which nothing can NAT, is used: the entry its peer's answer made has it as its reply", func(t *testing.T) {
		notrack := []string{"-t", "raw", "-I", "OUTPUT", "1", "-d", "169.254.169.254/32", "-p", "tcp", "-m", "tcp", "--dport", "80", "-j", "NOTRACK"}
		topo.inNode(t, ipt, notrack...)
		defer topo.inNode(t, ipt, append([]string{"-t", "raw", "-D", "OUTPUT"}, notrack[5:]...)...)
		c, err := dial(t, nodeDialer(t, topo, testMark))
		if err != nil {
			t.Fatal(err)
		}
		if got := exchange(t, c); got != "imds" {
			t.Errorf("untracked connection reached %q", got)
		}
	})
	t.Run("NAT in another nftables table (kube-proxy's nftables mode), which metaguard's iptables rule cannot stop, is refused", func(t *testing.T) {
		if b != backendNFT {
			t.Skip("the nftables table is beside the nft back end's")
		}
		if _, err := exec.LookPath("nft"); err != nil {
			t.Skip("nft not installed (apt-get install nftables)")
		}
		if err := rec.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		topo.inNode(t, ipt, "-t", "nat", "-F", "KUBE-SERVICES")
		ruleset := "table ip kube-proxy-test {\n chain out {\n  type nat hook output priority -101; policy accept;\n  ip daddr 169.254.169.254 tcp dport 80 dnat to " + podIP4 + ":80\n }\n}\n"
		if out, err := runWithInput(ruleset, "ip", "netns", "exec", topo.node, "nft", "-f", "-"); err != nil {
			t.Fatalf("nft: %v: %s", err, out)
		}
		d := nodeDialer(t, topo, testMark)
		c, err := dial(t, d)
		if !errors.Is(err, ErrUpstreamNAT) {
			if c != nil {
				t.Errorf("reached %q", exchange(t, c))
			}
			t.Fatalf("got %v, want ErrUpstreamNAT", err)
		}
		noImpostorBytes(t)
	})
}
