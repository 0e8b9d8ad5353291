package redirect

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// expectRefusedByRoute checks that a TCP connection from ns to addr fails
// the way a prohibit route makes it fail: at once (within one SYN
// retransmission), with "no route to host" (IPv4) or "permission denied"
// (IPv6), not with a timeout, and without reaching anything.
func expectRefusedByRoute(t *testing.T, ns, addr string) {
	t.Helper()
	c, err := dial(t, ns, addr, 3*time.Second)
	if err == nil {
		t.Fatalf("connection from %s to %s succeeded (answered %q)", ns, addr, readLine(t, c))
	}
	if !errors.Is(err, syscall.EHOSTUNREACH) && !errors.Is(err, syscall.EACCES) {
		t.Fatalf("connection from %s to %s failed with %v, want the prohibit route's EHOSTUNREACH or EACCES", ns, addr, err)
	}
}

// ipRules is `ip rule show` for one family in the node namespace.
func (topo *topology) ipRules(t *testing.T, f family) string {
	t.Helper()
	flag := "-4"
	if f == ipv6 {
		flag = "-6"
	}
	return topo.inNode(t, "ip", flag, "rule", "show")
}

// flushTables empties every chain of the nat and filter tables of both
// families, as `iptables -F; iptables -t nat -F` and a firewall reload do.
func (topo *topology) flushTables(t *testing.T, b backend) {
	t.Helper()
	for _, f := range families {
		for _, table := range []string{tableNAT, tableFilter} {
			topo.inNode(t, binaryName(f, b), "-w", "-t", table, "-F")
		}
	}
}

func TestKernelRoutingBackstop(t *testing.T) {
	requireKernel(t)
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			t.Parallel()
			testKernelRoutingBackstop(t, b)
		})
	}
}

func testKernelRoutingBackstop(t *testing.T, b backend) {
	topo := newTopology(t)
	before := map[family]string{ipv4: topo.ipRules(t, ipv4), ipv6: topo.ipRules(t, ipv6)}
	srv := topo.startServers(t)
	rec := topo.install(t, b)
	ctx := context.Background()
	expectGolden(t, topo.ipRules(t, ipv4), "rules-ipv4.golden")
	expectGolden(t, topo.ipRules(t, ipv6), "rules-ipv6.golden")

	t.Run("the routing rules leave redirected connections alone: they are routed to the host IP", func(t *testing.T) {
		for _, ep := range kernelEndpoints {
			expectProxied(t, topo, srv, ep)
		}
	})

	topo.flushTables(t, b)
	t.Run("with both tables flushed, a pod's connection to each endpoint is refused and never reaches the IMDS", func(t *testing.T) {
		for _, ep := range kernelEndpoints {
			begin := time.Now()
			expectRefusedByRoute(t, topo.pod, ep.Addr.String())
			t.Logf("%s refused after %v", ep.Addr, time.Since(begin).Round(time.Millisecond))
		}
		select {
		case got := <-srv.imds:
			t.Errorf("the IMDS received %q", got)
		default:
		}
	})
	t.Run("with both tables flushed, the node's own connections still reach the IMDS", func(t *testing.T) {
		for _, ep := range kernelEndpoints {
			if got := greeting(t, topo.node, ep.Addr.String()); got != "imds" {
				t.Errorf("node's connection to %s reached %q", ep.Addr, got)
			}
		}
	})
	t.Run("with both tables flushed, DNS and NTP to an endpoint address and other ports still reach the IMDS", func(t *testing.T) {
		srv.expectUDP(t, topo.pod, "169.254.169.254:53", ":53", "dns")
		srv.expectUDP(t, topo.pod, "[fd00:ec2::254]:53", ":53", "dns6")
		srv.expectUDP(t, topo.pod, "169.254.169.254:123", ":123", "ntp")
		for _, addr := range []string{"169.254.169.254:53", "169.254.169.254:81"} {
			if got := greeting(t, topo.pod, addr); got != "imds" {
				t.Errorf("pod's connection to %s reached %q: only the endpoints' ports are refused", addr, got)
			}
		}
	})
	t.Run("a sync puts the chains back and counts one repair", func(t *testing.T) {
		if err := rec.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		if got := repairsOf(rec); got != 1 {
			t.Errorf("repairs = %v, want 1", got)
		}
		expectProxied(t, topo, srv, kernelEndpoints[0])
	})
	t.Run("an endpoint removed from the policy loses its rules", func(t *testing.T) {
		if err := rec.SetEndpoints(kernelEndpoints[:2]); err != nil {
			t.Fatal(err)
		}
		if err := rec.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		if got := topo.ipRules(t, ipv4); strings.Contains(got, "192.168.100.21") {
			t.Errorf("rules for the removed endpoint remain:\n%s", got)
		}
	})
	t.Run("cleanup and metaguard cleanup leave ip rule exactly as before", func(t *testing.T) {
		if err := rec.Cleanup(ctx); err != nil {
			t.Fatal(err)
		}
		if err := cleanupAll(ctx, discard(), *topo.system()); err != nil {
			t.Fatal(err)
		}
		for _, f := range families {
			if got := topo.ipRules(t, f); got != before[f] {
				t.Errorf("%s rules after cleanup:\n%s\nwant:\n%s", f, got, before[f])
			}
		}
	})
}

