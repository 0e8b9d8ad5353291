package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// fakeReport is a report as a full run fills it, with round numbers.
func fakeReport() *report {
	opts := loadOptions{duration: 8 * time.Second, warmup: time.Second, rounds: 3, threads: 2, conns: 16}
	l := &loadResult{tables: loadTables(), results: map[string][]*rowResult{}, opts: opts, startLoad: "1.00 1.00 1.00", endLoad: "2.00 2.00 2.00", took: time.Minute}
	rps := map[rowKind]int64{rowDirect: 40000, rowNginx: 20000, rowAllow: 19000, rowStrip: 15000, rowDeny: 30000, rowAudit: 18000}
	for _, t := range l.tables {
		for _, k := range t.rows {
			rr := &rowResult{kind: k}
			for i := range int64(3) {
				w := wrkResult{Requests: (rps[k] + i*100) * 8, Duration: 8 * time.Second, P50: 200, P90: 300, P99: 500 + 150*float64(k), P999: 2000}
				if k == rowDeny {
					w.Non2xx = w.Requests
				}
				rr.samples = append(rr.samples, sample{wrk: w, cpu: cpuTime{total: 4, sys: 2}, mem: memory{rssKiB: 20 << 10, hwmKiB: 22 << 10}})
			}
			l.results[t.key] = append(l.results[t.key], rr)
		}
	}
	l.profile = &profileResult{samples: 7000, rps: 19000,
		self:     []perfLine{{name: "pvm_irq_enable", kernel: true, pct: 29.2}},
		children: []perfLine{{name: "net/http.(*conn).serve", pct: 45.6}},
		groups:   []perfLine{{name: "kernel (syscalls, TCP/IP, netfilter, scheduler)", pct: 49.1}},
		key:      []perfLine{{name: "decision", pct: 0.5}},
	}
	s := &scaleResult{
		opts:        scaleOptions{pods: 150000, nodes: 1000, nodePods: 250, namespaces: 300, workers: 48, budget: 6 * time.Minute},
		clusterPods: 150000, createTook: 5 * time.Minute, localPodSize: 6000, otherPodSize: 4300, apiserverRSS: 2 << 20,
		runs: []mgScaleRun{
			{clusterPods: 250, ready: 700 * time.Millisecond, synced: 500 * time.Millisecond, mem: memory{rssKiB: 32 << 10, hwmKiB: 33 << 10}, apiBytes: 113207, podsTracked: 250},
			{clusterPods: 150000, ready: 900 * time.Millisecond, synced: 600 * time.Millisecond, mem: memory{rssKiB: 33 << 10, hwmKiB: 34 << 10}, apiBytes: 117521, podsTracked: 250},
		},
		informers: []informerRun{
			{label: scopedLabel, clusterPods: 250, pods: 250, bytes: 111235, decoded: 1 << 20, took: 100 * time.Millisecond},
			{label: scopedLabel, clusterPods: 150000, pods: 250, bytes: 111235, decoded: 1 << 20, took: 100 * time.Millisecond},
			{label: "unscoped", clusterPods: 150000, pods: 150000, bytes: 22 << 20, decoded: 600 << 20, took: 30 * time.Second},
		},
	}
	g := &goBenchResult{benchtime: "1s", withoutBenchmarks: []string{"metaguard.dev/metaguard/proxy"}, results: []goBench{
		{pkg: "metaguard.dev/metaguard/proxy/policy", name: "BenchmarkDecide/rules=100/_latest_meta-data_", nsPerOp: 640},
		{pkg: "metaguard.dev/metaguard/proxy/policy", name: "BenchmarkDecide/rules=100/_latest_meta-data_placement_region", nsPerOp: 300},
		{pkg: "metaguard.dev/metaguard/identity/podindex", name: "BenchmarkLookupHit", nsPerOp: 21},
		{pkg: "metaguard.dev/metaguard/identity/podindex", name: "BenchmarkLookupHitIPv6", nsPerOp: 25},
		{pkg: "metaguard.dev/metaguard/e2e/cmd/bench", name: "BenchmarkLoopbackDirect", nsPerOp: 76000, bytesPerOp: 5485, allocsPerOp: 64},
		{pkg: "metaguard.dev/metaguard/e2e/cmd/bench", name: "BenchmarkLoopbackProxy/allowed", nsPerOp: 200000, bytesPerOp: 14554, allocsPerOp: 162},
	}}
	return &report{machine: machineInfo{date: "2026-01-01 00:00 UTC", cpu: "AMD EPYC", cores: 2, nginx: "nginx/1.22.1"}, took: 14 * time.Minute, load: l, scale: s, gobench: g, skipped: map[string]string{}}
}

