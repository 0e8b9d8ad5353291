package main

import (
	"bytes"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"runtime/trace"
	"strconv"
	"strings"
	"testing"
	"time"
)

// wrkOutput is what wrkScript prints for a run whose every request took
// latency µs.
func wrkOutput(requests int, latency float64) string {
	q := strings.TrimSpace(strings.Repeat(strconv.FormatFloat(latency, 'f', -1, 64)+" ", quantiles))
	return fmt.Sprintf("Running 6s test @ http://x/\n  1 threads and 4 connections\nBENCH requests=%d duration_us=6000000 socket_errors=1 status=2\nQUANTILES %s\n", requests, q)
}

func TestParseWrk(t *testing.T) {
	t.Run("the summary and quantiles are read among wrk's own output", func(t *testing.T) {
		r, err := parseWrk([]byte(wrkOutput(60000, 250)))
		if err != nil {
			t.Fatal(err)
		}
		if r.Requests != 60000 || r.Duration != 6*time.Second || r.SockErrors != 1 || r.Non2xx != 2 || r.RPS() != 10000 || r.Pct(99) != 250 {
			t.Errorf("got %+v, p99 %v", r, r.Pct(99))
		}
	})
	for name, out := range map[string]string{
		"output without the summary is an error":      "Running 8s test\n",
		"a summary without quantiles is an error":     "BENCH requests=1 duration_us=1 socket_errors=0 status=0\n",
		"a field that is not a number is an error":    "BENCH requests=x duration_us=1 socket_errors=0 status=0\n",
		"too few quantiles are an error, not a guess": "BENCH requests=1 duration_us=1 socket_errors=0 status=0\nQUANTILES 1 2 3\n",
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := parseWrk([]byte(out)); err == nil {
				t.Error("no error")
			}
		})
	}
}

func TestMergeWrk(t *testing.T) {
	a, _ := parseWrk([]byte(wrkOutput(3000, 100)))
	b, _ := parseWrk([]byte(wrkOutput(1000, 1000)))
	m := mergeWrk([]wrkResult{a, b})
	t.Run("requests add up over runs that ran at once", func(t *testing.T) {
		if m.Requests != 4000 || m.RPS() != 4000.0/6 || m.SockErrors != 2 || m.Non2xx != 4 {
			t.Errorf("got %+v", m)
		}
	})
	t.Run("each run's latencies weigh its share of the requests", func(t *testing.T) {
		for p, want := range map[float64]float64{50: 100, 75: 100, 75.01: 1000, 99: 1000, 99.9: 1000} {
			if got := m.Pct(p); got != want {
				t.Errorf("p%v = %v, want %v", p, got, want)
			}
		}
	})
}

func TestWrkArgs(t *testing.T) {
	if got := strings.Join(wrkArgs(4, 6*time.Second, "/s.lua", "http://x/", true), " "); got != "wrk -t1 -c4 -d6s --timeout 5s -s /s.lua http://x/" {
		t.Errorf("keep-alive: %q", got)
	}
	if got := strings.Join(wrkArgs(4, 6*time.Second, "/s.lua", "http://x/", false), " "); !strings.Contains(got, "-H Connection: close http://x/") {
		t.Errorf("a new connection per request: %q", got)
	}
}

