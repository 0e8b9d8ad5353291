package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cgroupMount is where this machine family mounts its cgroup hierarchies:
// one cgroup v1 hierarchy per controller, plus the v2 one at unified
// (hybrid), no systemd.
const cgroupMount = "/sys/fs/cgroup"

// cgroupPrefix names a run's cgroup root, the kubelet's cgroupRoot: every
// pod's cgroup, and so every container process, is below it, in every
// hierarchy, so a run removes exactly its own.
const cgroupPrefix = "mg-e2e-"

func (s *Sandbox) cgroupRoot() string { return cgroupPrefix + s.Prefix }

// cgroupHierarchies are the mounted hierarchies (cpu, memory, ...,
// unified), as directories.
func cgroupHierarchies() ([]string, error) {
	entries, err := os.ReadDir(cgroupMount)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", cgroupMount, err)
	}
	var out []string
	for _, e := range entries {
		p := filepath.Join(cgroupMount, e.Name())
		if _, err := os.Stat(filepath.Join(p, "cgroup.procs")); err == nil {
			out = append(out, p)
		}
	}
	return out, nil
}

// createCgroupRoot makes the run's cgroup root in every hierarchy: the
// kubelet refuses a cgroupRoot that does not exist. A new cpuset cgroup
// starts with no CPUs and no memory nodes, which would let no task in, so
// it gets its parent's.
func (s *Sandbox) createCgroupRoot() error {
	hs, err := cgroupHierarchies()
	if err != nil {
		return err
	}
	for _, h := range hs {
		dir := filepath.Join(h, s.cgroupRoot())
		if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("creating cgroup %s: %w", dir, err)
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			parent, err := os.ReadFile(filepath.Join(h, f))
			if err != nil {
				continue // not the cpuset hierarchy
			}
			if err := os.WriteFile(filepath.Join(dir, f), parent, 0o644); err != nil {
				return fmt.Errorf("initialising %s/%s: %w", dir, f, err)
			}
		}
	}
	return nil
}

// removeCgroupTree kills every process left in the named cgroup (in any
// hierarchy: a container's processes are in all of them) and removes the
// cgroup and everything below it, deepest first, within a deadline: a
// killed task leaves its cgroup a moment after the signal.
func removeCgroupTree(name string) error {
	hs, err := cgroupHierarchies()
	if err != nil {
		return err
	}
	for _, h := range hs {
		root := filepath.Join(h, name)
		if _, err := os.Stat(root); errors.Is(err, os.ErrNotExist) {
			continue
		}
		var left []string
		// A killed task leaves its cgroup a moment after the signal, and
		// nothing tells us when: poll, with a deadline.
		err := pollUntil(context.Background(), 15*time.Second, 50*time.Millisecond, func() (bool, error) {
			dirs := cgroupDirs(root)
			killCgroupProcs(dirs)
			left = left[:0]
			for _, d := range dirs {
				if err := syscall.Rmdir(d); err != nil && !errors.Is(err, syscall.ENOENT) {
					left = append(left, d)
				}
			}
			return len(left) == 0, nil
		})
		if err != nil {
			return fmt.Errorf("removing cgroups %s: %w", strings.Join(left, ", "), err)
		}
	}
	return nil
}

// cgroupDirs lists root and its descendants, deepest first.
func cgroupDirs(root string) []string {
	var dirs []string
	_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	slices.Reverse(dirs)
	return dirs
}

func killCgroupProcs(dirs []string) {
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil && pid > 1 && pid != os.Getpid() {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
}

// sweepCgroups removes the cgroup roots of runs that are gone.
func sweepCgroups(logf func(string, ...any)) {
	hs, err := cgroupHierarchies()
	if err != nil {
		return
	}
	seen := map[string]bool{}
	for _, h := range hs {
		matches, _ := filepath.Glob(filepath.Join(h, cgroupPrefix+"mg*"))
		for _, m := range matches {
			name := filepath.Base(m)
			prefix := strings.TrimPrefix(name, cgroupPrefix)
			if seen[name] || !runName.MatchString(prefix+"-") || !runIsDead(prefix) {
				continue
			}
			seen[name] = true
			logf("sweeping cgroup %s, left behind by a run that did not finish", name)
			if err := removeCgroupTree(name); err != nil {
				logf("sweep: %v", err)
			}
			os.Remove(filepath.Join(lockDir, prefix+".lock"))
		}
	}
}
