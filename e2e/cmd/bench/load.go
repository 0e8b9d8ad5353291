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
	"strings"
	"time"

	"metaguard.dev/metaguard/e2e/sandbox"
)

// loadOptions shape the load phase.
type loadOptions struct {
	duration, warmup time.Duration
	rounds           int
	threads, conns   int
	profile          bool
}

// loadPolicy is metaguard's policy in rows 3 to 6: both upstreams are
// endpoints; the load pod may read instance-id and the meta-data listing
// (iam/ stripped from it, credentials: strip being the default); the
// credential path is denied.
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

// bench is the load phase's running state.
type bench struct {
	s       *sandbox.Sandbox
	opts    loadOptions
	pod     *sandbox.Pod
	dir     string // our files in the sandbox's artifact directory
	script  string
	policy  string
	nginx   *sandbox.Process // the reverse proxy of row 2
	iptable string
	logf    func(string, ...any)
}

// runLoad builds the load phase's world in the sandbox and measures every
// row of every table, rounds times, sessions back to back.
func runLoad(ctx context.Context, s *sandbox.Sandbox, opts loadOptions, logf func(string, ...any)) (*loadResult, error) {
	b := &bench{s: s, opts: opts, dir: filepath.Join(s.ArtifactDir(), "bench"), logf: logf}
	if err := b.setup(ctx); err != nil {
		return nil, err
	}
	res := &loadResult{tables: loadTables(), results: map[string][]*rowResult{}, startLoad: loadAverage(), opts: opts}
	for _, t := range res.tables {
		for _, k := range t.rows {
			res.results[t.key] = append(res.results[t.key], &rowResult{kind: k})
		}
	}
	begin := time.Now()
	for round := 1; round <= opts.rounds; round++ {
		// Every other round runs the sessions in reverse, so that no
		// configuration always follows the same one.
		order := slices.Clone(sessions)
		if round%2 == 0 {
			slices.Reverse(order)
		}
		for _, sess := range order {
			if err := b.runSession(ctx, res, round, sess); err != nil {
				return nil, err
			}
		}
	}
	res.took = time.Since(begin)
	res.endLoad = loadAverage()
	if opts.profile {
		p, err := b.profileAllowed(ctx)
		if err != nil {
			// A profile explains numbers; its absence does not void them.
			logf("profile: %v", err)
			p = &profileResult{err: err.Error()}
		}
		res.profile = p
	}
	return res, nil
}

