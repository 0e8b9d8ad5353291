package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"metaguard.dev/metaguard/e2e/sandbox"
	"metaguard.dev/metaguard/identity/podindex"
)

// scaleOptions shape the identity-scale phase.
type scaleOptions struct {
	pods, nodes, nodePods, namespaces, workers int
	budget                                     time.Duration
}

// scaleResult is the identity-scale phase's outcome.
type scaleResult struct {
	opts         scaleOptions
	clusterPods  int // pods in the API server at the large measurement
	createTook   time.Duration
	hitBudget    bool
	localPodSize int // one pod of this node, JSON as served
	otherPodSize int // one pod of another node, JSON as served
	apiserverRSS int64
	runs         []mgScaleRun
	informers    []informerRun
}

// mgScaleRun is metaguard started against a cluster of clusterPods pods.
type mgScaleRun struct {
	clusterPods int
	ready       time.Duration // process start to the first /readyz 200
	synced      time.Duration // "metaguard starting" to "pod index synced", from its log
	cpuSeconds  float64       // CPU used from start until measured
	mem         memory
	apiBytes    int64 // received on its API server connections
	podsTracked int
	// apiList is how long the API server took, just before metaguard
	// started, to answer the LIST of this node's pods: the part of ready
	// that is the API server's.
	apiList time.Duration
}

// informerRun is a pods informer in this process, scoped or not.
type informerRun struct {
	label       string
	clusterPods int
	pods        int
	bytes       int64 // on the wire: TLS records of gzip of protobuf
	// decoded is the response bodies' bytes after decompression: what
	// client-go decodes.
	decoded int64
	took    time.Duration
	// requests are the informer's calls until it synced, as
	// "VERB /path?query (encoding)", to show how client-go listed.
	requests []string
}

const scalePolicy = `apiVersion: metaguard.dev/v1alpha1
kind: Policy
endpoints:
  - {name: aws, address: "169.254.169.254:80", flavor: aws}
defaultAction: deny
rules:
  - name: node-facts
    allow: [{paths: ["/latest/meta-data/instance-id"]}]
`

// settle is how long metaguard runs after /readyz before its memory and
// bytes are read: the watch is open, the initial list decoded.
const settle = 3 * time.Second

