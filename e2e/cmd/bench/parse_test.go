package main

import (
	"math"
	"strings"
	"testing"
	"time"
)

func TestParseWrk(t *testing.T) {
	for _, tc := range []struct {
		name    string
		out     string
		want    wrkResult
		wantErr bool
	}{
		{
			name: "the summary line is read among wrk's own output",
			out: "Running 8s test @ http://169.254.169.249/latest/meta-data/instance-id\n  2 threads and 16 connections\n" +
				"BENCH requests=80000 duration_us=8000000 bytes=1000 connect=0 read=1 write=0 status=3 timeout=2 p50=210 p90=400 p99=900 p999=2100 max=9000\n",
			want: wrkResult{Requests: 80000, Duration: 8 * time.Second, Bytes: 1000, SockErrors: 3, Non2xx: 3, P50: 210, P90: 400, P99: 900, P999: 2100, Max: 9000},
		},
		{name: "output without the summary is an error", out: "Running 8s test\n", wantErr: true},
		{name: "a summary missing a field is an error", out: "BENCH requests=1 duration_us=1\n", wantErr: true},
		{name: "a field that is not a number is an error", out: "BENCH requests=x\n", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseWrk([]byte(tc.out))
			if (err != nil) != tc.wantErr {
				t.Fatalf("error %v, want error %v", err, tc.wantErr)
			}
			if !tc.wantErr && got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
	if rps := (wrkResult{Requests: 80000, Duration: 8 * time.Second}).RPS(); rps != 10000 {
		t.Errorf("RPS %v, want 10000", rps)
	}
}

func TestWrkArgs(t *testing.T) {
	t.Run("keep-alive runs send no Connection header", func(t *testing.T) {
		got := strings.Join(wrkArgs(2, 16, 8*time.Second, "/s.lua", "http://x/", true), " ")
		if got != "wrk -t2 -c16 -d8s --timeout 5s -s /s.lua http://x/" {
			t.Errorf("got %q", got)
		}
	})
	t.Run("new-connection runs ask the server to close", func(t *testing.T) {
		got := strings.Join(wrkArgs(2, 16, 8*time.Second, "/s.lua", "http://x/", false), " ")
		if !strings.Contains(got, "-H Connection: close http://x/") {
			t.Errorf("got %q", got)
		}
	})
}

func TestParseGoBench(t *testing.T) {
	out := `goos: linux
pkg: metaguard.dev/metaguard/proxy/policy
cpu: AMD EPYC
BenchmarkDecide/rules=100/_latest_meta-data_placement_region-2   	 2000000	       512.5 ns/op	       0 B/op	       0 allocs/op
PASS
ok  	metaguard.dev/metaguard/proxy/policy	3.1s
pkg: metaguard.dev/metaguard/identity/podindex
BenchmarkLookupHit-2   	50000000	        21.30 ns/op	       0 B/op	       0 allocs/op
BenchmarkNoMem-2   	50000000	        9.1 ns/op
ok  	metaguard.dev/metaguard/identity/podindex	2.0s
PASS
ok  	metaguard.dev/metaguard/proxy	0.5s
?   	metaguard.dev/metaguard/e2e/other	[no test files]
`
	got, without := parseGoBench([]byte(out))
	want := []goBench{
		{pkg: "metaguard.dev/metaguard/proxy/policy", name: "BenchmarkDecide/rules=100/_latest_meta-data_placement_region", nsPerOp: 512.5},
		{pkg: "metaguard.dev/metaguard/identity/podindex", name: "BenchmarkLookupHit", nsPerOp: 21.3},
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
	if strings.Join(without, " ") != "metaguard.dev/metaguard/proxy metaguard.dev/metaguard/e2e/other" {
		t.Errorf("packages without benchmarks: %q", without)
	}
}

func TestParseSS(t *testing.T) {
	out := `ESTAB 0 0 127.0.0.1:41000 127.0.0.1:6443 users:(("kube-apiserver",pid=10,fd=3))
	 cubic wscale:7,7 bytes_sent:10 bytes_received:999999
ESTAB 0 0 127.0.0.1:41002 127.0.0.1:6443 users:(("metaguard",pid=1234,fd=7))
	 cubic wscale:7,7 rto:201 bytes_sent:100 bytes_acked:101 bytes_received:5000 segs_out:10
ESTAB 0 0 127.0.0.1:41004 127.0.0.1:6443 users:(("metaguard",pid=12345,fd=9))
	 cubic bytes_received:77
ESTAB 0 0 127.0.0.1:41006 127.0.0.1:6443 users:(("metaguard",pid=1234,fd=8))
	 cubic bytes_received:250
`
	t.Run("only the process's own connections count, all of them", func(t *testing.T) {
		n, err := parseSS([]byte(out), 1234)
		if err != nil || n != 5250 {
			t.Errorf("got %d, %v; want 5250", n, err)
		}
	})
	t.Run("a process without connections is an error, not zero bytes", func(t *testing.T) {
		if _, err := parseSS([]byte(out), 99); err == nil {
			t.Error("no error")
		}
	})
}

func TestParsePerf(t *testing.T) {
	self := `# Samples: 7K of event 'cpu-clock'
# Event count (approx.): 7007007000
#
# Overhead  Symbol
# ........  ......
#
    29.20%  [k] pvm_irq_enable
     3.90%  [.] internal/runtime/syscall/linux.Syscall6
     1.00%  [.] metaguard.dev/metaguard/proxy.Canonicalize
     0.50%  [.] net/http.(*conn).serve
`
	children := `    45.60%     0.50%  [.] net/http.(*conn).serve
    43.70%     0.00%  [k] entry_SYSCALL_64_after_hwframe
    22.10%     0.10%  [.] metaguard.dev/metaguard/proxy.(*Server).ServeHTTP
     2.00%     0.10%  [.] metaguard.dev/metaguard/proxy.(*Server).ServeHTTP.func1
`
	t.Run("self lines keep kernel marks and names with spaces and stars", func(t *testing.T) {
		got := parsePerf([]byte(self), false)
		if len(got) != 4 || !got[0].kernel || got[0].pct != 29.2 || got[3].name != "net/http.(*conn).serve" || got[3].kernel {
			t.Errorf("got %+v", got)
		}
	})
	t.Run("the sample count comes from the event count at 999 Hz", func(t *testing.T) {
		if n := perfSamples([]byte(self)); n != 7000 {
			t.Errorf("got %d", n)
		}
	})
	t.Run("children lines read the inclusive share", func(t *testing.T) {
		got := parsePerf([]byte(children), true)
		if len(got) != 4 || got[0].pct != 45.6 || got[1].name != "entry_SYSCALL_64_after_hwframe" {
			t.Errorf("got %+v", got)
		}
	})
	t.Run("a stage is its outermost symbol", func(t *testing.T) {
		stages := keyStages(parsePerf([]byte(children), true))
		for _, s := range stages {
			if strings.Contains(s.name, "(*Server).ServeHTTP") && s.pct != 22.1 {
				t.Errorf("%s: %v, want 22.1", s.name, s.pct)
			}
		}
	})
	t.Run("a transport's goroutines add up, as they do not nest", func(t *testing.T) {
		loops := "    12.70%  0.10%  [.] net/http.(*persistConn).readLoop\n    13.70%  0.10%  [.] net/http.(*persistConn).writeLoop\n"
		for _, s := range keyStages(parsePerf([]byte(loops), true)) {
			if strings.Contains(s.name, "own goroutines") && math.Abs(s.pct-26.4) > 1e-9 {
				t.Errorf("%s: %v, want 26.4", s.name, s.pct)
			}
		}
	})
	t.Run("self time groups by where the code lives", func(t *testing.T) {
		g := groupSelf(parsePerf([]byte(self), false))
		if g[0].name != "kernel (syscalls, TCP/IP, netfilter, scheduler)" || g[0].pct != 29.2 {
			t.Errorf("got %+v", g)
		}
	})
}

func TestSyncTime(t *testing.T) {
	logs := `{"time":"2026-01-01T00:00:00.100Z","level":"INFO","msg":"metaguard starting"}
not json
{"time":"2026-01-01T00:00:00.640Z","level":"INFO","msg":"pod index synced","pods":250}
`
	if got := syncTime([]byte(logs)); got != 540*time.Millisecond {
		t.Errorf("got %v, want 540ms", got)
	}
	if got := syncTime([]byte(`{"msg":"metaguard starting","time":"2026-01-01T00:00:00Z"}`)); got != 0 {
		t.Errorf("without a synced line: %v, want 0", got)
	}
}

func TestMedian(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{
		{[]float64{3, 1, 2}, 2},
		{[]float64{10, 1000, 20}, 20},
		{[]float64{1, 2, 3, 4}, 2.5},
	} {
		if got := median(tc.in); got != tc.want {
			t.Errorf("median(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
	if !math.IsNaN(median(nil)) {
		t.Error("median of nothing is not NaN")
	}
}
