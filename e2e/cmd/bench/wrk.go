package main

import (
	"bufio"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// wrkScript makes wrk print its totals and percentiles (p99.9 included,
// which --latency does not print) as one machine-readable line. Only a
// done() hook: wrk stays on its fast path, with no Lua per request.
const wrkScript = `done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH requests=%d duration_us=%d bytes=%d connect=%d read=%d write=%d status=%d timeout=%d p50=%d p90=%d p99=%d p999=%d max=%d\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9), latency.max))
end
`

// wrkResult is one wrk run. Latencies are in microseconds.
type wrkResult struct {
	Requests   int64
	Duration   time.Duration
	Bytes      int64
	SockErrors int64 // connect, read, write and timeout errors
	Non2xx     int64 // responses outside 2xx and 3xx
	P50, P90   float64
	P99, P999  float64
	Max        float64
}

// RPS is requests per second over the run.
func (r wrkResult) RPS() float64 {
	if r.Duration <= 0 {
		return 0
	}
	return float64(r.Requests) / r.Duration.Seconds()
}

// wrkArgs is the command line of one run.
func wrkArgs(threads, conns int, d time.Duration, script, url string, keepAlive bool) []string {
	args := []string{"wrk",
		"-t" + strconv.Itoa(threads),
		"-c" + strconv.Itoa(conns),
		"-d" + strconv.Itoa(int(d.Round(time.Second)/time.Second)) + "s",
		"--timeout", "5s",
		"-s", script,
	}
	if !keepAlive {
		// wrk reconnects when the response closes the connection: one TCP
		// connection (and one DNAT) per request.
		args = append(args, "-H", "Connection: close")
	}
	return append(args, url)
}

// parseWrk reads the BENCH line wrkScript prints.
func parseWrk(out []byte) (wrkResult, error) {
	var r wrkResult
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "BENCH ") {
			continue
		}
		kv := map[string]int64{}
		for _, f := range strings.Fields(strings.TrimPrefix(line, "BENCH ")) {
			k, v, ok := strings.Cut(f, "=")
			if !ok {
				return r, fmt.Errorf("wrk summary field %q", f)
			}
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return r, fmt.Errorf("wrk summary field %q: %w", f, err)
			}
			kv[k] = n
		}
		for _, k := range []string{"requests", "duration_us", "bytes", "connect", "read", "write", "status", "timeout", "p50", "p90", "p99", "p999", "max"} {
			if _, ok := kv[k]; !ok {
				return r, fmt.Errorf("wrk summary lacks %s: %q", k, line)
			}
		}
		r = wrkResult{
			Requests:   kv["requests"],
			Duration:   time.Duration(kv["duration_us"]) * time.Microsecond,
			Bytes:      kv["bytes"],
			SockErrors: kv["connect"] + kv["read"] + kv["write"] + kv["timeout"],
			Non2xx:     kv["status"],
			P50:        float64(kv["p50"]),
			P90:        float64(kv["p90"]),
			P99:        float64(kv["p99"]),
			P999:       float64(kv["p999"]),
			Max:        float64(kv["max"]),
		}
		return r, nil
	}
	return r, fmt.Errorf("no BENCH line in wrk output:\n%s", out)
}