// runScale fills the API server in two steps and measures metaguard after
// each: with only this node's pods, then with the whole cluster.
func runScale(ctx context.Context, s *sandbox.Sandbox, opts scaleOptions, logf func(string, ...any)) (*scaleResult, error) {
	if opts.nodePods > 250 || opts.nodePods < 1 {
		return nil, fmt.Errorf("-node-pods %d: this node's pod range holds 1 to 250", opts.nodePods)
	}
	res := &scaleResult{opts: opts}
	if err := s.ApplyManifests(ctx, "deploy/base"); err != nil {
		return nil, err
	}
	policy := filepath.Join(s.ArtifactDir(), "scale-policy.yaml")
	if err := os.WriteFile(policy, []byte(scalePolicy), 0o600); err != nil {
		return nil, err
	}
	fc, err := fastClient(s)
	if err != nil {
		return nil, err
	}
	if err := createNamespaces(ctx, s, opts.namespaces); err != nil {
		return nil, err
	}
	local := func(i int) (*corev1.Pod, func(*corev1.Pod)) {
		pod := workloadPod(scaleNamespace(i%opts.namespaces), fmt.Sprintf("local-%03d", i), sandbox.NodeName, i%50)
		ip := netip.AddrFrom4([4]byte{10, 244, 0, byte(2 + i)})
		return pod, func(p *corev1.Pod) { runningStatus(p, sandbox.HostIP.String(), ip) }
	}
	if n, err := createPods(ctx, fc, 0, opts.nodePods, opts.workers, time.Now().Add(5*time.Minute), new(atomic.Int64), local); err != nil || n != opts.nodePods {
		return nil, fmt.Errorf("creating this node's %d pods (created %d): %v", opts.nodePods, n, err)
	}
	run, err := measureMetaguard(ctx, s, policy, opts.nodePods, logf)
	if err != nil {
		return nil, err
	}
	res.runs = append(res.runs, run)
	logf("scale: %d pods in the cluster: ready after %v, RSS %d KiB, %d bytes from the API server", opts.nodePods, run.ready, run.mem.rssKiB, run.apiBytes)
	if err := res.addInformer(ctx, s, scopedLabel, podindex.PodFieldSelector(sandbox.NodeName), logf); err != nil {
		return nil, err
	}

	other := func(i int) (*corev1.Pod, func(*corev1.Pod)) {
		return workloadPod(scaleNamespace(i%opts.namespaces), fmt.Sprintf("p-%06d", i), otherNode(1+i%(opts.nodes-1)), i%500), nil
	}
	begin := time.Now()
	var created atomic.Int64
	stopLog := every(ctx, 15*time.Second, func() {
		n := created.Load()
		logf("scale: %d pods created in %v (%.0f/s)", n, time.Since(begin).Round(time.Second), float64(n)/time.Since(begin).Seconds())
	})
	n, err := createPods(ctx, fc, opts.nodePods, opts.pods, opts.workers, begin.Add(opts.budget), &created, other)
	stopLog()
	res.createTook = time.Since(begin)
	res.clusterPods = opts.nodePods + n
	res.hitBudget = res.clusterPods < opts.pods
	if err != nil {
		return nil, err
	}
	logf("scale: created %d pods on other nodes in %v (%.0f/s)", n, res.createTook.Round(time.Second), float64(n)/res.createTook.Seconds())

	run, err = measureMetaguard(ctx, s, policy, res.clusterPods, logf)
	if err != nil {
		return nil, err
	}
	res.runs = append(res.runs, run)
	logf("scale: %d pods in the cluster: ready after %v, RSS %d KiB, %d bytes from the API server", res.clusterPods, run.ready, run.mem.rssKiB, run.apiBytes)

	for _, c := range []struct {
		label, selector string
	}{
		{scopedLabel, podindex.PodFieldSelector(sandbox.NodeName)},
		{"every pod in the cluster (no field selector)", ""},
	} {
		if err := res.addInformer(ctx, s, c.label, c.selector, logf); err != nil {
			return nil, err
		}
	}
	res.localPodSize, _ = podJSONSize(ctx, s, scaleNamespace(0), "local-000")
	res.otherPodSize, _ = podJSONSize(ctx, s, scaleNamespace(opts.nodePods%opts.namespaces), fmt.Sprintf("p-%06d", opts.nodePods))
	if m, err := readMemory([]int{s.APIServerProcess().Pid()}); err == nil {
		res.apiserverRSS = m.rssKiB
	}
	return res, nil
}

// scopedLabel names the informer that watches what metaguard watches.
var scopedLabel = "this node's pods (spec.nodeName=" + sandbox.NodeName + ", as metaguard)"

// addInformer measures a pods informer in this process against the
// cluster as it is now.
func (res *scaleResult) addInformer(ctx context.Context, s *sandbox.Sandbox, label, selector string, logf func(string, ...any)) error {
	ir, err := informerBytes(ctx, s, label, selector)
	if err != nil {
		return err
	}
	ir.clusterPods = res.opts.nodePods
	if res.clusterPods > 0 {
		ir.clusterPods = res.clusterPods
	}
	res.informers = append(res.informers, ir)
	logf("scale: pods informer, %s, cluster of %d: %d pods, %d bytes, synced in %v; requests: %s", label, ir.clusterPods, ir.pods, ir.bytes, ir.took, strings.Join(ir.requests, "; "))
	return nil
}

