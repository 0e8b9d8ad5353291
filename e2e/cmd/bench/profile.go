package main

import (
	"bufio"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// profileResult is where metaguard's CPU went during one run of row 3
// (fast stand-in, keep-alive), from perf's cpu-clock samples with call
// chains (Go keeps frame pointers, so user stacks unwind).
type profileResult struct {
	err      string
	samples  int
	rps      float64
	self     []perfLine // by self time
	children []perfLine // by time including callees
	groups   []perfLine // self time summed by where the code lives
	key      []perfLine // the request path's stages, inclusive
}

// perfLine is one symbol (or group) and its share of the samples, in %.
type perfLine struct {
	name   string
	kernel bool
	pct    float64
}

// profileAllowed runs metaguard as in row 3 and samples it with perf while
// wrk loads the allowed path; the run's build keeps its symbol table.
func (b *bench) profileAllowed(ctx context.Context) (*profileResult, error) {
	perf, err := lookTool("perf")
	if err != nil {
		return nil, fmt.Errorf("perf is not installed (apt-get install -y linux-perf): no profile")
	}
	mg, err := b.startMetaguard(ctx, "/dev/null")
	if err != nil {
		return nil, err
	}
	defer b.stopMetaguard(ctx, mg)
	url := "http://" + hostPort(targetFast.addr) + pathAllowed
	if _, err := b.wrk(ctx, b.opts.warmup+time.Second, b.opts.threads, b.opts.conns, url, true); err != nil {
		return nil, err
	}
	data := filepath.Join(b.dir, "perf.data")
	// perf samples the middle of the wrk run: not its connection set-up,
	// not its end.
	span := b.opts.duration - 2*time.Second
	if span < time.Second {
		span = time.Second
	}
	var (
		wg      sync.WaitGroup
		perfErr error
		perfOut []byte
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		select {
		case <-time.After(time.Second):
		case <-ctx.Done():
			return
		}
		cmd := exec.CommandContext(ctx, perf, "record", "-e", "cpu-clock", "-F", "999", "-g", "-p", strconv.Itoa(mg.Pid()),
			"-o", data, "--", "sleep", strconv.Itoa(int(span/time.Second)))
		perfOut, perfErr = cmd.CombinedOutput()
	}()
	w, err := b.wrk(ctx, b.opts.duration, b.opts.threads, b.opts.conns, url, true)
	wg.Wait()
	if err != nil {
		return nil, err
	}
	if perfErr != nil {
		return nil, fmt.Errorf("perf record: %w: %s", perfErr, perfOut)
	}
	res := &profileResult{rps: w.RPS()}
	selfOut, err := exec.CommandContext(ctx, perf, "report", "-i", data, "--stdio", "--no-children", "--sort", "sym", "-g", "none", "--percent-limit", "0").Output()
	if err != nil {
		return nil, fmt.Errorf("perf report: %w", err)
	}
	childOut, err := exec.CommandContext(ctx, perf, "report", "-i", data, "--stdio", "--children", "--sort", "sym", "-g", "none", "--percent-limit", "0").Output()
	if err != nil {
		return nil, fmt.Errorf("perf report: %w", err)
	}
	res.samples = perfSamples(selfOut)
	self := parsePerf(selfOut, false)
	res.self = top(self, 15)
	children := parsePerf(childOut, true)
	res.key = keyStages(children)
	res.children = top(children, 25)
	res.groups = groupSelf(self)
	return res, nil
}

// keyFunctions are the stages of a request and the runtime's overheads,
// by the symbols (or symbol prefixes) that contain them. A stage is the
// largest share among its symbols (the outermost call holds its callees),
// or with sum, their total: goroutines of their own do not nest.
var keyFunctions = []struct {
	label    string
	prefixes []string
	sum      bool
}{
	{"serving pod connections: read and parse requests, run the handler, write responses (`net/http.(*conn).serve`)", []string{"net/http.(*conn).serve"}, false},
	{"metaguard's handler, forwarding included (`proxy.(*Server).ServeHTTP`)", []string{"metaguard.dev/metaguard/proxy.(*Server).ServeHTTP"}, false},
	{"forwarding (`httputil.(*ReverseProxy).ServeHTTP`)", []string{"net/http/httputil.(*ReverseProxy).ServeHTTP"}, false},
	{"the upstream round trip on the handler's goroutine (`proxy.(*upstreamTransport).RoundTrip`, or `http.(*Transport).roundTrip`)",
		[]string{"metaguard.dev/metaguard/proxy.(*upstreamTransport).RoundTrip", "net/http.(*Transport).roundTrip"}, false},
	{"an http.Transport's own goroutines (`http.(*persistConn).readLoop`, `writeLoop`; none with an inline transport)",
		[]string{"net/http.(*persistConn).readLoop", "net/http.(*persistConn).writeLoop"}, true},
	{"identity lookup (`podindex.(*Index).Lookup`)", []string{"metaguard.dev/metaguard/identity/podindex.(*Index).Lookup"}, false},
	{"canonicalisation (`proxy.Canonicalize`)", []string{"metaguard.dev/metaguard/proxy.Canonicalize"}, false},
	{"decision (`policy.(*Policy).Decide`)", []string{"metaguard.dev/metaguard/proxy/policy.(*Policy).Decide"}, false},
	{"audit line (`proxy.(*auditLog).write`)", []string{"metaguard.dev/metaguard/proxy.(*auditLog).write"}, false},
	{"request metrics (prometheus `WithLabelValues`, `Inc`, `Observe`)", []string{"github.com/prometheus/client_golang/prometheus.(*"}, false},
	{"garbage collection, background (`runtime.gcBgMarkWorker`)", []string{"runtime.gcBgMarkWorker"}, false},
	{"allocation (`runtime.mallocgc`)", []string{"runtime.mallocgc"}, false},
	{"goroutine scheduling (`runtime.schedule`)", []string{"runtime.schedule"}, false},
	{"syscalls (kernel `entry_SYSCALL_64`)", []string{"entry_SYSCALL_64"}, false},
}

// keyStages is each key function's inclusive share.
func keyStages(children []perfLine) []perfLine {
	var out []perfLine
	for _, k := range keyFunctions {
		var share float64
		for _, prefix := range k.prefixes {
			best := 0.0
			for _, l := range children {
				if strings.HasPrefix(l.name, prefix) && l.pct > best {
					best = l.pct
				}
			}
			if k.sum {
				share += best
			} else {
				share = max(share, best)
			}
		}
		out = append(out, perfLine{name: k.label, pct: share})
	}
	return out
}

// parsePerf reads `perf report --stdio --sort sym -g none` lines:
// "  12.34%  [.] symbol" or, with --children, "  40.00%  1.00%  [k] symbol".
// The first percentage is the one wanted in both.
func parsePerf(out []byte, children bool) []perfLine {
	var lines []perfLine
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 3 || strings.HasPrefix(f[0], "#") || !strings.HasSuffix(f[0], "%") {
			continue
		}
		pct, err := strconv.ParseFloat(strings.TrimSuffix(f[0], "%"), 64)
		if err != nil {
			continue
		}
		rest := f[1:]
		if children && len(rest) > 0 && strings.HasSuffix(rest[0], "%") {
			rest = rest[1:]
		}
		if len(rest) < 2 {
			continue
		}
		lines = append(lines, perfLine{name: strings.Join(rest[1:], " "), kernel: rest[0] == "[k]", pct: pct})
	}
	return lines
}

