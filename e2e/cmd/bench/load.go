package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"metaguard.dev/metaguard/e2e/sandbox"
)

// loadPolicy is metaguard's policy in every metaguard row: both upstreams
// are endpoints; the load pods may read instance-id and the meta-data
// listing (iam/ stripped from it, credentials: strip being the default);
// the credential path is denied.
const loadPolicy = `apiVersion: metaguard.dev/v1alpha1
kind: Policy
mode: enforce
endpoints:
  - {name: fast, address: "169.254.169.249:80", flavor: aws}
  - {name: mock, address: "169.254.169.254:80", flavor: aws}
defaultAction: deny
rules:
  - name: bench
    podSelector: {matchLabels: {app: load}}
    allow:
      - paths: ["/latest/meta-data/", "/latest/meta-data/instance-id"]
`

// metricsAddr is metaguard's default --metrics-listen, seen from the node.
const metricsAddr = "127.0.0.1:9181"

// sample is one wrk run of one row and what the proxy used meanwhile.
type sample struct {
	wrk        wrkResult
	use        usage  // proxy processes, over the run; zero without a proxy
	mem        memory // proxy processes, at the end of the run
	unexpected int64  // responses with another status, socket errors
}

// loadResult is the load phase's outcome.
type loadResult struct {
	tables             []table
	samples            map[string][]sample // by table key + "/" + row key
	startLoad, endLoad string
	load1              []float64 // the 1-minute load average at each run
	took               time.Duration
	profile            *profileResult
	tails              []*tailResult // the DaemonSet's settings, then the variant's
	baseRev            string
}

func (l *loadResult) row(t string, r row) rowStats { return statsOf(l.samples[t+"/"+r.key]) }

// runner is the load phase's running state.
type runner struct {
	s       *sandbox.Sandbox
	bins    *binaries
	o       options
	pods    []*sandbox.Pod
	dir     string // our files in the sandbox's artifact directory
	script  string
	policy  string
	nginx   *sandbox.Process // the reverse proxy
	iptable string
	res     *loadResult
}

// runLoad builds the load phase's world in the sandbox and measures every
// row of every table in every round, then profiles and traces metaguard.
func runLoad(ctx context.Context, s *sandbox.Sandbox, bins *binaries, o options) (*loadResult, error) {
	b := &runner{s: s, bins: bins, o: o, dir: filepath.Join(s.ArtifactDir(), "bench")}
	b.res = &loadResult{samples: map[string][]sample{}, baseRev: bins.baseRev}
	for _, t := range tables(o.conns, bins.baseline != "", o.variant != "") {
		// The profile and the trace load the first table's allowed row.
		if o.tables == "" || t.key == "fast" || slices.Contains(strings.Split(o.tables, ","), t.key) {
			b.res.tables = append(b.res.tables, t)
		}
	}
	if err := b.setup(ctx); err != nil {
		return nil, err
	}
	sessions := []session{sessDirect, sessNginx, sessMetaguard}
	if bins.baseline != "" {
		sessions = append(sessions, sessBaseline)
	}
	if o.variant != "" {
		sessions = append(sessions, sessVariant)
	}
	b.res.startLoad = loadAverage()
	begin := time.Now()
	for round := 1; round <= o.rounds; round++ {
		// Every other round runs the sessions in reverse, so no
		// configuration always follows the same one.
		order := slices.Clone(sessions)
		if round%2 == 0 {
			slices.Reverse(order)
		}
		for _, sess := range order {
			if err := b.runSession(ctx, round, sess); err != nil {
				return nil, err
			}
		}
	}
	b.res.took, b.res.endLoad = time.Since(begin), loadAverage()
	var err error
	if o.profile {
		if b.res.profile, err = b.profileAllowed(ctx); err != nil {
			return nil, fmt.Errorf("profile: %w", err)
		}
	}
	if o.trace {
		traced := []session{sessTraced}
		if o.variant != "" {
			traced = append(traced, sessTracedVariant)
		}
		for _, sess := range traced {
			t, err := b.traceAllowed(ctx, sess)
			if err != nil {
				return nil, fmt.Errorf("trace: %w", err)
			}
			b.res.tails = append(b.res.tails, t)
		}
	}
	return b.res, nil
}