func render(r *report) string {
	var b bytes.Buffer
	r.write(&b)
	return b.String()
}

func TestReport(t *testing.T) {
	out := render(fakeReport())
	t.Run("every section is there", func(t *testing.T) {
		for _, h := range []string{"## Machine and versions", "## Targets", "## Load through the proxy", "### Fast stand-in, keep-alive",
			"### amazon-ec2-metadata-mock, keep-alive", "### Fast stand-in, a new connection per request", "### Fast stand-in, one request at a time",
			"## Where metaguard's CPU goes",
			"## Identity at scale", "## Go benchmarks"} {
			if !strings.Contains(out, "\n"+h+"\n") {
				t.Errorf("no %q", h)
			}
		}
	})
	t.Run("no format verb is left broken", func(t *testing.T) {
		if i := strings.Index(out, "%!"); i >= 0 {
			t.Errorf("broken verb: %q", out[max(0, i-80):i+20])
		}
	})
	t.Run("the same results render the same bytes", func(t *testing.T) {
		if render(fakeReport()) != out {
			t.Error("two renderings differ")
		}
	})
	t.Run("ratios are those of the medians", func(t *testing.T) {
		// Allowed: median 19100 req/s; nginx 20100, direct 40100.
		if !strings.Contains(out, "| 3 | metaguard, allowed path | 19100 | 0.48 | 0.95 | 0.200 |") {
			t.Errorf("row 3 of the first table is not 19100 at 0.48x direct and 0.95x nginx:\n%s", out)
		}
	})
	t.Run("the latency table shows what the proxy adds to one request", func(t *testing.T) {
		// One at a time: direct p99 median 650, allowed 950.
		if !strings.Contains(out, "| 3 | metaguard, allowed path | 200 | 950 | 2000 | +0 µs | +300 µs | +0 µs |") {
			t.Errorf("row 3 of the latency table is not +300 µs at p99:\n%s", out)
		}
	})
	t.Run("scoping's saving compares informers in the same cluster", func(t *testing.T) {
		if !strings.Contains(out, "unscoped informer receives 207x the bytes and decodes 600x as much") {
			t.Error("the scoped/unscoped comparison is missing or mixes cluster sizes")
		}
	})
	t.Run("the denied row's 403s are what it measures, not errors", func(t *testing.T) {
		if strings.Contains(out, "Row 5:") {
			t.Error("the denied row's 403 answers were reported as unexpected")
		}
	})
	t.Run("the proxy's own loopback cost is proxied minus direct", func(t *testing.T) {
		if !strings.Contains(out, "124000 ns, 9069 B and 98 allocations") {
			t.Error("loopback difference missing or wrong")
		}
	})
}

func TestTargets(t *testing.T) {
	got := map[string]string{}
	for _, l := range fakeReport().targets() {
		got[l.what] = l.met
	}
	for what, want := range map[string]string{
		"allowed path at least 0.9x nginx's requests/s":                         "met",
		"p99 added over direct under 250 µs":                                    "**not met**",
		"zero allocations on the identity hit path":                             "met",
		"decision under 1 µs for a 100-rule policy":                             "met",
		"RSS under 40 MiB with 250 pods on the node, whatever the cluster size": "met",
		"ready within 2 s of the API server answering":                          "met",
	} {
		if got[what] != want {
			t.Errorf("%s: %q, want %q", what, got[what], want)
		}
	}
	t.Run("a phase that did not run measures nothing rather than passing", func(t *testing.T) {
		r := fakeReport()
		r.load, r.scale, r.gobench = nil, nil, nil
		for _, l := range r.targets() {
			if l.met != "not measured" {
				t.Errorf("%s: %q", l.what, l.met)
			}
		}
	})
}
