package sandbox

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Memory is a process's resident memory as the kernel reports it in
// /proc/<pid>/status, in bytes. Peak is VmHWM: the most the process was
// ever resident with since it started or since ResetPeak, which is what a
// container's memory limit is up against (file-backed pages of the binary
// included; Anon is the part only the process can give back).
type Memory struct {
	RSS, Peak, Anon, File int64
}

func (m Memory) String() string {
	return fmt.Sprintf("RSS %s (anon %s, file %s), peak %s", MiB(m.RSS), MiB(m.Anon), MiB(m.File), MiB(m.Peak))
}

// MiB formats a byte count as mebibytes with one decimal.
func MiB(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// ProgramPid is the pid of the program the process runs: the process
// itself, since `ip netns exec` execs the program in place. It is checked
// rather than assumed, because a wrapper that forked would make every
// reading the wrapper's.
func (p *Process) ProgramPid() (int, error) {
	pid := p.Pid()
	want := filepath.Base(p.program())
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return 0, fmt.Errorf("reading the executable of %s (pid %d): %w", p.Name, pid, err)
	}
	if filepath.Base(exe) != want {
		return 0, fmt.Errorf("pid %d of %s runs %s, not %s", pid, p.Name, exe, want)
	}
	return pid, nil
}

// program is the path of the program the process was started to run.
func (p *Process) program() string {
	a := p.cmd.Args
	if len(a) >= 5 && filepath.Base(a[0]) == "ip" && a[1] == "netns" && a[2] == "exec" {
		return a[4]
	}
	return a[0]
}

// ResetPeak makes the program's peak (VmHWM) its current RSS, so that the
// next reading of Peak covers only what happened since (clear_refs 5,
// Linux 4.0 and later).
func (p *Process) ResetPeak() error {
	pid, err := p.ProgramPid()
	if err != nil {
		return err
	}
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		return fmt.Errorf("resetting the peak RSS of %s: %w", p.Name, err)
	}
	return nil
}

// ReadMemory reads a process's resident memory from /proc/PID/status.
func ReadMemory(pid int) (Memory, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return Memory{}, err
	}
	var m Memory
	fields := map[string]*int64{"VmRSS": &m.RSS, "VmHWM": &m.Peak, "RssAnon": &m.Anon, "RssFile": &m.File}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		dst, want := fields[key]
		if !ok || !want {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(val), " kB"), 10, 64)
		if err != nil {
			return Memory{}, fmt.Errorf("parsing %s of pid %d: %w", key, pid, err)
		}
		*dst = kb << 10
		delete(fields, key)
	}
	if len(fields) > 0 {
		return Memory{}, fmt.Errorf("/proc/%d/status lacks %d of VmRSS, VmHWM, RssAnon, RssFile", pid, len(fields))
	}
	return m, nil
}

// MemoryWatch samples a program's memory until Stop. The kernel keeps the
// peak of the whole RSS (VmHWM) exactly; the samples add the peak of its
// anonymous part, which no counter keeps.
type MemoryWatch struct {
	pid  int
	stop chan struct{}
	done chan struct{}

	mu       sync.Mutex
	peakAnon int64
	last     Memory
	err      error
}

// WatchMemory resets the program's peak and samples it every interval
// until Stop.
func (p *Process) WatchMemory(interval time.Duration) (*MemoryWatch, error) {
	pid, err := p.ProgramPid()
	if err != nil {
		return nil, err
	}
	if err := p.ResetPeak(); err != nil {
		return nil, err
	}
	w := &MemoryWatch{pid: pid, stop: make(chan struct{}), done: make(chan struct{})}
	w.sample()
	go func() {
		defer close(w.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-w.stop:
				return
			case <-t.C:
				w.sample()
			}
		}
	}()
	return w, nil
}

func (w *MemoryWatch) sample() {
	m, err := ReadMemory(w.pid)
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		if w.err == nil {
			w.err = err
		}
		return
	}
	w.last = m
	w.peakAnon = max(w.peakAnon, m.Anon)
}

// Now is the latest sample, with the kernel's peak of the whole RSS.
func (w *MemoryWatch) Now() (Memory, error) {
	w.sample()
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last, w.err
}

// Stop ends the sampling and returns the last reading, whose Peak is the
// kernel's peak RSS since the watch began, and the peak of the anonymous
// part among the samples. It may be called more than once.
func (w *MemoryWatch) Stop() (last Memory, peakAnon int64, err error) {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
	w.sample()
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last, w.peakAnon, w.err
}