func (b *runner) setup(ctx context.Context) error {
	b.script, b.policy = filepath.Join(b.dir, "summary.lua"), filepath.Join(b.dir, "policy.yaml")
	if err := os.MkdirAll(b.dir, 0o700); err != nil {
		return err
	}
	if err := errors.Join(os.WriteFile(b.script, []byte(wrkScript), 0o600), os.WriteFile(b.policy, []byte(loadPolicy), 0o600)); err != nil {
		return err
	}
	if err := b.s.ApplyManifests(ctx, "deploy/base"); err != nil {
		return err
	}
	for i := range loadPods {
		pod, err := b.s.AddPod(ctx, sandbox.PodSpec{Namespace: "bench", Name: "load-" + strconv.Itoa(i), Labels: map[string]string{"app": "load"}})
		if err != nil {
			return err
		}
		b.pods = append(b.pods, pod)
	}
	if err := b.s.AddCloudAddress(ctx, fast.addr.Addr()); err != nil {
		return err
	}
	upDir, proxyDir := filepath.Join(b.dir, "nginx-upstream"), filepath.Join(b.dir, "nginx-proxy")
	files := map[string]string{"latest/meta-data/instance-id": instanceID, "latest/meta-data/index.txt": metaListing + "\n"}
	if _, err := startNginx(ctx, b.s, b.s.CloudNetns(), upDir, upstreamConf(upDir, fast.addr), files, fast.addr); err != nil {
		return fmt.Errorf("starting the fast upstream: %w", err)
	}
	p, err := startNginx(ctx, b.s, b.s.NodeNetns(), proxyDir, proxyConf(proxyDir, fast, mock), nil, fast.nginxListen, mock.nginxListen)
	if err != nil {
		return fmt.Errorf("starting the reverse proxy: %w", err)
	}
	b.nginx = p
	b.iptable = "iptables-nft"
	if _, err := lookTool(b.iptable); err != nil {
		b.iptable = "iptables"
	}
	// A node always has NAT rules (kube-proxy's at least), so conntrack
	// tracks every connection crossing it. This never-matching rule makes
	// that true from the first row on, the direct row included.
	if err := b.iptables(ctx, "-A", "PREROUTING", "-d", "192.0.2.1/32", "-j", "RETURN"); err != nil {
		return err
	}
	// The new-connection table opens tens of thousands of connections a
	// run; in TIME_WAIT their conntrack entries would live 120 s and fill
	// the table. This is the node namespace's own setting.
	if _, err := b.s.ExecInNode(ctx, "sysctl", "-q", "-w", "net.netfilter.nf_conntrack_tcp_timeout_time_wait=5"); err != nil {
		return err
	}
	// The strip row only measures something if the listing holds iam/.
	for _, up := range []upstream{fast, mock} {
		if status, body, err := b.get(ctx, up, pathListing); err != nil || status != 200 || !strings.Contains(body, "\niam/\n") {
			return fmt.Errorf("%s's meta-data listing has no iam/ entry (%d, %v): %q", up.title, status, err, body)
		}
	}
	return nil
}

func (b *runner) iptables(ctx context.Context, args ...string) error {
	_, err := b.s.ExecInNode(ctx, append([]string{b.iptable, "-w", "-t", "nat"}, args...)...)
	return err
}

// dnatRules send the pods' connections to the upstream to the reverse
// proxy, as metaguard's own rules send them to metaguard.
func (b *runner) dnatRules(ctx context.Context, op string) error {
	var errs []error
	for _, up := range []upstream{fast, mock} {
		errs = append(errs, b.iptables(ctx, op, "PREROUTING", "-s", sandbox.PodCIDR.String(), "-d", up.addr.Addr().String()+"/32", "-p", "tcp",
			"--dport", strconv.Itoa(int(up.addr.Port())), "-j", "DNAT", "--to-destination", up.nginxListen.String()))
	}
	return errors.Join(errs...)
}

