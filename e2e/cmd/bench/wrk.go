package main

import (
	"bufio"
	"bytes"
	"cmp"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// quantiles is how finely a wrk run's latency distribution is kept: enough
// to merge the runs of several pods into one distribution whose p99.9 is
// exact to a hundredth of a percent.
const quantiles = 10000

// wrkScript makes wrk print its totals and its latency quantiles as two
// machine-readable lines. Only a done() hook: wrk stays on its fast path,
// with no Lua per request.
const wrkScript = `done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH requests=%d duration_us=%d socket_errors=%d status=%d\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status))
  local q = {}
  for i = 1, 10000 do q[i] = latency:percentile(i / 100) end
  io.write("QUANTILES " .. table.concat(q, " ") .. "\n")
end
`

// wrkResult is one wrk run, or several merged. Latencies are in µs.
type wrkResult struct {
	Requests   int64
	Duration   time.Duration
	SockErrors int64 // connect, read, write and timeout errors
	Non2xx     int64 // responses outside 2xx and 3xx
	q          []float64
}

// RPS is requests per second over the run.
func (r wrkResult) RPS() float64 {
	if r.Duration <= 0 {
		return 0
	}
	return float64(r.Requests) / r.Duration.Seconds()
}

// Pct is the latency at percentile p (0 < p <= 100).
func (r wrkResult) Pct(p float64) float64 {
	if len(r.q) == 0 {
		return math.NaN()
	}
	i := min(max(int(math.Ceil(p/100*float64(len(r.q))))-1, 0), len(r.q)-1)
	return r.q[i]
}

// wrkArgs is the command line of one run.
func wrkArgs(conns int, d time.Duration, script, url string, keepAlive bool) []string {
	args := []string{"wrk", "-t1", "-c" + strconv.Itoa(conns), "-d" + strconv.Itoa(int(d.Round(time.Second)/time.Second)) + "s", "--timeout", "5s", "-s", script}
	if !keepAlive {
		// wrk reconnects when the response closes the connection: one TCP
		// connection (and one DNAT) per request.
		args = append(args, "-H", "Connection: close")
	}
	return append(args, url)
}

// parseWrk reads the lines wrkScript prints.
func parseWrk(out []byte) (wrkResult, error) {
	var r wrkResult
	seen := false
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 5 && f[0] == "BENCH":
			var us int64
			if _, err := fmt.Sscanf(strings.Join(f[1:], " "), "requests=%d duration_us=%d socket_errors=%d status=%d", &r.Requests, &us, &r.SockErrors, &r.Non2xx); err != nil {
				return r, fmt.Errorf("wrk summary %q: %w", sc.Text(), err)
			}
			r.Duration, seen = time.Duration(us)*time.Microsecond, true
		case len(f) == quantiles+1 && f[0] == "QUANTILES":
			for _, v := range f[1:] {
				x, err := strconv.ParseFloat(v, 64)
				if err != nil {
					return r, fmt.Errorf("wrk quantile %q: %w", v, err)
				}
				r.q = append(r.q, x)
			}
		}
	}
	if !seen || len(r.q) != quantiles {
		return r, fmt.Errorf("no BENCH and QUANTILES lines in wrk output:\n%.2000s", out)
	}
	return r, nil
}

// mergeWrk joins runs that ran at the same time: their requests add up, and
// the latency distribution is that of all their requests together, each
// run's quantiles weighing its share of the requests.
func mergeWrk(runs []wrkResult) wrkResult {
	if len(runs) == 1 {
		return runs[0]
	}
	type point struct{ v, w float64 }
	var m wrkResult
	var pts []point
	for _, r := range runs {
		m.Requests += r.Requests
		m.Duration = max(m.Duration, r.Duration)
		m.SockErrors += r.SockErrors
		m.Non2xx += r.Non2xx
		for _, v := range r.q {
			pts = append(pts, point{v, float64(r.Requests) / float64(len(r.q))})
		}
	}
	slices.SortFunc(pts, func(a, b point) int { return cmp.Compare(a.v, b.v) })
	var cum float64
	j := 0
	for i := 1; i <= quantiles; i++ {
		want := float64(i) / quantiles * float64(m.Requests)
		for j < len(pts)-1 && cum+pts[j].w < want-1e-9 {
			cum += pts[j].w
			j++
		}
		m.q = append(m.q, pts[j].v)
	}
	return m
}
