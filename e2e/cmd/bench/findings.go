package main

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// writeFindings says, from this run's numbers, where the tail comes from
// and what the targets not met still cost; the sections below hold the
// evidence.
func (r *report) writeFindings(p printer) {
	l := r.load
	if l == nil || len(l.tails) == 0 || l.profile == nil {
		return
	}
	t, mg, ngx := l.tails[0], l.row("fast", rowAllow), l.row("fast", rowNginx)
	var slow time.Duration
	for _, d := range t.slow {
		slow += d
	}
	share := func(d time.Duration) float64 { return 100 * float64(d) / float64(slow) }
	order := []int{}
	for c := range nCats {
		order = append(order, c)
	}
	slices.SortFunc(order, func(a, b int) int { return int(t.slow[b] - t.slow[a]) })
	p("### Where the tail comes from\n\n")
	p("At %d connections metaguard is saturated, so its p99 is queueing, and a request queues once for every goroutine it\n", r.opts.conns)
	p("passes through: the connection's, the Transport's write and read loops, net/http's background read. The trace of the\n")
	p("slowest 1%% of requests (below) says where their time went: %.0f%% %s, %.0f%% %s, %.0f%% %s.\n",
		share(t.slow[order[0]]), catNames[order[0]], share(t.slow[order[1]]), catNames[order[1]], share(t.slow[order[2]]), catNames[order[2]])
	p("Of them %.0f%% overlapped a garbage collector's mark phase, against %.0f%% of all requests (%d collections in %.0f s, a\n",
		100*t.gcShareSlow, 100*t.gcShareAll, t.gcCycles, t.span.Seconds())
	p("mark phase running %.0f%% of the time, its worker taking a P from the requests; the longest stop of the world %.2f ms).\n",
		100*t.gcMarkShare, float64(t.stwMax)/1e6)
	locks := []string{"none"}
	for i, s := range t.slowLocks[:min(2, len(t.slowLocks))] {
		locks = append(locks[:i], fmt.Sprintf("`%s` %.0f%%", s.name, s.pct))
	}
	p("Their lock waits were %.0f%% of their time, most in %s. metaguard's threads waited %.1f µs per request on the\n",
		share(t.slow[catLock]), strings.Join(locks, ", "), mg.wait)
	p("kernel's run queue for a core (wrk and the upstream share the machine's), nginx's %.1f µs.", ngx.wait)
	if len(l.tails) > 1 && r.opts.variant != "" {
		v, vt := l.row("fast", rowVar), l.tails[1]
		pr := func(f func(rowStats) float64) float64 { return l.paired("fast", rowVar, rowAllow, f, ratio) }
		p(" With `%s` the run-queue wait was %.1f µs per request, %.0f%% of the slowest 1%% overlapped a mark phase and the longest\n", r.opts.variant, v.wait, 100*vt.gcShareSlow)
		p("stop was %.2f ms; against the DaemonSet's\n", float64(vt.stwMax)/1e6)
		p("settings (medians of the rounds' ratios) its p99 was %.2fx, its CPU per request %.2fx and its throughput %.2fx.",
			pr(func(s rowStats) float64 { return s.p99 }), pr(func(s rowStats) float64 { return s.cpu }), pr(func(s rowStats) float64 { return s.rps }))
	}
	p("\n\n### What the targets not met still cost\n\n")
	p("metaguard spends %.1f µs of CPU per allowed request where nginx spends %.1f µs (1.5x would be %.1f). By where the code\n", mg.cpu, ngx.cpu, 1.5*ngx.cpu)
	p("lives (the profile's self time at %.0f req/s, as µs of that request): ", l.profile.rps)
	var parts []string
	for _, g := range l.profile.groups {
		parts = append(parts, fmt.Sprintf("%s %.1f", g.name, g.pct/100*mg.cpu))
	}
	p("%s. nginx's own is %.0f%% kernel, %.1f µs. The kernel's part of metaguard's is the syscalls and the context switches\n", strings.Join(parts, "; "), 100*ngx.sysShare, ngx.sysShare*ngx.cpu)
	p("of its goroutine hand-offs (each request is written and read on two sockets, as nginx's is, plus net/http's\n")
	p("background read and the wake-ups between goroutines); the runtime's is scheduling them and collecting what net/http\n")
	p("allocates. Past that, the gap is net/http's server, reverse proxy and Transport themselves, which strict parsing and the\n")
	p("Transport's idle-connection check (below) rest on: metaguard's own stages, the audit line and the metrics are the\n")
	p("smaller part. Throughput follows CPU per request, and the p99 follows the queueing that CPU makes.\n\n")
}