func (b *bench) setup(ctx context.Context) error {
	if err := os.MkdirAll(b.dir, 0o700); err != nil {
		return err
	}
	b.script = filepath.Join(b.dir, "summary.lua")
	b.policy = filepath.Join(b.dir, "policy.yaml")
	if err := os.WriteFile(b.script, []byte(wrkScript), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(b.policy, []byte(loadPolicy), 0o600); err != nil {
		return err
	}
	if err := b.s.ApplyManifests(ctx, "deploy/base"); err != nil {
		return err
	}
	pod, err := b.s.AddPod(ctx, sandbox.PodSpec{Namespace: "bench", Name: "load", Labels: map[string]string{"app": "load"}})
	if err != nil {
		return err
	}
	b.pod = pod

	if err := b.s.AddCloudAddress(ctx, fastAddr.Addr()); err != nil {
		return err
	}
	if _, err := startNginx(ctx, b.s, b.s.CloudNetns(), filepath.Join(b.dir, "nginx-upstream"),
		upstreamConf(filepath.Join(b.dir, "nginx-upstream"), fastAddr),
		map[string]string{"latest/meta-data/instance-id": instanceID, "latest/meta-data/index.txt": metaListing + "\n"},
		fastAddr); err != nil {
		return fmt.Errorf("starting the fast upstream: %w", err)
	}
	routes := []nginxRoute{{targetFast.nginxListen, targetFast.addr}, {targetMock.nginxListen, targetMock.addr}}
	p, err := startNginx(ctx, b.s, b.s.NodeNetns(), filepath.Join(b.dir, "nginx-proxy"),
		proxyConf(filepath.Join(b.dir, "nginx-proxy"), routes), nil, targetFast.nginxListen, targetMock.nginxListen)
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
	// that true from the first row on, the direct row included, instead
	// of only once a proxy row has added a DNAT.
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
	for _, t := range []target{targetFast, targetMock} {
		status, body, err := b.get(ctx, t, pathListing)
		if err != nil {
			return err
		}
		if status != 200 || !strings.Contains(body, "\niam/\n") {
			return fmt.Errorf("%s's meta-data listing has no iam/ entry (status %d): %q", t.title, status, body)
		}
	}
	return nil
}

func (b *bench) iptables(ctx context.Context, args ...string) error {
	_, err := b.s.ExecInNode(ctx, append([]string{b.iptable, "-w", "-t", "nat"}, args...)...)
	return err
}

// dnatRule sends the pod's connections to the target to the reverse
// proxy, as metaguard's own rule sends them to metaguard.
func dnatRule(t target) []string {
	return []string{"PREROUTING", "-s", sandbox.PodCIDR.String(), "-d", t.addr.Addr().String() + "/32", "-p", "tcp",
		"--dport", fmt.Sprint(t.addr.Port()), "-j", "DNAT", "--to-destination", hostPort(t.nginxListen)}
}

// runSession starts what the session needs, runs its rows of every table
// and stops it again.
func (b *bench) runSession(ctx context.Context, res *loadResult, round int, sess session) error {
	var (
		pids []int
		stop func() error
	)
	switch sess {
	case sessNone:
		stop = func() error { return nil }
	case sessNginx:
		for _, t := range []target{targetFast, targetMock} {
			if err := b.iptables(ctx, append([]string{"-I"}, dnatRule(t)...)...); err != nil {
				return err
			}
		}
		pids = withChildren(b.nginx.Pid())
		stop = func() error {
			var errs []error
			for _, t := range []target{targetFast, targetMock} {
				errs = append(errs, b.iptables(ctx, append([]string{"-D"}, dnatRule(t)...)...))
			}
			return errors.Join(errs...)
		}
	case sessMetaguard, sessMetaguardAudit, sessMetaguardPool:
		audit := "/dev/null"
		if sess == sessMetaguardAudit {
			audit = filepath.Join(b.dir, fmt.Sprintf("audit-round%d.jsonl", round))
		}
		var extra []string
		if sess == sessMetaguardPool {
			extra = append(extra, "--upstream-transport=pool")
		}
		mg, err := b.startMetaguard(ctx, audit, extra...)
		if err != nil {
			return err
		}
		pids = []int{mg.Pid()}
		stopScrape := func() {}
		if sess == sessMetaguardAudit {
			stopScrape = b.scrapeMetrics(ctx)
		}
		stop = func() error {
			stopScrape()
			return b.stopMetaguard(ctx, mg)
		}
	}
	var errs []error
	for _, t := range res.tables {
		for _, rr := range res.results[t.key] {
			if rowInfos[rr.kind].session != sess {
				continue
			}
			smp, err := b.measure(ctx, t, rr.kind, pids)
			if err != nil {
				errs = append(errs, fmt.Errorf("round %d, %s, row %d: %w", round, t.title, rr.kind, err))
				break
			}
			rr.samples = append(rr.samples, smp)
			b.logf("round %d  %-44s row %d  %8.0f req/s  p99 %6.2f ms  proxy CPU %5.2f s  unexpected %d",
				round, t.title, rr.kind, smp.wrk.RPS(), smp.wrk.P99/1000, smp.cpu.total, smp.unexpected)
		}
		if len(errs) > 0 {
			break
		}
	}
	errs = append(errs, stop())
	return errors.Join(errs...)
}

// measure checks one answer, warms up, then runs wrk once while reading
// the proxy's CPU time around the run.
func (b *bench) measure(ctx context.Context, t tableSpec, kind rowKind, pids []int) (sample, error) {
	info := rowInfos[kind]
	if err := b.check(ctx, t.target, kind); err != nil {
		return sample{}, err
	}
	url := "http://" + hostPort(t.target.addr) + info.path
	threads, conns := b.opts.threads, b.opts.conns
	if t.oneAtATime {
		threads, conns = 1, 1
	}
	if b.opts.warmup > 0 {
		if _, err := b.wrk(ctx, b.opts.warmup, threads, conns, url, t.keepAlive); err != nil {
			return sample{}, err
		}
	}
	cpu0, err := cpuSeconds(pids)
	if err != nil {
		return sample{}, err
	}
	w, err := b.wrk(ctx, b.opts.duration, threads, conns, url, t.keepAlive)
	if err != nil {
		return sample{}, err
	}
	cpu1, err := cpuSeconds(pids)
	if err != nil {
		return sample{}, err
	}
	mem, err := readMemory(pids)
	if err != nil {
		return sample{}, err
	}
	smp := sample{wrk: w, cpu: cpu1.sub(cpu0), mem: mem, unexpected: w.SockErrors + w.Non2xx}
	if info.status != 200 {
		smp.unexpected = w.SockErrors + (w.Requests - w.Non2xx)
	}
	return smp, nil
}

func (b *bench) wrk(ctx context.Context, d time.Duration, threads, conns int, url string, keepAlive bool) (wrkResult, error) {
	ctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
	defer cancel()
	out, err := b.s.ExecInPod(ctx, b.pod, wrkArgs(threads, conns, d, b.script, url, keepAlive)...)
	if err != nil {
		return wrkResult{}, err
	}
	return parseWrk(out)
}

// check sends one request as the row will and compares the answer with
// what the row claims to measure: a row that measured errors would lie.
func (b *bench) check(ctx context.Context, t target, kind rowKind) error {
	info := rowInfos[kind]
	status, body, err := b.get(ctx, t, info.path)
	if err != nil {
		return err
	}
	ok := status == info.status
	switch {
	case kind == rowStrip:
		ok = ok && !strings.Contains(body, "iam/") && strings.Contains(body, "instance-id")
	case info.status == 200:
		ok = ok && strings.HasPrefix(body, "i-")
	}
	if !ok {
		return fmt.Errorf("GET %s from the pod: %d %q, not what row %d measures", info.path, status, body, kind)
	}
	return nil
}

func (b *bench) get(ctx context.Context, t target, path string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+hostPort(t.addr)+path, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := b.s.PodHTTPClient(b.pod).Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}
