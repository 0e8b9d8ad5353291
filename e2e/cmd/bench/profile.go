package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// profileResult is where metaguard's CPU went during one run of the
// allowed row (fast stand-in, keep-alive, all connections), from perf's
// cpu-clock samples with call chains (Go keeps frame pointers).
type profileResult struct {
	samples  int
	rps      float64
	self     []perfLine // top by self time
	children []perfLine // top by time including callees
	groups   []perfLine // self time summed by where the code lives
	stages   []perfLine // the request path's stages, inclusive
}

// perfLine is one symbol (or group) and its share of the samples, in %.
type perfLine struct {
	name   string
	kernel bool
	pct    float64
}

// stages are the request path's stages and the runtime's overheads, by
// the symbols that contain them: a stage is the largest inclusive share
// among its symbols (the outermost call holds its callees), or with sum
// their total (goroutines of their own do not nest). A stage none of whose
// symbols has a sample fails the run: a renamed function must not print 0%.
var stages = []struct {
	label   string
	symbols []string
	sum     bool
}{
	{"serving pod connections: read and parse requests, run the handler, write responses", []string{"net/http.(*conn).serve"}, false},
	{"metaguard's handler, forwarding included", []string{"metaguard.dev/metaguard/proxy.(*Server).ServeHTTP"}, false},
	{"forwarding", []string{"net/http/httputil.(*ReverseProxy).ServeHTTP"}, false},
	{"the upstream round trip on the handler's goroutine", []string{"net/http.(*Transport).roundTrip"}, false},
	{"the Transport's own goroutines (readLoop, writeLoop)", []string{"net/http.(*persistConn).readLoop", "net/http.(*persistConn).writeLoop"}, true},
	{"identity lookup", []string{"metaguard.dev/metaguard/identity/podindex.(*Index).Lookup"}, false},
	{"canonicalisation", []string{"metaguard.dev/metaguard/proxy.Canonicalize"}, false},
	{"decision", []string{"metaguard.dev/metaguard/proxy/policy.(*Policy).decide"}, false},
	{"audit line", []string{"metaguard.dev/metaguard/proxy/audit.(*Writer).Write"}, false},
	{"request metrics", []string{"metaguard.dev/metaguard/proxy.(*metrics).observe"}, false},
	{"garbage collection, background", []string{"runtime.gcBgMarkWorker"}, false},
	{"allocation", []string{"runtime.mallocgc"}, false},
	{"goroutine scheduling", []string{"runtime.schedule"}, false},
	{"syscalls", []string{"entry_SYSCALL_64_after_hwframe"}, false},
}

// perfHz is the sampling rate: high enough that the cheapest stage (the
// identity lookup, well under 1% of a request) has samples in a few
// seconds.
const perfHz = 4999

// profileAllowed runs metaguard as in the allowed row and samples it with
// perf while wrk loads it.
func (b *runner) profileAllowed(ctx context.Context) (*profileResult, error) {
	logf("profiling metaguard with perf")
	perf, err := lookTool("perf")
	if err != nil {
		return nil, err
	}
	mg, stop, err := b.startMetaguard(ctx, sessMetaguard, "audit-profile.jsonl")
	if err != nil {
		return nil, err
	}
	defer stop()
	t := b.res.tables[0]
	if _, err := b.wrk(ctx, t, pathAllowed, b.o.warmup); err != nil {
		return nil, err
	}
	data := filepath.Join(b.dir, "perf.data")
	// perf samples the middle of the wrk run: not its start, not its end.
	span := max(b.o.duration-2*time.Second, time.Second)
	perfDone := make(chan error, 1)
	go func() {
		select {
		case <-time.After(time.Second):
		case <-ctx.Done():
			perfDone <- ctx.Err()
			return
		}
		out, err := exec.CommandContext(ctx, perf, "record", "-e", "cpu-clock", "-F", strconv.Itoa(perfHz), "-g", "-p", strconv.Itoa(mg.Pid()),
			"-o", data, "--", "sleep", strconv.Itoa(int(span/time.Second))).CombinedOutput()
		if err != nil {
			err = fmt.Errorf("perf record: %w: %s", err, out)
		}
		perfDone <- err
	}()
	w, err := b.wrk(ctx, t, pathAllowed, b.o.duration)
	if perr := <-perfDone; err == nil {
		err = perr
	}
	if err != nil {
		return nil, err
	}
	report := func(children string) ([]byte, error) {
		return exec.CommandContext(ctx, perf, "report", "-i", data, "--stdio", children, "--sort", "sym", "-g", "none", "--percent-limit", "0").Output()
	}
	selfOut, err := report("--no-children")
	if err != nil {
		return nil, fmt.Errorf("perf report: %w", err)
	}
	childOut, err := report("--children")
	if err != nil {
		return nil, fmt.Errorf("perf report: %w", err)
	}
	return analyseProfile(selfOut, childOut, w.RPS())
}

