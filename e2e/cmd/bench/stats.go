package main

import (
	"math"
	"slices"
)

// median of the values; NaN for none. Three rounds give the middle one,
// which one noisy round on a shared machine cannot move.
func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// rowStats are a row's medians over its rounds.
type rowStats struct {
	rps, p50, p99, p999 float64 // latencies in µs
	cpuPer10k, sysShare float64 // CPU seconds of the proxy per 10,000 requests; the kernel's part of them
	rssMiB, peakMiB     float64
	unexpected          int64
	rounds              int
}

func statsOf(r *rowResult) rowStats {
	if r == nil || len(r.samples) == 0 {
		return rowStats{rps: math.NaN(), p50: math.NaN(), p99: math.NaN(), p999: math.NaN(), cpuPer10k: math.NaN(), sysShare: math.NaN(), rssMiB: math.NaN(), peakMiB: math.NaN()}
	}
	var rps, p50, p99, p999, cpu, sys, rss []float64
	st := rowStats{rounds: len(r.samples)}
	for _, s := range r.samples {
		rps = append(rps, s.wrk.RPS())
		p50 = append(p50, s.wrk.P50)
		p99 = append(p99, s.wrk.P99)
		p999 = append(p999, s.wrk.P999)
		if s.wrk.Requests > 0 {
			cpu = append(cpu, s.cpu.total/float64(s.wrk.Requests)*10000)
		}
		if s.cpu.total > 0 {
			sys = append(sys, s.cpu.sys/s.cpu.total)
		}
		rss = append(rss, float64(s.mem.rssKiB)/1024)
		st.peakMiB = max(st.peakMiB, float64(s.mem.hwmKiB)/1024)
		st.unexpected += s.unexpected
	}
	st.rps, st.p50, st.p99, st.p999 = median(rps), median(p50), median(p99), median(p999)
	st.cpuPer10k, st.sysShare, st.rssMiB = median(cpu), median(sys), median(rss)
	return st
}