// measureMetaguard starts metaguard, reads what the scale table reports
// once it is ready and settled, and stops it.
func measureMetaguard(ctx context.Context, s *sandbox.Sandbox, policy string, clusterPods int, logf func(string, ...any)) (mgScaleRun, error) {
	run := mgScaleRun{clusterPods: clusterPods}
	if err := waitQuiet(ctx, s.APIServerProcess().Pid(), logf); err != nil {
		return run, err
	}
	begin := time.Now()
	if _, err := s.AdminClient().CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: podindex.PodFieldSelector(sandbox.NodeName)}); err != nil {
		return run, fmt.Errorf("listing this node's pods: %w", err)
	}
	run.apiList = time.Since(begin)
	mg, err := s.StartMetaguard(ctx, "--config="+policy, "--audit-log=/dev/null", "--cleanup-on-exit=true")
	if err != nil {
		return run, err
	}
	defer mg.Stop()
	age, err := processAge(mg.Pid())
	if err != nil {
		return run, err
	}
	run.ready = time.Duration(age * float64(time.Second))
	select {
	case <-ctx.Done():
		return run, ctx.Err()
	case <-time.After(settle):
	}
	pids := []int{mg.Pid()}
	if run.mem, err = readMemory(pids); err != nil {
		return run, err
	}
	cpu, err := cpuSeconds(pids)
	if err != nil {
		return run, err
	}
	run.cpuSeconds = cpu.total
	if run.apiBytes, err = apiBytesReceived(ctx, s, mg.Pid()); err != nil {
		return run, err
	}
	if run.podsTracked, err = podsTracked(s); err != nil {
		return run, err
	}
	logs, _ := mg.Stderr()
	run.synced = syncTime(logs)
	return run, nil
}

// waitQuiet waits until the API server has used less than a fifth of a
// core over a second (at most a minute): after a storm of creates it is
// still writing its watch cache, and metaguard's start would measure that.
func waitQuiet(ctx context.Context, pid int, logf func(string, ...any)) error {
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		c0, err := cpuSeconds([]int{pid})
		if err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
		c1, err := cpuSeconds([]int{pid})
		if err != nil {
			return err
		}
		if c1.total-c0.total < 0.2 {
			return nil
		}
	}
	logf("scale: the API server is still busy after a minute; measuring anyway")
	return nil
}

// apiBytesReceived sums bytes_received (TCP payload, TLS records
// included) of the process's connections to the API server, as ss -ti
// reports them inside the node namespace.
func apiBytesReceived(ctx context.Context, s *sandbox.Sandbox, pid int) (int64, error) {
	out, err := s.ExecInNode(ctx, "ss", "-tinpH", "state", "established", "dport", "=", ":6443")
	if err != nil {
		return 0, err
	}
	return parseSS(out, pid)
}

// parseSS reads ss -tinpH: a socket line naming the owning processes, then
// an indented line of TCP info.
func parseSS(out []byte, pid int) (int64, error) {
	var total int64
	ours, found := false, false
	want := "pid=" + strconv.Itoa(pid) + ","
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		if line[0] != ' ' && line[0] != '\t' {
			ours = strings.Contains(line, want)
			continue
		}
		if !ours {
			continue
		}
		for _, f := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(f, "bytes_received:"); ok {
				n, err := strconv.ParseInt(v, 10, 64)
				if err != nil {
					return 0, fmt.Errorf("ss: %q: %w", f, err)
				}
				total += n
				found = true
			}
		}
	}
	if !found {
		return 0, fmt.Errorf("ss shows no API server connection of pid %d:\n%s", pid, out)
	}
	return total, nil
}

func podsTracked(s *sandbox.Sandbox) (int, error) {
	resp, err := s.NodeHTTPClient().Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "metaguard_pods_tracked "); ok {
			f, err := strconv.ParseFloat(v, 64)
			return int(f), err
		}
	}
	return 0, fmt.Errorf("no metaguard_pods_tracked in /metrics")
}

// syncTime is the time between metaguard's first log line and the pod
// index's "synced" line; 0 when either is missing.
func syncTime(logs []byte) time.Duration {
	var start, synced time.Time
	sc := bufio.NewScanner(strings.NewReader(string(logs)))
	for sc.Scan() {
		var l struct {
			Time time.Time `json:"time"`
			Msg  string    `json:"msg"`
		}
		if json.Unmarshal(sc.Bytes(), &l) != nil {
			continue
		}
		switch l.Msg {
		case "metaguard starting":
			start = l.Time
		case "pod index synced":
			synced = l.Time
		}
	}
	if start.IsZero() || synced.IsZero() {
		return 0
	}
	return synced.Sub(start)
}

// every calls f every interval until the returned stop is called.
func every(ctx context.Context, interval time.Duration, f func()) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				f()
			}
		}
	}()
	return func() { cancel(); <-done }
}
