//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"metaguard.dev/metaguard/e2e/sandbox"
	"metaguard.dev/metaguard/identity/podindex"
)

// The identity-at-scale test fills an API server with a large cluster, so
// it runs only when asked: go test -tags e2e -run TestIdentityAtScale ./e2e/ -scale
var (
	scale      = flag.Bool("scale", false, "run TestIdentityAtScale: a cluster of -scale-pods pods (about 10 minutes)")
	scalePods  = flag.Int("scale-pods", 150000, "pods in the API server for TestIdentityAtScale, over 1000 nodes")
	scaleLocal = 250 // pods on this node
	scaleNS    = 300
)

const scalePolicy = `apiVersion: metaguard.dev/v1alpha1
kind: Policy
endpoints:
  - {name: aws, address: "169.254.169.254:80", flavor: aws}
defaultAction: deny
rules:
  - name: node-facts
    allow: [{paths: ["/latest/meta-data/instance-id"]}]
`

// scaleRun is metaguard started against a cluster of pods pods.
type scaleRun struct {
	pods, tracked   int
	ready, synced   time.Duration // process start to /readyz 200; its log's "starting" to "pod index synced"
	rssKiB, peakKiB int64
	cpu             time.Duration // from start until measured
	apiBytes        int64         // received on its API server connections
}

// TestIdentityAtScale: what metaguard holds and receives depends on its
// node's pods, not on the cluster's. It starts metaguard with 250 pods on
// its node and none elsewhere, then with 150,000 pods over 1000 nodes, and
// compares it with pods informers in the test that watch this node's pods
// and every pod. Judged as ratios between those runs, never as durations;
// the durations are logged for BENCHMARKS.md's readers.
func TestIdentityAtScale(t *testing.T) {
	if !*scale {
		t.Skip("-scale not set")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	s := sandbox.StartT(t, sandbox.Options{})
	if err := s.ApplyManifests(ctx, "../deploy/base"); err != nil {
		t.Fatal(err)
	}
	policy := filepath.Join(s.ArtifactDir(), "policy.yaml")
	if err := os.WriteFile(policy, []byte(scalePolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	c := newLoader(t, s)
	for i := range scaleNS {
		if err := s.EnsureNamespace(ctx, fmt.Sprintf("team-%03d", i), map[string]string{"team": fmt.Sprintf("t%d", i%20)}); err != nil {
			t.Fatal(err)
		}
	}
	c.create(ctx, 0, scaleLocal, func(i int) (*corev1.Pod, netip.Addr) {
		return workloadPod(i%scaleNS, fmt.Sprintf("local-%03d", i), sandbox.NodeName, i%50), netip.AddrFrom4([4]byte{10, 244, 0, byte(2 + i)})
	})
	scoped := podindex.PodFieldSelector(sandbox.NodeName)
	small := measureScale(ctx, t, s, policy, scaleLocal)
	smallScoped := informerBytes(ctx, t, s, scoped)

	begin := time.Now()
	c.create(ctx, scaleLocal, *scalePods, func(i int) (*corev1.Pod, netip.Addr) {
		return workloadPod(i%scaleNS, fmt.Sprintf("p-%06d", i), fmt.Sprintf("node-%04d", 1+i%999), i%500), netip.Addr{}
	})
	t.Logf("created %d pods on other nodes in %v", *scalePods-scaleLocal, time.Since(begin).Round(time.Second))
	large := measureScale(ctx, t, s, policy, *scalePods)
	largeScoped, all := informerBytes(ctx, t, s, scoped), informerBytes(ctx, t, s, "")

	t.Logf("| pods in the cluster | tracked | ready after | informers synced after | RSS MiB | peak MiB | CPU s | bytes from the API server |")
	for _, r := range []scaleRun{small, large} {
		t.Logf("| %d | %d | %.2f s | %.2f s | %.1f | %.1f | %.2f | %d KiB |", r.pods, r.tracked, r.ready.Seconds(), r.synced.Seconds(),
			float64(r.rssKiB)/1024, float64(r.peakKiB)/1024, r.cpu.Seconds(), r.apiBytes>>10)
	}
	t.Logf("pods informers: this node's, %d pods: %d KiB on the wire, %d KiB decoded; in %d pods: %d KiB, %d KiB; every pod: %d KiB, %d KiB, synced in %v",
		scaleLocal, smallScoped.wire>>10, smallScoped.decoded>>10, *scalePods, largeScoped.wire>>10, largeScoped.decoded>>10, all.wire>>10, all.decoded>>10, all.took.Round(time.Millisecond))

	for _, r := range []scaleRun{small, large} {
		if r.tracked != scaleLocal {
			t.Errorf("cluster of %d: metaguard tracks %d pods, not its node's %d", r.pods, r.tracked, scaleLocal)
		}
	}
	// Memory follows the node: the large cluster may cost 10% more peak RSS
	// than the small one (the runtime's own noise), not more.
	if large.peakKiB > small.peakKiB*11/10 {
		t.Errorf("peak RSS %d KiB in a cluster of %d pods against %d KiB with only this node's: the cluster's size reaches metaguard's memory", large.peakKiB, large.pods, small.peakKiB)
	}
	// What is decoded follows the node too, and an unscoped informer
	// decodes the cluster: at least half of pods/node-pods times as much.
	if largeScoped.decoded > smallScoped.decoded*11/10 || all.decoded < largeScoped.decoded*int64(*scalePods/scaleLocal)/2 {
		t.Errorf("decoded bytes: this node's pods %d (small cluster) and %d (large), every pod %d: node scoping does not hold", smallScoped.decoded, largeScoped.decoded, all.decoded)
	}
}

// measureScale starts metaguard once the API server has gone quiet, reads
// what the test reports once it is ready and settled, and stops it.
func measureScale(ctx context.Context, t *testing.T, s *sandbox.Sandbox, policy string, pods int) scaleRun {
	t.Helper()
	waitQuiet(t, s.APIServerProcess().Pid())
	mg, err := s.StartMetaguard(ctx, "--config="+policy, "--audit-log=/dev/null", "--cleanup-on-exit=true")
	if err != nil {
		t.Fatal(err)
	}
	defer mg.Stop()
	r := scaleRun{pods: pods}
	f := procStat(t, mg.Pid())
	r.ready = time.Duration((uptime(t) - float64(f[22-3])/100) * float64(time.Second))
	// The watch is open and the initial list decoded a few seconds after
	// ready.
	time.Sleep(3 * time.Second)
	f = procStat(t, mg.Pid())
	r.cpu = time.Duration(f[14-3]+f[15-3]) * 10 * time.Millisecond
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", mg.Pid()))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(status), "\n") {
		k, v, _ := strings.Cut(l, ":")
		n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if k == "VmRSS" {
			r.rssKiB = n
		} else if k == "VmHWM" {
			r.peakKiB = n
		}
	}
	r.apiBytes = apiBytesReceived(ctx, t, s, mg.Pid())
	r.tracked = int(metric((&node{t: t, s: s, ctx: ctx}).metrics(), "metaguard_pods_tracked", nil))
	logs, _ := mg.Stderr()
	r.synced = syncTime(logs)
	return r
}

// procStat are the numeric fields of /proc/PID/stat after the command
// name: field n at index n-3.
func procStat(t *testing.T, pid int) []int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	var out []int64
	for _, f := range strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:])) {
		n, _ := strconv.ParseInt(f, 10, 64)
		out = append(out, n)
	}
	return out
}