func analyseProfile(selfOut, childOut []byte, rps float64) (*profileResult, error) {
	self, children := parsePerf(selfOut, false), parsePerf(childOut, true)
	res := &profileResult{samples: perfSamples(selfOut), rps: rps, groups: groupSelf(self)}
	var missing []string
	for _, st := range stages {
		var share float64
		found := false
		for _, sym := range st.symbols {
			i := slices.IndexFunc(children, func(l perfLine) bool { return l.name == sym })
			if i < 0 {
				continue
			}
			found = true
			if st.sum {
				share += children[i].pct
			} else {
				share = max(share, children[i].pct)
			}
		}
		if !found {
			missing = append(missing, fmt.Sprintf("%q (%s)", st.label, strings.Join(st.symbols, ", ")))
		}
		res.stages = append(res.stages, perfLine{name: st.label + " (`" + strings.Join(st.symbols, "`, `") + "`)", pct: share})
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("no perf samples for the stages %s: renamed? fix the stage list in profile.go", strings.Join(missing, "; "))
	}
	res.self, res.children = top(self, 15), top(children, 25)
	return res, nil
}

// parsePerf reads `perf report --stdio --sort sym -g none` lines:
// "  12.34%  [.] symbol" or, with --children, "  40.00%  1.00%  [k] symbol".
// The first percentage is the one wanted in both.
func parsePerf(out []byte, children bool) []perfLine {
	var lines []perfLine
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 3 || !strings.HasSuffix(f[0], "%") {
			continue
		}
		pct, err := strconv.ParseFloat(strings.TrimSuffix(f[0], "%"), 64)
		if rest := f[1:]; err == nil {
			if children && strings.HasSuffix(rest[0], "%") {
				rest = rest[1:]
			}
			if len(rest) >= 2 {
				lines = append(lines, perfLine{name: strings.Join(rest[1:], " "), kernel: rest[0] == "[k]", pct: pct})
			}
		}
	}
	return lines
}

// perfSamples is the sample count from "# Event count (approx.):", which,
// unlike "# Samples: 7K", does not round: cpu-clock counts ns.
func perfSamples(out []byte) int {
	for _, l := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(l, "# Event count (approx.): "); ok {
			n, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return int(n/1e9*perfHz + 0.5)
		}
	}
	return 0
}

func top(lines []perfLine, n int) []perfLine {
	lines = slices.Clone(lines)
	slices.SortStableFunc(lines, func(a, b perfLine) int { return -cmpPct(a, b) })
	return lines[:min(n, len(lines))]
}

func cmpPct(a, b perfLine) int {
	if a.pct != b.pct {
		if a.pct < b.pct {
			return -1
		}
		return 1
	}
	return strings.Compare(b.name, a.name)
}

// perfGroups say where code lives by its symbol's prefix, first match wins.
var perfGroups = []struct{ group, prefixes string }{
	{"metaguard's own code", "metaguard.dev/"},
	{"net/http (server, reverse proxy, transport)", "net/http bufio. net/textproto. net/url. mime."},
	{"net, internal/poll, syscall wrappers", "net. internal/poll. syscall. internal/runtime/syscall"},
	{"audit log encoding (log/slog, encoding/json, strconv)", "log/slog. encoding/json. strconv."},
	{"metrics (prometheus client)", "github.com/prometheus/"},
	{"context, sync, time, maps, strings", "context. sync. time. internal/sync. strings. internal/runtime/maps. indexbytebody memeqbody cmpbody"},
	{"Go runtime (scheduler, GC, allocation)", "runtime. internal/runtime/ gcWriteBarrier aeshashbody"},
}

// groupSelf sums self time by where the code lives, so that the reader
// sees kernel against runtime against HTTP against metaguard's own.
func groupSelf(self []perfLine) []perfLine {
	sums := map[string]float64{}
	for _, l := range self {
		g := "other"
		if l.kernel {
			g = "kernel (syscalls, TCP/IP, netfilter, scheduler)"
		}
		for _, pg := range perfGroups {
			if !l.kernel && g == "other" && slices.ContainsFunc(strings.Fields(pg.prefixes), func(p string) bool { return strings.HasPrefix(l.name, p) }) {
				g = pg.group
			}
		}
		sums[g] += l.pct
	}
	var out []perfLine
	for name, pct := range sums {
		out = append(out, perfLine{name: name, pct: pct})
	}
	return top(out, len(out))
}
