package main

import (
	"fmt"
	"runtime/debug"
	"strings"
	"time"
)

func (r *report) writeProfile(p printer) {
	p("## Where metaguard's CPU goes\n\n")
	var prof *profileResult
	if r.load != nil {
		prof = r.load.profile
	}
	switch {
	case r.load == nil:
		p("Not run: %s.\n\n", r.skipped["load"])
		return
	case prof == nil:
		p("Not run: profiling was switched off (-profile=false).\n\n")
		return
	case prof.err != "":
		p("Not available: %s.\n\n", prof.err)
		return
	}
	p("The rows' metaguard build (it keeps its symbol table), run as in row 3 (fast stand-in, keep-alive) at %.0f req/s,\n", prof.rps)
	p("sampled by `perf record -e cpu-clock -F 999 -g` for about %d samples. Go keeps frame pointers, so the call chains are whole.\n", prof.samples)
	p("Kernel time inside a syscall is attributed to the syscall path; on this VM much of it lands on the symbol where interrupts are\n")
	p("re-enabled, so read the kernel lines by their callers (the inclusive table).\n\n")
	p("The request path's stages and the runtime's overheads, inclusive (a stage holds what it calls, so stages nest and do not add up):\n\n| stage | incl. %% |\n| --- | ---: |\n")
	for _, k := range prof.key {
		p("| %s | %.1f |\n", k.name, k.pct)
	}
	p("\nSelf time by where the code lives:\n\n| where | self %% |\n| --- | ---: |\n")
	for _, g := range prof.groups {
		p("| %s | %.1f |\n", g.name, g.pct)
	}
	p("\nInclusive (the function and what it calls), top %d:\n\n| function | incl. %% |\n| --- | ---: |\n", len(prof.children))
	for _, l := range prof.children {
		p("| %s`%s` | %.1f |\n", kernelMark(l), l.name, l.pct)
	}
	p("\nSelf, top %d:\n\n| function | self %% |\n| --- | ---: |\n", len(prof.self))
	for _, l := range prof.self {
		p("| %s`%s` | %.1f |\n", kernelMark(l), l.name, l.pct)
	}
	p("\n")
}

func kernelMark(l perfLine) string {
	if l.kernel {
		return "kernel "
	}
	return ""
}

func (r *report) writeScale(p printer) {
	p("## Identity at scale\n\n")
	s := r.scale
	if s == nil {
		p("Not run: %s.\n\n", r.skipped["scale"])
		return
	}
	o := s.opts
	p("A fresh sandbox's API server is filled with %d namespaces and pods shaped like a Deployment's (labels, owner, one container with\n", o.namespaces)
	p("ports, env, resources, a probe, the projected token volume, default tolerations): %d on this node (`%s`, Running, with\n", o.nodePods, "node-a")
	p("`status.podIPs`), the rest spread over %d other node names (spec only: no kubelet publishes their status; a pod of this node is\n", o.nodes-1)
	p("%d bytes of JSON, one of another node %d). metaguard starts twice with the same policy: with only this node's pods in the\n", s.localPodSize, s.otherPodSize)
	p("cluster, then with all of them.\n\n")
	if s.hitBudget {
		p("**The cluster is smaller than asked:** %d of %d pods were created within the %v budget (-scale-budget) on this machine.\n\n", s.clusterPods, o.pods, o.budget)
	}
	created := s.clusterPods - o.nodePods
	p("Creating the other nodes' %d pods took %s (%.0f pods/s, %d parallel creates). kube-apiserver's RSS afterwards: %.0f MiB.\n\n",
		created, s.createTook.Round(time.Second), float64(created)/s.createTook.Seconds(), o.workers, float64(s.apiserverRSS)/1024)
	p("| pods in the cluster | on this node (metaguard_pods_tracked) | API server's LIST of them | ready after | informers synced after | RSS MiB | peak MiB | CPU s until measured | bytes from the API server |\n")
	p("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, run := range s.runs {
		p("| %d | %d | %.2f s | %.2f s | %.2f s | %.1f | %.1f | %.2f | %s |\n", run.clusterPods, run.podsTracked, run.apiList.Seconds(), run.ready.Seconds(), run.synced.Seconds(),
			float64(run.mem.rssKiB)/1024, float64(run.mem.hwmKiB)/1024, run.cpuSeconds, bytesHuman(run.apiBytes))
	}
	p("\n*API server's LIST of them*: one LIST of this node's pods (metaguard's field selector) by the benchmark, timed just before\n")
	p("metaguard starts, once the API server has gone quiet (under a fifth of a core for a second): what the API server alone needs.\n")
	p("*ready after*: from the process's start (`/proc/PID/stat`) to the first `/readyz` 200 (polled every 50 ms); the API server\n")
	p("was answering before metaguard started. *informers synced after*: between metaguard's `metaguard starting` and `pod index synced`\n")
	p("log lines. Memory is read %v after ready. *bytes from the API server*: `bytes_received` of metaguard's TCP connections to the API\n", settle)
	p("server (`ss -ti` in the node namespace): TLS, the pods and namespaces lists and watches, everything.\n\n")
	if len(s.informers) > 0 {
		p("What node scoping saves: a pods informer in the benchmark process, built as metaguard builds its own (same client-go, default\n")
		p("content negotiation, a transform), with metaguard's field selector and without, until it has synced:\n\n")
		p("| pods in the cluster | pods informer | pods | bytes on the wire | bytes decoded | synced after |\n| ---: | --- | ---: | ---: | ---: | ---: |\n")
		for _, ir := range s.informers {
			p("| %d | %s | %d | %s | %s | %.2f s |\n", ir.clusterPods, ir.label, ir.pods, bytesHuman(ir.bytes), bytesHuman(ir.decoded), ir.took.Seconds())
		}
		if len(s.informers[0].requests) > 0 {
			p("\nHow client-go %s listed (the scoped informer's calls until synced): `%s`.\n", clientGoVersion(), strings.Join(s.informers[0].requests, "`; `"))
			p("A streaming watch-list (`sendInitialEvents=true`), protobuf, gzip-compressed by the API server: *bytes on the wire* are\n")
			p("that, TLS included; *bytes decoded* are the bodies after decompression, what client-go decodes.\n")
		}
		var scoped, all *informerRun
		for i := range s.informers {
			switch ir := &s.informers[i]; {
			case ir.label == scopedLabel && ir.clusterPods == s.clusterPods:
				scoped = ir
			case ir.label != scopedLabel:
				all = ir
			}
		}
		if small := s.informers[0]; scoped != nil && small.label == scopedLabel && small.clusterPods < scoped.clusterPods && small.bytes > 0 {
			p("\nThe scoped informer decodes %s in the small cluster and %s in the large one; on the wire it received %s and %s.\n",
				bytesHuman(small.decoded), bytesHuman(scoped.decoded), bytesHuman(small.bytes), bytesHuman(scoped.bytes))
		}
		if scoped != nil && all != nil && scoped.bytes > 0 && scoped.decoded > 0 {
			p("\nIn the cluster of %d pods, the unscoped informer receives %.0fx the bytes and decodes %.0fx as much.\n",
				s.clusterPods, float64(all.bytes)/float64(scoped.bytes), float64(all.decoded)/float64(scoped.decoded))
		}
		p("\n")
	}
}