func perfSamples(out []byte) int {
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		// "# Samples: 7K of event 'cpu-clock'" rounds; the event count
		// line does not: "# Event count (approx.): 7007007000" at 999 Hz.
		if v, ok := strings.CutPrefix(sc.Text(), "# Event count (approx.): "); ok {
			n, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return int(n/1e9*999 + 0.5)
		}
	}
	return 0
}

func top(lines []perfLine, n int) []perfLine {
	sort.SliceStable(lines, func(i, j int) bool { return lines[i].pct > lines[j].pct })
	if len(lines) > n {
		lines = lines[:n]
	}
	return lines
}

// groupSelf sums self time by where the code lives, so that the reader
// sees kernel against runtime against HTTP against metaguard's own.
func groupSelf(self []perfLine) []perfLine {
	sums := map[string]float64{}
	for _, l := range self {
		sums[groupOf(l)] += l.pct
	}
	var g []perfLine
	for name, pct := range sums {
		g = append(g, perfLine{name: name, pct: pct})
	}
	sort.Slice(g, func(i, j int) bool {
		if g[i].pct != g[j].pct {
			return g[i].pct > g[j].pct
		}
		return g[i].name < g[j].name
	})
	return g
}

var perfGroups = []struct{ prefix, group string }{
	{"metaguard.dev/", "metaguard's own code"},
	{"net/http", "net/http (server, reverse proxy, transport)"},
	{"bufio.", "net/http (server, reverse proxy, transport)"},
	{"net/textproto.", "net/http (server, reverse proxy, transport)"},
	{"net/url.", "net/http (server, reverse proxy, transport)"},
	{"mime.", "net/http (server, reverse proxy, transport)"},
	{"net.", "net, internal/poll, syscall wrappers"},
	{"internal/poll.", "net, internal/poll, syscall wrappers"},
	{"syscall.", "net, internal/poll, syscall wrappers"},
	{"internal/runtime/syscall", "net, internal/poll, syscall wrappers"},
	{"log/slog.", "audit log encoding (log/slog, encoding/json, strconv)"},
	{"encoding/json.", "audit log encoding (log/slog, encoding/json, strconv)"},
	{"strconv.", "audit log encoding (log/slog, encoding/json, strconv)"},
	{"github.com/prometheus/", "metrics (prometheus client)"},
	{"context.", "context, sync, time, maps, strings"},
	{"sync.", "context, sync, time, maps, strings"},
	{"time.", "context, sync, time, maps, strings"},
	{"internal/sync.", "context, sync, time, maps, strings"},
	{"strings.", "context, sync, time, maps, strings"},
	{"internal/runtime/maps.", "context, sync, time, maps, strings"},
	{"runtime.", "Go runtime (scheduler, GC, allocation)"},
	{"internal/runtime/", "Go runtime (scheduler, GC, allocation)"},
	{"gcWriteBarrier", "Go runtime (scheduler, GC, allocation)"},
	{"aeshashbody", "Go runtime (scheduler, GC, allocation)"},
	{"indexbytebody", "context, sync, time, maps, strings"},
	{"memeqbody", "context, sync, time, maps, strings"},
	{"cmpbody", "context, sync, time, maps, strings"},
}

func groupOf(l perfLine) string {
	if l.kernel {
		return "kernel (syscalls, TCP/IP, netfilter, scheduler)"
	}
	for _, g := range perfGroups {
		if strings.HasPrefix(l.name, g.prefix) {
			return g.group
		}
	}
	return "other"
}
