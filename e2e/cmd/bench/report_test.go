package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// fakeReport is a report as a full run with a baseline fills it, with
// round numbers: per request, nginx costs 40 µs of CPU, metaguard 50.
func fakeReport() *report {
	o := options{duration: 6 * time.Second, warmup: time.Second, rounds: 3, conns: 16}
	l := &loadResult{tables: tables(16, true, false), samples: map[string][]sample{}, startLoad: "1.00 1.00 1.00", endLoad: "2.00 2.00 2.00",
		load1: []float64{1, 3, 2}, took: time.Minute, baseRev: "abc1234"}
	rps := map[string]int64{"direct": 40000, "nginx": 20000, "allowed": 15000, "strip": 14000, "denied": 30000, "baseline": 12000}
	p99 := map[string]float64{"direct": 500, "nginx": 1000, "allowed": 1900, "strip": 2500, "denied": 800, "baseline": 5000}
	cpu := map[string]time.Duration{"nginx": 40, "allowed": 50, "baseline": 60}
	for _, t := range l.tables {
		for _, r := range t.rows {
			for i := range int64(3) {
				n := (rps[r.key] + 100*i) * 6
				w := wrkResult{Requests: n, Duration: 6 * time.Second, q: make([]float64, quantiles)}
				for j := range w.q {
					w.q[j] = 200
					if j >= quantiles*99/100-1 {
						w.q[j] = p99[r.key] + 10*float64(i)
					}
				}
				if r.status != 200 {
					w.Non2xx = n
				}
				u := usage{cpu: time.Duration(n) * cpu[r.key] * time.Microsecond, sys: time.Duration(n) * cpu[r.key] * time.Microsecond / 2}
				l.samples[t.key+"/"+r.key] = append(l.samples[t.key+"/"+r.key], sample{wrk: w, use: u, mem: memory{rssKiB: 20 << 10, hwmKiB: 22 << 10}})
			}
		}
	}
	l.profile = &profileResult{samples: 7000, rps: 15000, self: []perfLine{{name: "pvm_irq_enable", kernel: true, pct: 29.2}},
		children: []perfLine{{name: "net/http.(*conn).serve", pct: 45.6}}, groups: []perfLine{{name: "kernel", pct: 49.1}}, stages: []perfLine{{name: "decision", pct: 0.5}}}
	l.tails = []*tailResult{{label: "the DaemonSet's settings", span: 4 * time.Second, requests: 40000, p50: 300 * time.Microsecond, p99: 3 * time.Millisecond, gcCycles: 8}}
	g := &goBenchResult{benchtime: "1s", results: []goBench{
		{pkg: "metaguard.dev/metaguard/proxy/policy", name: "BenchmarkDecide/rules=100/_latest_meta-data_", nsPerOp: 640},
		{pkg: "metaguard.dev/metaguard/identity/podindex", name: "BenchmarkLookupHit", nsPerOp: 21},
		{pkg: "metaguard.dev/metaguard/e2e/cmd/bench", name: "BenchmarkLoopbackDirect", nsPerOp: 76000, bytesPerOp: 5485, allocsPerOp: 64},
		{pkg: "metaguard.dev/metaguard/e2e/cmd/bench", name: "BenchmarkLoopbackProxy/allowed", nsPerOp: 200000, bytesPerOp: 14554, allocsPerOp: 162},
	}}
	return &report{machine: machineInfo{date: "2026-01-01 00:00 UTC", cpu: "AMD EPYC", cores: 2}, opts: o, took: 14 * time.Minute, load: l, gobench: g}
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
			"## The tail at 16 connections", "## Where metaguard's CPU goes", "## The upstream transport", "## Go benchmarks"} {
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
		// Allowed: median 15100 req/s and p99 1910 µs; nginx 20100 and 1010.
		if !strings.Contains(out, "| 3 | metaguard, allowed path | 15100 | 0.75 | 0.200 | 1.910 | 1.89 |") {
			t.Errorf("row 3 of the first table is not 15100 req/s at 0.75x nginx, p99 1.89x:\n%s", out)
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
		"p99 at most 2x nginx's":                                            "met",
		"CPU per request at most 1.5x nginx's":                              "met",
		"throughput at least 0.7x nginx's":                                  "met",
		"no regression of the single-connection added latency (within 10%)": "met",
		"no regression of RSS (within 5%)":                                  "met",
		"p99 added over direct under 250 µs, one request at a time":         "**not met**",
		"zero allocations on the identity hit path":                         "met",
		"decision under 1 µs for a 100-rule policy":                         "met",
	} {
		if got[what] != want {
			t.Errorf("%s: %q, want %q", what, got[what], want)
		}
	}
	t.Run("without a baseline the regression target is not measured", func(t *testing.T) {
		r := fakeReport()
		r.load.baseRev = ""
		for _, l := range r.targets() {
			if strings.HasPrefix(l.what, "no regression") && l.met != "not measured" {
				t.Errorf("%s: %q", l.what, l.met)
			}
		}
	})
	t.Run("phases that did not run judge nothing", func(t *testing.T) {
		r := fakeReport()
		r.load, r.gobench = nil, nil
		if n := len(r.targets()); n != 0 {
			t.Errorf("%d targets judged without measurements", n)
		}
	})
}
