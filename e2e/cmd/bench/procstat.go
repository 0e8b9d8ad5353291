package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat. It
// is 100 on every Linux architecture Go supports; reading sysconf would
// need cgo.
const clockTicks = 100

// procStat is what /proc/PID/stat says about one process.
type procStat struct {
	ppid      int
	cpuTicks  int64 // utime + stime, all threads
	sysTicks  int64 // stime: in the kernel on the process's behalf
	startTick int64 // since boot
}

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	// The command name is in parentheses and may hold spaces; the fields
	// after the last ')' are fixed.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state): field n is f[n-3].
	if len(f) < 20 {
		return procStat{}, fmt.Errorf("short /proc/%d/stat", pid)
	}
	num := func(n int) int64 { v, _ := strconv.ParseInt(f[n-3], 10, 64); return v }
	return procStat{ppid: int(num(4)), cpuTicks: num(14) + num(15), sysTicks: num(15), startTick: num(22)}, nil
}

// cpuTime is CPU time used so far, in seconds: in all and in the kernel.
type cpuTime struct{ total, sys float64 }

func (c cpuTime) sub(d cpuTime) cpuTime { return cpuTime{c.total - d.total, c.sys - d.sys} }

// cpuSeconds is the CPU time the processes have used so far.
func cpuSeconds(pids []int) (cpuTime, error) {
	var ticks, sys int64
	for _, pid := range pids {
		st, err := readStat(pid)
		if err != nil {
			return cpuTime{}, fmt.Errorf("reading CPU time of %d: %w", pid, err)
		}
		ticks += st.cpuTicks
		sys += st.sysTicks
	}
	return cpuTime{float64(ticks) / clockTicks, float64(sys) / clockTicks}, nil
}

// memory is resident memory in KiB: now (VmRSS) and the peak (VmHWM),
// summed over the processes.
type memory struct{ rssKiB, hwmKiB int64 }

func readMemory(pids []int) (memory, error) {
	var m memory
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			return m, fmt.Errorf("reading memory of %d: %w", pid, err)
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			k, v, ok := strings.Cut(sc.Text(), ":")
			if !ok {
				continue
			}
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			switch k {
			case "VmRSS":
				m.rssKiB += n
			case "VmHWM":
				m.hwmKiB += n
			}
		}
	}
	return m, nil
}

// withChildren is pid and its direct children (nginx's workers).
func withChildren(pid int) []int {
	pids := []int{pid}
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, d := range dirs {
		child, err := strconv.Atoi(filepath.Base(d))
		if err != nil || child == pid {
			continue
		}
		if st, err := readStat(child); err == nil && st.ppid == pid {
			pids = append(pids, child)
		}
	}
	return pids
}

// processAge is how long ago the process started, from its start tick and
// the system uptime: both count from boot at 10 ms resolution, so no wall
// clock (btime has 1 s resolution) enters.
func processAge(pid int) (float64, error) {
	st, err := readStat(pid)
	if err != nil {
		return 0, err
	}
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return 0, err
	}
	up, err := strconv.ParseFloat(strings.Fields(string(b))[0], 64)
	if err != nil {
		return 0, fmt.Errorf("parsing /proc/uptime: %w", err)
	}
	return up - float64(st.startTick)/clockTicks, nil
}

// loadAverage is the first three fields of /proc/loadavg.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}
