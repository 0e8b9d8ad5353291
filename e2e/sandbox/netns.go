package sandbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// netnsDir is where `ip netns` keeps its bind-mounted namespace handles.
const netnsDir = "/run/netns"

// NetnsDialer returns a DialContext function whose sockets are created
// inside the named network namespace (a name under /run/netns).
//
// A socket belongs to the namespace of the thread that created it for its
// whole life, so the dial happens on a thread that enters the namespace
// and leaves it again; the connection then works from any goroutine. This
// is how the test process, which stays in the root namespace, talks to
// the API server on the node's loopback or acts as a pod.
func NetnsDialer(netns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var conn net.Conn
		err := inNetns(netns, func() error {
			var d net.Dialer
			var err error
			// Only literal addresses: a name lookup could run on another
			// thread, outside the namespace.
			conn, err = d.DialContext(ctx, network, addr)
			return err
		})
		return conn, err
	}
}

// inNetns runs fn on an OS thread that has entered the network namespace.
// fn must not start goroutines that open sockets: they would run on other
// threads, in the root namespace.
func inNetns(netns string, fn func() error) error {
	if netns == "" || strings.Contains(netns, "/") {
		return fmt.Errorf("no network namespace named %q (an API-only pod has none)", netns)
	}
	target, err := os.Open(filepath.Join(netnsDir, netns))
	if err != nil {
		return fmt.Errorf("opening network namespace %s: %w", netns, err)
	}
	defer target.Close()

	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("opening this thread's network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("entering network namespace %s: %w", netns, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			// The thread is stuck in the wrong namespace. Returning while
			// still locked makes the runtime destroy it rather than run
			// other goroutines, in the wrong namespace, on it.
			errc <- errors.Join(ferr, fmt.Errorf("leaving network namespace %s: %w", netns, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// writeSysctls sets sysctls under /proc/sys/net inside a namespace; those
// files show the namespace of the thread that opens them.
func writeSysctls(netns string, kv map[string]string) error {
	return inNetns(netns, func() error {
		for k, v := range kv {
			p := "/proc/sys/" + strings.ReplaceAll(k, ".", "/")
			if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
				return fmt.Errorf("setting %s in %s: %w", k, netns, err)
			}
		}
		return nil
	})
}

// ipCmd runs ip(8) and returns its output, with stderr in the error.
func ipCmd(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "ip", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// ipBatch runs ip commands, one per line, inside a namespace in one ip
// process; setting up a namespace costs one fork instead of a dozen.
func ipBatch(ctx context.Context, netns string, lines ...string) error {
	cmd := exec.CommandContext(ctx, "ip", "-n", netns, "-batch", "-")
	cmd.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ip -n %s -batch: %w: %s", netns, err, strings.TrimSpace(string(out)))
	}
	return nil
}

func addNetns(ctx context.Context, name string) error {
	_, err := ipCmd(ctx, "netns", "add", name)
	return err
}

// deleteNetns kills whatever still runs in the namespace and deletes it.
// The kernel destroys the namespace's interfaces (veth pairs included,
// both ends) once the last process in it is gone.
func deleteNetns(name string) error {
	if _, err := os.Stat(filepath.Join(netnsDir, name)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	ctx := context.Background()
	if out, err := ipCmd(ctx, "netns", "pids", name); err == nil {
		for _, f := range strings.Fields(string(out)) {
			if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	_, err := ipCmd(ctx, "netns", "del", name)
	return err
}

// listNetns returns the names of the namespaces `ip netns` knows.
func listNetns() ([]string, error) {
	entries, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", netnsDir, err)
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names, nil
}