// runSession starts what the session needs, runs its rows of every table
// and stops it again.
func (b *runner) runSession(ctx context.Context, round int, sess session) error {
	var pids []int
	stop := func() error { return nil }
	switch sess {
	case sessNginx:
		if err := b.dnatRules(ctx, "-I"); err != nil {
			return err
		}
		pids, stop = withChildren(b.nginx.Pid()), func() error { return b.dnatRules(ctx, "-D") }
	case sessMetaguard, sessBaseline, sessVariant:
		mg, stopMG, err := b.startMetaguard(ctx, sess, fmt.Sprintf("audit-%s-%d.jsonl", sess, round))
		if err != nil {
			return err
		}
		pids, stop = []int{mg.Pid()}, stopMG
	}
	var err error
	for _, t := range b.res.tables {
		for _, r := range t.rows {
			if r.session != sess || err != nil {
				continue
			}
			var smp sample
			if smp, err = b.measure(ctx, t, r, pids); err != nil {
				err = fmt.Errorf("round %d, %s, %s: %w", round, t.title, r.label, err)
				break
			}
			b.res.samples[t.key+"/"+r.key] = append(b.res.samples[t.key+"/"+r.key], smp)
			logf("round %d  %-44s %-9s %8.0f req/s  p99 %6.2f ms  CPU %5.2f s  unexpected %d",
				round, t.title, r.key, smp.wrk.RPS(), smp.wrk.Pct(99)/1000, smp.use.cpu.Seconds(), smp.unexpected)
		}
	}
	return errors.Join(err, stop())
}

// startMetaguard runs the session's build on the node with the load policy,
// its audit log appended to a file and /metrics scraped every second, as
// deployed. Rules go on exit, so that the next session sees none.
func (b *runner) startMetaguard(ctx context.Context, sess session, audit string) (*sandbox.Process, func() error, error) {
	bin, args := b.bins.current, []string{"--config=" + b.policy, "--audit-log=" + filepath.Join(b.dir, audit), "--cleanup-on-exit=true", "--log-level=warn"}
	switch sess {
	case sessBaseline:
		bin = b.bins.baseline
	case sessTraced, sessTracedVariant:
		bin = b.bins.traced
	}
	if b.iptable == "iptables-nft" {
		args = append(args, "--iptables-mode=nft")
	}
	if err := b.bins.use(bin); err != nil {
		return nil, nil, err
	}
	if sess == sessVariant || sess == sessTracedVariant {
		// The sandbox starts metaguard with the applied DaemonSet's Go
		// settings: the variant's stand in for them while it starts.
		restore, err := b.setGoEnv(ctx, strings.Fields(b.o.variant))
		if err != nil {
			return nil, nil, err
		}
		defer restore()
	}
	mg, err := b.s.StartMetaguard(ctx, args...)
	if err != nil {
		return nil, nil, err
	}
	stopScrape := b.scrapeMetrics(ctx)
	return mg, func() error {
		stopScrape()
		if err := mg.Stop(); err != nil {
			return err
		}
		out, err := b.s.ExecInNode(ctx, b.iptable+"-save", "-t", "nat")
		if err == nil && strings.Contains(string(out), "METAGUARD") {
			err = fmt.Errorf("metaguard's rules survived its exit with --cleanup-on-exit:\n%s", out)
		}
		return err
	}, nil
}

// setGoEnv sets NAME=VALUE settings on the applied DaemonSet's metaguard
// container and returns what puts the old ones back.
func (b *runner) setGoEnv(ctx context.Context, settings []string) (restore func(), err error) {
	dss := b.s.AdminClient().AppsV1().DaemonSets(sandbox.MetaguardNamespace)
	ds, err := dss.Get(ctx, "metaguard", metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	orig := ds.DeepCopy()
	c := &ds.Spec.Template.Spec.Containers[0]
	for _, kv := range settings {
		k, v, _ := strings.Cut(kv, "=")
		c.Env = slices.DeleteFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == k })
		c.Env = append(c.Env, corev1.EnvVar{Name: k, Value: v})
	}
	if _, err := dss.Update(ctx, ds, metav1.UpdateOptions{}); err != nil {
		return nil, err
	}
	return func() {
		cur, err := dss.Get(ctx, "metaguard", metav1.GetOptions{})
		if err == nil {
			cur.Spec = orig.Spec
			_, err = dss.Update(ctx, cur, metav1.UpdateOptions{})
		}
		if err != nil {
			logf("restoring the DaemonSet's Go settings: %v", err)
		}
	}, nil
}

