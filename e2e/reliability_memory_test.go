//go:build e2e

package e2e

import (
	"strings"
	"testing"
	"time"

	"metaguard.dev/metaguard/e2e/sandbox"
)

// Floods of connections: the metrics port, idle keep-alive connections
// and slow headers, each from many pods at once, against the real binary
// under the DaemonSet's Go runtime settings.

// TestFloodMetricsPortConnections: 16 pods open 256 connections each to
// the metrics port at the node's address, half of them idle after a
// /healthz, half silent. The admin listener's caps hold them to a few
// dozen, the kubelet's probe and a scrape from the node are still
// answered, and the peak RSS stays under the bound.
func TestFloodMetricsPortConnections(t *testing.T) {
	n := startNode(t, relPolicy)
	flooders := n.addPods("batch", "scrape", 16, map[string]string{"app": "batch"})
	web := n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "web", Labels: map[string]string{"app": "web"}})
	admin := sandbox.HostIP.String() + ":9181"

	mem := n.watchMemory()
	idle, _ := mem.Now()
	probe := serveNodeProbe(n, "http://"+admin+"/healthz", 50*time.Millisecond)
	pod := serveVictim(n, web, instanceID, nil, 100*time.Millisecond)
	begin := time.Now()
	idleConns := floodConns(t, n.ctx, flooders, admin, 128, "GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n", true)
	silent := floodConns(t, n.ctx, flooders, admin, 128, "", false)
	opened := time.Since(begin)
	// The flood holds while the probes go on.
	open := n.scalar("metaguard_admin_connections_open")
	awaitAttempts(t, probe, 20)
	probed, v := probe.Stop(), pod.Stop()
	m, anon := checkPeak(t, mem)
	reportf(t, "%d pods x 256 connections to :9181 in %s: %d made, %d refused at dial; admin open %v, rejected %v, evicted %v; idle %s; flooded %s, peak anon %s; kubelet probe: %s; pod: %s",
		len(flooders), opened.Round(time.Millisecond), idleConns.Len()+silent.Len(), idleConns.refused+silent.refused, open,
		n.scalar("metaguard_admin_connections_rejected_total"), n.scalar("metaguard_admin_connections_evicted_total"),
		idle, m, sandbox.MiB(anon), probed, v)
	if open > 64 {
		t.Errorf("%v admin connections open, over its cap of 64", open)
	}
	checkServed(t, "the kubelet's probe", probed)
	checkServed(t, "a pod's metadata request", v)
}

// serveNodeProbe is serveVictim for a client in the node namespace: the
// kubelet probing /healthz, a scraper reading /metrics.
func serveNodeProbe(n *node, url string, every time.Duration) *victim {
	return serveFrom(n, n.s.NodeHTTPClient(), url, nil, every)
}

// TestFloodIdleClientConnections: 32 pods each open twice their share of
// connections to the metadata address, send one request on each and keep
// it alive, idle. The caps hold them to the total, the eviction of the
// heaviest source's idle connections keeps a 33rd pod served, and the
// peak RSS stays under the bound.
func TestFloodIdleClientConnections(t *testing.T) {
	n := startNode(t, relPolicy)
	b := n.budget()
	flooders := n.addPods("batch", "idle", 32, map[string]string{"app": "batch"})
	victim := n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "victim", Labels: map[string]string{"app": "web"}})
	perPod := 2 * b.ConnsPerSource

	before := n.goMemory()
	mem := n.watchMemory()
	idle, _ := mem.Now()
	vic := serveVictim(n, victim, instanceID, nil, 50*time.Millisecond)
	begin := time.Now()
	f := floodConns(t, n.ctx, flooders, "169.254.169.254:80", perPod, "GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n", true)
	opened := time.Since(begin)
	open := n.scalar("metaguard_connections_open")
	during := n.goMemory()
	// The victim goes on a little with the table full.
	awaitAttempts(t, vic, 20)
	v := vic.Stop()
	m, anon := checkPeak(t, mem)
	reportf(t, "budget %+v; %d pods x %d connections in %s: %d made, %d refused at dial; open %v; evicted %v, rejected %v; idle %s; flooded %s, peak anon %s; go managed %s -> %s (%.0f B/conn), heap %s -> %s, stacks %s -> %s, goroutines %v -> %v; victim: %s",
		b, len(flooders), perPod, opened.Round(time.Millisecond), f.Len(), f.refused, open,
		n.scalar("metaguard_connections_evicted_total"), n.scalar("metaguard_connections_rejected_total"),
		idle, m, sandbox.MiB(anon),
		sandbox.MiB(int64(before.Managed)), sandbox.MiB(int64(during.Managed)), (during.Managed-before.Managed)/open,
		sandbox.MiB(int64(before.HeapInuse)), sandbox.MiB(int64(during.HeapInuse)),
		sandbox.MiB(int64(before.StackInuse)), sandbox.MiB(int64(during.StackInuse)),
		before.Goroutines, during.Goroutines, v)
	if open > float64(b.Conns) {
		t.Errorf("%v client connections open, over the total of %d", open, b.Conns)
	}
	checkServed(t, "the 33rd pod", v)
}

// TestFloodSlowHeaders: 32 pods each open twice their share of
// connections and send most of a 12 KiB header block, never the end of
// it. The caps hold them to the total, a connection that has not sent a
// whole request within a second is evicted for a newcomer, so a 33rd pod
// is served, and the peak RSS stays under the bound.
func TestFloodSlowHeaders(t *testing.T) {
	n := startNode(t, relPolicy)
	b := n.budget()
	flooders := n.addPods("batch", "slow", 32, map[string]string{"app": "batch"})
	victim := n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "victim", Labels: map[string]string{"app": "web"}})
	perPod := 2 * b.ConnsPerSource
	// Just under the 12 KiB header limit: the most a connection can make
	// metaguard hold before it answers 431.
	partial := "GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: 169.254.169.254\r\n" +
		strings.Repeat("X-Slow: "+strings.Repeat("s", 90)+"\r\n", 110)

	mem := n.watchMemory()
	idle, _ := mem.Now()
	vic := serveVictim(n, victim, instanceID, nil, 50*time.Millisecond)
	begin := time.Now()
	f := floodConns(t, n.ctx, flooders, "169.254.169.254:80", perPod, partial, false)
	opened := time.Since(begin)
	open := n.scalar("metaguard_connections_open")
	// Until the header timeout ends them all: the victim is served while
	// the flood holds the table full.
	eventually(t, 15*time.Second, func() bool { return n.scalar("metaguard_connections_open") == 0 })
	held := time.Since(begin)
	v := vic.Stop()
	m, anon := checkPeak(t, mem)
	reportf(t, "budget %+v; %d pods x %d slow connections (%d header bytes each) in %s: %d made, %d refused at dial; open %v, all closed after %s; evicted %v, rejected %v; idle %s; flooded %s, peak anon %s; victim: %s",
		b, len(flooders), perPod, len(partial), opened.Round(time.Millisecond), f.Len(), f.refused, open, held.Round(time.Millisecond),
		n.scalar("metaguard_connections_evicted_total"), n.scalar("metaguard_connections_rejected_total"),
		idle, m, sandbox.MiB(anon), v)
	if open > float64(b.Conns) {
		t.Errorf("%v client connections open, over the total of %d", open, b.Conns)
	}
	checkServed(t, "the 33rd pod", v)
}
