package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"metaguard.dev/metaguard/e2e/sandbox"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat: 100
// on every Linux architecture Go supports (sysconf would need cgo).
const clockTicks = 100

// usage is what the proxy's processes have used so far: CPU in all and in
// the kernel, and the time their threads sat runnable on a CPU's run queue
// while other processes ran (schedstat), the wait a busy node adds.
// slices counts the times a thread was put on a CPU: each wake-up of a
// sleeping thread is one.
type usage struct {
	cpu, sys, runWait time.Duration
	slices            int64
}

func (u usage) sub(v usage) usage {
	return usage{u.cpu - v.cpu, u.sys - v.sys, u.runWait - v.runWait, u.slices - v.slices}
}

// readUsage sums usage over the processes and all their threads.
func readUsage(pids []int) (usage, error) {
	var u usage
	for _, pid := range pids {
		f, err := statFields(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return u, err
		}
		utime, _ := strconv.ParseInt(f[14-3], 10, 64)
		stime, _ := strconv.ParseInt(f[15-3], 10, 64)
		u.cpu += time.Duration(utime+stime) * time.Second / clockTicks
		u.sys += time.Duration(stime) * time.Second / clockTicks
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
		for _, t := range tasks {
			// "run time, run-queue wait, timeslices", in ns.
			b, err := os.ReadFile(t)
			if f := strings.Fields(string(b)); err == nil && len(f) == 3 {
				ns, _ := strconv.ParseInt(f[1], 10, 64)
				n, _ := strconv.ParseInt(f[2], 10, 64)
				u.runWait, u.slices = u.runWait+time.Duration(ns), u.slices+n
			}
		}
	}
	return u, nil
}

// statFields are the fields of /proc/PID/stat after the command name (which
// is in parentheses and may hold spaces): field n is at index n-3.
func statFields(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	i := bytes.LastIndexByte(b, ')')
	if f := strings.Fields(string(b[i+1:])); i >= 0 && len(f) >= 20 {
		return f, nil
	}
	return nil, fmt.Errorf("malformed %s", path)
}

// memory is resident memory in KiB: now (VmRSS) and the peak (VmHWM),
// summed over the processes.
type memory struct{ rssKiB, hwmKiB int64 }

func readMemory(pids []int) (memory, error) {
	var m memory
	for _, pid := range pids {
		pm, err := sandbox.ReadMemory(pid)
		if err != nil {
			return m, err
		}
		m.rssKiB += pm.RSS >> 10
		m.hwmKiB += pm.Peak >> 10
	}
	return m, nil
}

// withChildren is pid and its direct children (nginx's workers).
func withChildren(pid int) []int {
	pids := []int{pid}
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range stats {
		f, err := statFields(p)
		if child, _ := strconv.Atoi(filepath.Base(filepath.Dir(p))); err == nil && f[4-3] == strconv.Itoa(pid) {
			pids = append(pids, child)
		}
	}
	return pids
}

// loadAverage is the first three fields of /proc/loadavg.
func loadAverage() string {
	b, _ := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "unknown"
}
