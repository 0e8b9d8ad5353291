package sandbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// stopGrace is how long Stop waits after SIGTERM before SIGKILL.
const stopGrace = 5 * time.Second

// Process is a program the sandbox started, usually inside one of its
// network namespaces. Its stdout and stderr go to files in the run's
// artifact directory.
type Process struct {
	// Name is unique within the sandbox and names the log files.
	Name string

	cmd        *exec.Cmd
	stdoutPath string
	stderrPath string
	done       chan struct{}
	err        error
	// disposable processes are the sandbox's own infrastructure: Close
	// kills them outright, since a graceful API server shutdown alone
	// takes seconds and nothing of theirs outlives the run.
	disposable bool
}

// StartProcess starts path with args inside netns ("" for the root
// namespace) and returns at once. The process gets its own process group
// (Stop signals all of it) and dies with the test process even when that
// is killed (Pdeathsig), and Close stops it.
func (s *Sandbox) StartProcess(netns, path string, args ...string) (*Process, error) {
	return s.startProc(procSpec{netns: netns, name: filepath.Base(path), path: path, args: args})
}

// procSpec is a process to start; env entries are added to the test
// process's environment.
type procSpec struct {
	netns, name, path string
	args, env         []string
	disposable        bool
}

func (s *Sandbox) startProc(spec procSpec) (*Process, error) {
	netns, name, path, args := spec.netns, spec.name, spec.path, spec.args
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, errors.New("sandbox is closed")
	}
	base := name
	for i := 2; s.names[name]; i++ {
		name = fmt.Sprintf("%s-%d", base, i)
	}
	s.names[name] = true
	s.mu.Unlock()

	argv := append([]string{path}, args...)
	if netns != "" {
		// ip netns exec execs the program in place, so the pid, process
		// group and Pdeathsig below are the program's own.
		argv = append([]string{"ip", "netns", "exec", netns}, argv...)
	}
	p := &Process{
		Name:       name,
		stdoutPath: filepath.Join(s.artifacts, name+".stdout"),
		stderrPath: filepath.Join(s.artifacts, name+".stderr"),
		done:       make(chan struct{}),
		disposable: spec.disposable,
	}
	stdout, err := os.Create(p.stdoutPath)
	if err != nil {
		return nil, fmt.Errorf("creating log of %s: %w", name, err)
	}
	defer stdout.Close()
	stderr, err := os.Create(p.stderrPath)
	if err != nil {
		return nil, fmt.Errorf("creating log of %s: %w", name, err)
	}
	defer stderr.Close()

	p.cmd = exec.Command(argv[0], argv[1:]...)
	p.cmd.Stdout, p.cmd.Stderr = stdout, stderr
	if len(spec.env) > 0 {
		p.cmd.Env = append(os.Environ(), spec.env...)
	}
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	s.mu.Lock()
	s.procs = append(s.procs, p)
	s.mu.Unlock()
	s.logf("started %s (pid %d) in %s: %s", name, p.cmd.Process.Pid, orRoot(netns), strings.Join(append(slices.Clone(spec.env), argv...), " "))
	return p, nil
}

func orRoot(netns string) string {
	if netns == "" {
		return "the root namespace"
	}
	return netns
}

// Pid is the process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited, and its wait error.
func (p *Process) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// ExitCode is the exit status, or -1 while running or when killed by a
// signal.
func (p *Process) ExitCode() int {
	if ok, _ := p.Exited(); !ok {
		return -1
	}
	return p.cmd.ProcessState.ExitCode()
}

// Wait blocks until the process exits or ctx ends.
func (p *Process) Wait(ctx context.Context) error {
	select {
	case <-p.done:
		return p.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Signal sends sig to the process group.
func (p *Process) Signal(sig syscall.Signal) error {
	if ok, _ := p.Exited(); ok {
		return nil
	}
	if err := syscall.Kill(-p.cmd.Process.Pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signalling %s: %w", p.Name, err)
	}
	return nil
}

// Stop sends SIGTERM, waits up to 5s, then SIGKILLs. The exit status is
// not an error: a stopped process is expected to exit non-zero.
func (p *Process) Stop() error {
	if err := p.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	t := time.NewTimer(stopGrace)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-t.C:
		return p.Kill()
	}
}

// Kill sends SIGKILL and waits for the exit.
func (p *Process) Kill() error {
	if err := p.Signal(syscall.SIGKILL); err != nil {
		return err
	}
	<-p.done
	return nil
}

// StdoutPath and StderrPath are the log files.
func (p *Process) StdoutPath() string { return p.stdoutPath }

// StderrPath is the file holding the process's stderr.
func (p *Process) StderrPath() string { return p.stderrPath }

// Stdout returns what the process wrote to stdout so far.
func (p *Process) Stdout() ([]byte, error) { return os.ReadFile(p.stdoutPath) }

// Stderr returns what the process wrote to stderr so far.
func (p *Process) Stderr() ([]byte, error) { return os.ReadFile(p.stderrPath) }

// tail is the end of the process's stderr, for error messages.
func (p *Process) tail(n int) string {
	b, _ := p.Stderr()
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// ExecInPod runs a command in the pod's network namespace (the node's for
// hostNetwork pods), waits for it and returns its stdout. A non-zero exit
// is an error that carries stderr.
func (s *Sandbox) ExecInPod(ctx context.Context, pod *Pod, args ...string) ([]byte, error) {
	if pod.Netns == "" {
		return nil, fmt.Errorf("pod %s has no network namespace on this node", pod)
	}
	return execIn(ctx, pod.Netns, args...)
}

// ExecInNode runs a command in the node's network namespace, for instance
// iptables-save or conntrack -L, and returns its stdout.
func (s *Sandbox) ExecInNode(ctx context.Context, args ...string) ([]byte, error) {
	return execIn(ctx, s.nodeNetns(), args...)
}

func execIn(ctx context.Context, netns string, args ...string) ([]byte, error) {
	if len(args) == 0 {
		return nil, errors.New("no command")
	}
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", netns}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("running %s in %s: %w: %s", args[0], netns, err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// Healthy reports the sandbox's own processes (etcd, kube-apiserver, the
// metadata services) that have exited: they never should before Close, and
// a test that saw odd answers wants to know that the mock behind them died.
// After Close there is nothing to report.
func (s *Sandbox) Healthy() error {
	s.mu.Lock()
	procs := append([]*Process(nil), s.procs...)
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return nil
	}
	var errs []error
	for _, p := range procs {
		if ok, err := p.Exited(); ok && p.disposable {
			errs = append(errs, fmt.Errorf("%s exited (%v):\n%s", p.Name, err, p.tail(15)))
		}
	}
	return errors.Join(errs...)
}

// stopAll stops every process: the sandbox's infrastructure with SIGKILL,
// the processes a test started (metaguard) with Stop, so that their
// shutdown path runs as in production.
func (s *Sandbox) stopAll() error {
	s.mu.Lock()
	procs := append([]*Process(nil), s.procs...)
	s.mu.Unlock()
	var wg sync.WaitGroup
	errs := make([]error, len(procs))
	// In parallel: a sequential grace period per process adds up.
	for i, p := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if p.disposable {
				errs[i] = p.Kill()
			} else {
				errs[i] = p.Stop()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