// clientGoVersion is the k8s.io/client-go this program (and metaguard,
// from the same go.mod) is built with.
func clientGoVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "k8s.io/client-go" {
				return d.Version
			}
		}
	}
	return "(unknown version)"
}

func bytesHuman(n int64) string {
	switch {
	case n >= 10<<20:
		return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 10<<10:
		return fmt.Sprintf("%.0f KiB", float64(n)/(1<<10))
	default:
		return fmt.Sprintf("%d B", n)
	}
}

func (r *report) writeGoBench(p printer) {
	p("## Go benchmarks\n\n")
	g := r.gobench
	if g == nil {
		p("Not run: %s.\n\n", r.skipped["gobench"])
		return
	}
	p("`go test -run '^$' -bench . -benchmem -benchtime %s %s`, after the sandboxes are gone.\n", g.benchtime, strings.Join(goBenchPackages, " "))
	p("`e2e/cmd/bench`'s own benchmarks send whole requests through a `proxy.Server` serving a real loopback listener, to a real\n")
	p("upstream (client, proxy and upstream in one process, through the kernel's TCP; `BenchmarkLoopbackDirect` is the client and\n")
	p("upstream alone, so the proxy's own cost per request is the difference).\n\n")
	if len(g.withoutBenchmarks) > 0 {
		p("Packages without benchmarks: %s.\n\n", "`"+strings.Join(g.withoutBenchmarks, "`, `")+"`")
	}
	p("| package | benchmark | ns/op | B/op | allocs/op |\n| --- | --- | ---: | ---: | ---: |\n")
	for _, b := range g.results {
		p("| %s | `%s` | %s | %d | %d |\n", strings.TrimPrefix(b.pkg, "metaguard.dev/metaguard/"), b.name, nsHuman(b.nsPerOp), b.bytesPerOp, b.allocsPerOp)
	}
	if d, ok := g.find("BenchmarkLoopbackDirect"); ok {
		if a, ok := g.find("BenchmarkLoopbackProxy/allowed"); ok {
			p("\nmetaguard's own cost per allowed request on loopback: %s ns, %d B and %d allocations (proxied minus direct).\n",
				nsHuman(a.nsPerOp-d.nsPerOp), a.bytesPerOp-d.bytesPerOp, a.allocsPerOp-d.allocsPerOp)
		}
	}
	p("\n")
}

func nsHuman(ns float64) string {
	switch {
	case ns >= 100:
		return fmt.Sprintf("%.0f", ns)
	case ns >= 10:
		return fmt.Sprintf("%.1f", ns)
	default:
		return fmt.Sprintf("%.2f", ns)
	}
}