// scrapeMetrics reads /metrics every second, as a Prometheus would, until
// the returned stop is called.
func (b *runner) scrapeMetrics(ctx context.Context) (stop func()) {
	client := b.s.NodeHTTPClient()
	client.Timeout = 5 * time.Second
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if resp, err := client.Get("http://" + metricsAddr + "/metrics"); err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}
	}()
	return func() { cancel(); <-done }
}

// measure checks one answer, warms up, then runs wrk once while reading
// the proxy's usage around the run.
func (b *runner) measure(ctx context.Context, t table, r row, pids []int) (sample, error) {
	if err := b.check(ctx, t.up, r); err != nil {
		return sample{}, err
	}
	if _, err := b.wrk(ctx, t, r.path, b.o.warmup); err != nil {
		return sample{}, err
	}
	u0, err := readUsage(pids)
	if err != nil {
		return sample{}, err
	}
	w, err := b.wrk(ctx, t, r.path, b.o.duration)
	if err != nil {
		return sample{}, err
	}
	u1, err := readUsage(pids)
	if err != nil {
		return sample{}, err
	}
	mem, err := readMemory(pids)
	smp := sample{wrk: w, use: u1.sub(u0), mem: mem, unexpected: w.SockErrors + w.Non2xx}
	if r.status != 200 {
		smp.unexpected = w.SockErrors + w.Requests - w.Non2xx
	}
	var l1 float64
	fmt.Sscanf(loadAverage(), "%f", &l1)
	b.res.load1 = append(b.res.load1, l1)
	return smp, err
}

// wrk runs the table's connections for d: one wrk in one pod, or one in
// each load pod at once with its share of the connections, merged.
func (b *runner) wrk(ctx context.Context, t table, path string, d time.Duration) (wrkResult, error) {
	ctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
	defer cancel()
	pods := b.pods[:1]
	if t.conns > 1 {
		pods = b.pods
	}
	url := "http://" + t.up.addr.String() + path
	runs, errs := make([]wrkResult, len(pods)), make([]error, len(pods))
	var wg sync.WaitGroup
	for i, pod := range pods {
		wg.Go(func() {
			out, err := b.s.ExecInPod(ctx, pod, wrkArgs(t.conns/len(pods), d, b.script, url, t.keepAlive)...)
			if err == nil {
				runs[i], err = parseWrk(out)
			}
			errs[i] = err
		})
	}
	wg.Wait()
	return mergeWrk(runs), errors.Join(errs...)
}

// check sends one request as the row will and compares the answer with
// what the row claims to measure: a row that measured errors would lie.
func (b *runner) check(ctx context.Context, up upstream, r row) error {
	status, body, err := b.get(ctx, up, r.path)
	for try := 0; err != nil && try < 3; try++ {
		// A new connection may meet the previous session's in TIME_WAIT
		// on the same ports and be reset: a fresh one is the next try.
		time.Sleep(100 * time.Millisecond)
		status, body, err = b.get(ctx, up, r.path)
	}
	if err != nil {
		return err
	}
	ok := status == r.status
	switch {
	case r.path == pathListing:
		ok = ok && !strings.Contains(body, "iam/") && strings.Contains(body, "instance-id")
	case r.status == 200:
		ok = ok && strings.HasPrefix(body, "i-")
	}
	if !ok {
		return fmt.Errorf("GET %s from a load pod: %d %q, not what the row measures", r.path, status, body)
	}
	return nil
}

func (b *runner) get(ctx context.Context, up upstream, path string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+up.addr.String()+path, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := b.s.PodHTTPClient(b.pods[0]).Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}
