package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// needNetnsPrivileges skips tests that make namespaces when this machine
// or user cannot.
func needNetnsPrivileges(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs ip(8) from iproute2")
	}
}

// scratchNetns makes a namespace named like a sandbox run's and deletes it
// when the test ends.
func scratchNetns(t *testing.T, name string) {
	t.Helper()
	if err := addNetns(context.Background(), name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = deleteNetns(name) })
}

func unusedPrefix(t *testing.T) string {
	t.Helper()
	for {
		var b [2]byte
		if _, err := rand.Read(b[:]); err != nil {
			t.Fatal(err)
		}
		p := "mg" + hex.EncodeToString(b[:])
		if _, err := os.Stat(filepath.Join(netnsDir, p+"-node")); errors.Is(err, os.ErrNotExist) {
			return p
		}
	}
}

func TestNetnsDialer(t *testing.T) {
	needNetnsPrivileges(t)
	ns := unusedPrefix(t) + "-node"
	scratchNetns(t, ns)
	if err := ipBatch(context.Background(), ns, "link set lo up"); err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	if err := inNetns(ns, func() (err error) {
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "inside")
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })

	t.Run("a socket dialed through the namespace reaches its loopback", func(t *testing.T) {
		for range 20 {
			resp, err := netnsHTTPClient(ns).Get("http://" + ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(b) != "inside" {
				t.Fatalf("got %q", b)
			}
		}
	})
	t.Run("the root namespace does not see the listener", func(t *testing.T) {
		client := &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: time.Second}
		resp, err := client.Get("http://" + ln.Addr().String())
		if err != nil {
			return // refused: nothing listens there in the root namespace
		}
		// Something of the machine's own may hold the port by chance; it
		// must not be the server inside the namespace.
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) == "inside" {
			t.Error("the root namespace reached the namespace's loopback")
		}
	})
	t.Run("no thread is left inside the namespace", func(t *testing.T) {
		self, err := os.Readlink("/proc/self/ns/net")
		if err != nil {
			t.Fatal(err)
		}
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			t.Fatal(err)
		}
		for _, task := range tasks {
			ns, err := os.Readlink(filepath.Join("/proc/self/task", task.Name(), "ns/net"))
			if err != nil {
				continue // the thread exited meanwhile
			}
			if ns != self {
				t.Errorf("thread %s is in %s, not %s", task.Name(), ns, self)
			}
		}
	})
}

func TestSweep(t *testing.T) {
	needNetnsPrivileges(t)
	if err := os.MkdirAll(lockDir, 0o755); err != nil {
		t.Fatal(err)
	}
	dead, alive := unusedPrefix(t), unusedPrefix(t)
	for _, n := range []string{dead + "-node", dead + "-p2", alive + "-node"} {
		scratchNetns(t, n)
	}
	// A live run holds its lock; a killed one's lock is free (or gone).
	lock, err := os.OpenFile(filepath.Join(lockDir, alive+".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(lock.Name()); lock.Close() })
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatal(err)
	}
	runDir, err := os.MkdirTemp("", "metaguard-e2e-"+dead+"-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(runDir) })
	// A process a killed run left running in its namespace.
	orphan := exec.Command("ip", "netns", "exec", dead+"-node", "sleep", "600")
	orphan.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := orphan.Start(); err != nil {
		t.Fatal(err)
	}
	orphanDone := make(chan struct{})
	go func() { _ = orphan.Wait(); close(orphanDone) }()
	t.Cleanup(func() { _ = orphan.Process.Kill() })
	// Sweep only once the orphan is inside: before its setns it is not
	// the namespace's to kill.
	err = pollUntil(context.Background(), 5*time.Second, 10*time.Millisecond, func() (bool, error) {
		out, _ := exec.Command("ip", "netns", "identify", strconv.Itoa(orphan.Process.Pid)).Output()
		return strings.TrimSpace(string(out)) == dead+"-node", nil
	})
	if err != nil {
		t.Fatal(err)
	}

	Sweep(t.Logf)

	t.Run("the namespaces of a dead run are deleted", func(t *testing.T) {
		for _, n := range []string{dead + "-node", dead + "-p2"} {
			if _, err := os.Stat(filepath.Join(netnsDir, n)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s survived the sweep", n)
			}
		}
	})
	t.Run("its run directory is deleted", func(t *testing.T) {
		if _, err := os.Stat(runDir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s survived the sweep", runDir)
		}
	})
	t.Run("what ran in them is killed", func(t *testing.T) {
		select {
		case <-orphanDone:
		case <-time.After(5 * time.Second):
			t.Error("the orphan still runs")
		}
	})
	t.Run("a live run is left alone", func(t *testing.T) {
		if _, err := os.Stat(filepath.Join(netnsDir, alive+"-node")); err != nil {
			t.Errorf("%s-node was swept: %v", alive, err)
		}
	})
}