func uptime(t *testing.T) float64 {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		t.Fatal(err)
	}
	up, _ := strconv.ParseFloat(strings.Fields(string(b))[0], 64)
	return up
}

// waitQuiet waits until the API server used under a fifth of a core over
// a second (at most a minute): after a storm of creates it is still
// writing its watch cache, and metaguard's start would measure that.
func waitQuiet(t *testing.T, pid int) {
	for range 60 {
		before := procStat(t, pid)
		time.Sleep(time.Second)
		after := procStat(t, pid)
		if after[14-3]+after[15-3]-before[14-3]-before[15-3] < 20 {
			return
		}
	}
	t.Log("the API server is still busy after a minute; measuring anyway")
}

// apiBytesReceived sums bytes_received (TLS records included) of the
// process's connections to the API server, from ss -ti in the node
// namespace.
func apiBytesReceived(ctx context.Context, t *testing.T, s *sandbox.Sandbox, pid int) int64 {
	out, err := s.ExecInNode(ctx, "ss", "-tinpH", "state", "established", "dport", "=", ":6443")
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	ours := false
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		line := sc.Text()
		if line != "" && line[0] != ' ' && line[0] != '\t' {
			ours = strings.Contains(line, "pid="+strconv.Itoa(pid)+",")
			continue
		}
		for _, f := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(f, "bytes_received:"); ok && ours {
				n, _ := strconv.ParseInt(v, 10, 64)
				total += n
			}
		}
	}
	if total == 0 {
		t.Fatalf("ss shows no API server connection of pid %d:\n%s", pid, out)
	}
	return total
}

// syncTime is the time between metaguard's "metaguard starting" and "pod
// index synced" log lines; 0 when either is missing.
func syncTime(logs []byte) time.Duration {
	var start, synced time.Time
	sc := bufio.NewScanner(strings.NewReader(string(logs)))
	for sc.Scan() {
		var l struct {
			Time time.Time `json:"time"`
			Msg  string    `json:"msg"`
		}
		if json.Unmarshal(sc.Bytes(), &l) == nil && l.Msg == "metaguard starting" {
			start = l.Time
		} else if l.Msg == "pod index synced" {
			synced = l.Time
		}
	}
	if start.IsZero() || synced.IsZero() {
		return 0
	}
	return synced.Sub(start)
}