// TestKernelRepairsOnNotification runs the reconciler with a sync period far
// beyond the test, so that only the kernel's change notifications can
// explain a repair, and measures how long one takes.
func TestKernelRepairsOnNotification(t *testing.T) {
	requireKernel(t)
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			t.Parallel()
			testKernelRepairsOnNotification(t, b)
		})
	}
}

func testKernelRepairsOnNotification(t *testing.T, b backend) {
	topo := newTopology(t)
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
	runInBackground(t, rec, time.Hour)
	waitFor(t, "readiness", rec.Ready)
	installed := map[family]string{ipv4: topo.save(t, ipv4, b), ipv6: topo.save(t, ipv6, b)}
	// Rules of one priority are equivalent in any order, and a repaired
	// rule comes last among its priority's.
	sortedRules := func() string {
		return strings.Join(slices.Sorted(strings.SplitSeq(topo.ipRules(t, ipv4), "\n")), "\n")
	}
	rules := sortedRules()

	// The watchers subscribe concurrently with the first sync; a break
	// before they listen would go unnoticed until the period. A rule
	// deletion that is repaired proves the routing-rule watcher listens.
	waitSubscribed := func(t *testing.T) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			topo.inNode(t, "ip", "-4", "rule", "del", "pref", "7")
			if pollFor(time.Second, func() bool { return strings.Contains(topo.ipRules(t, ipv4), "7:\tfrom all nop") }) {
				return
			}
		}
		t.Fatal("the routing-rule watcher never repaired a deleted rule")
	}
	waitSubscribed(t)

	t.Run("a deleted routing rule is back at once", func(t *testing.T) {
		begin := time.Now()
		topo.inNode(t, "ip", "-4", "rule", "del", "pref", "6", "to", "169.254.169.254/32", "ipproto", "tcp", "dport", "80", "prohibit")
		waitFor(t, "the rule back", func() bool { return sortedRules() == rules })
		t.Logf("routing rule repaired after %v", time.Since(begin).Round(time.Millisecond))
	})
	if b == backendLegacy {
		return // no nftables notifications: the chains wait for the period
	}
	t.Run("both tables flushed are back at once", func(t *testing.T) {
		for _, f := range families {
			for _, table := range []string{tableNAT, tableFilter} {
				begin := time.Now()
				topo.inNode(t, binaryName(f, b), "-w", "-t", table, "-F")
				waitFor(t, "the chains back", func() bool { return topo.save(t, f, b) == installed[f] })
				t.Logf("%s %s flush repaired after %v", f, table, time.Since(begin).Round(time.Millisecond))
			}
		}
	})
	t.Run("another agent's iptables-restore without metaguard's lines is repaired at once", func(t *testing.T) {
		var kept []string
		for _, l := range strings.Split(installed[ipv4], "\n") {
			if !strings.Contains(l, "METAGUARD") {
				kept = append(kept, l)
			}
		}
		begin := time.Now()
		cmd := "iptables-" + string(b) + "-restore"
		if out, err := runWithInput(strings.Join(kept, "\n"), "ip", "netns", "exec", topo.node, cmd); err != nil {
			t.Fatalf("%s: %v: %s", cmd, err, out)
		}
		waitFor(t, "the chains back", func() bool { return topo.save(t, ipv4, b) == installed[ipv4] })
		t.Logf("iptables-restore repaired after %v", time.Since(begin).Round(time.Millisecond))
	})
	t.Run("a restore that adds 5,000 foreign rules and leaves metaguard's out is repaired at once", func(t *testing.T) {
		var kept []string
		for _, l := range strings.Split(installed[ipv4], "\n") {
			if strings.Contains(l, "METAGUARD") {
				continue
			}
			if l == "COMMIT" && len(kept) > 0 && strings.HasPrefix(strings.Join(kept, "\n"), "*filter") && !slices.Contains(kept, "*nat") {
				kept = append(kept, ":KUBE-BULK - [0:0]")
				for i := range 5000 {
					kept = append(kept, fmt.Sprintf("-A KUBE-BULK -d 10.96.%d.%d/32 -p tcp -m tcp --dport 443 -j ACCEPT", i/250, i%250))
				}
			}
			kept = append(kept, l)
		}
		begin := time.Now()
		cmd := "iptables-" + string(b) + "-restore"
		if out, err := runWithInput(strings.Join(kept, "\n"), "ip", "netns", "exec", topo.node, cmd); err != nil {
			t.Fatalf("%s: %v: %s", cmd, err, out)
		}
		waitFor(t, "the chains back", func() bool {
			got := topo.save(t, ipv4, b)
			return strings.Contains(got, "-A FORWARD -m comment --comment \"metaguard") && strings.Count(got, "-A METAGUARD-") == strings.Count(installed[ipv4], "-A METAGUARD-")
		})
		t.Logf("a restore of 5,000 rules repaired after %v", time.Since(begin).Round(time.Millisecond))
	})
}

// pollFor polls cond every 5ms until it holds or d passes.
func pollFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		<-tick.C
	}
	return true
}