func TestParseGoBench(t *testing.T) {
	out := "pkg: metaguard.dev/metaguard/proxy/policy\nBenchmarkDecide/rules=100/_a-2   \t 2000000\t  512.5 ns/op\t  0 B/op\t  0 allocs/op\nPASS\n" +
		"pkg: metaguard.dev/metaguard/identity/podindex\nBenchmarkLookupHit-2 \t50000000\t 21.30 ns/op\t 8 B/op\t 1 allocs/op\nBenchmarkNoMem-2 \t5\t 9.1 ns/op\n"
	got := parseGoBench([]byte(out))
	want := []goBench{
		{pkg: "metaguard.dev/metaguard/proxy/policy", name: "BenchmarkDecide/rules=100/_a", nsPerOp: 512.5},
		{pkg: "metaguard.dev/metaguard/identity/podindex", name: "BenchmarkLookupHit", nsPerOp: 21.3, bytesPerOp: 8, allocsPerOp: 1},
		{pkg: "metaguard.dev/metaguard/identity/podindex", name: "BenchmarkNoMem", nsPerOp: 9.1},
	}
	if len(got) != len(want) {
		t.Fatalf("got %+v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("benchmark %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
}

const perfSelf = `# Samples: 7K of event 'cpu-clock'
# Event count (approx.): 1400280056
#
    29.20%  [k] pvm_irq_enable
     3.90%  [.] internal/runtime/syscall/linux.Syscall6
     1.00%  [.] metaguard.dev/metaguard/proxy.Canonicalize
     0.50%  [.] net/http.(*conn).serve
`

// perfChildren has a sample for every stage's symbol but the decision's.
func perfChildren() string {
	var b strings.Builder
	for i, st := range stages {
		if st.label != "decision" {
			fmt.Fprintf(&b, "    %d.00%%     0.10%%  [.] %s\n", 40-i, st.symbols[0])
		}
	}
	return b.String()
}

func TestProfile(t *testing.T) {
	t.Run("self lines keep kernel marks and names with stars", func(t *testing.T) {
		got := parsePerf([]byte(perfSelf), false)
		if len(got) != 4 || !got[0].kernel || got[0].pct != 29.2 || got[3].name != "net/http.(*conn).serve" || got[3].kernel {
			t.Errorf("got %+v", got)
		}
		if n := perfSamples([]byte(perfSelf)); n != 7000 {
			t.Errorf("samples: %d", n)
		}
	})
	t.Run("a stage without samples fails the profile", func(t *testing.T) {
		_, err := analyseProfile([]byte(perfSelf), []byte(perfChildren()), 1)
		if err == nil || !strings.Contains(err.Error(), "policy.(*Policy).decide") {
			t.Errorf("got %v, want an error naming the decision's symbol", err)
		}
	})
	t.Run("with every stage sampled, stages are their outermost symbol and goroutines add up", func(t *testing.T) {
		children := perfChildren() + "    1.00%  0.10%  [.] metaguard.dev/metaguard/proxy/policy.(*Policy).decide\n" +
			"    12.70%  0.10%  [.] net/http.(*persistConn).writeLoop\n"
		p, err := analyseProfile([]byte(perfSelf), []byte(children), 1)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range p.stages {
			if strings.HasPrefix(s.name, "the Transport's own") && math.Abs(s.pct-(36+12.7)) > 1e-9 {
				t.Errorf("%s: %v, want readLoop's 36 and writeLoop's 12.7", s.name, s.pct)
			}
		}
		if p.groups[0].name != "kernel (syscalls, TCP/IP, netfilter, scheduler)" || p.groups[0].pct != 29.2 {
			t.Errorf("groups: %+v", p.groups)
		}
	})
}

// TestAnalyseTraceCutsRequests traces a real net/http server answering one
// keep-alive client, so a Go release that changes how a connection's
// goroutine waits breaks this test rather than the report.
func TestAnalyseTraceCutsRequests(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	defer srv.Close()
	var buf bytes.Buffer
	if err := trace.Start(&buf); err != nil {
		t.Skipf("tracing: %v", err)
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	for range 300 {
		resp, err := client.Get(srv.URL)
		if err != nil {
			trace.Stop()
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	trace.Stop()
	res, err := analyseTrace(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if res.requests < 250 || res.requests > 300 {
		t.Errorf("%d requests cut from 300 sent", res.requests)
	}
	if res.p50 <= 0 || res.p99 < res.p50 || res.all[catRunning] <= 0 {
		t.Errorf("quantiles or the running time are off: %+v", res)
	}
}

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{{[]float64{3, 1, 2}, 2}, {[]float64{10, 1000, 20}, 20}, {[]float64{1, 2, 3, 4}, 2.5}} {
		if got := median(tc.in); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
	if !math.IsNaN(median(nil)) {
		t.Error("median of nothing is not NaN")
	}
}
