//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"metaguard.dev/metaguard/e2e/sandbox"
)

// Helpers of the flood tests: many pods, many connections, the memory of
// the real metaguard process, and a well-behaved pod that must be served
// throughout.

// peakBound is what metaguard's peak RSS must stay under while flooded:
// the DaemonSet's 64Mi memory limit less 8 MiB for what else the container
// holds at the same time, the iptables process each rule sync runs (a few
// MiB on a node with a few thousand rules).
const peakBound = 56 << 20

// sdkTimeout is how long the metadata SDKs wait for an answer before they
// retry (the AWS SDK's IMDS client and the GCP metadata library: 1 s).
const sdkTimeout = time.Second

// addPods adds count pods named <prefix>-<i> to namespace ns, a few at a
// time.
func (n *node) addPods(ns, prefix string, count int, labels map[string]string) []*sandbox.Pod {
	n.t.Helper()
	pods := make([]*sandbox.Pod, count)
	var g errgroup.Group
	g.SetLimit(4)
	for i := range pods {
		g.Go(func() error {
			p, err := n.s.AddPod(n.ctx, sandbox.PodSpec{Namespace: ns, Name: fmt.Sprintf("%s-%d", prefix, i), Labels: labels})
			pods[i] = p
			return err
		})
	}
	if err := g.Wait(); err != nil {
		n.t.Fatalf("adding pods: %v", err)
	}
	return pods
}

// watchMemory starts sampling metaguard's memory, its peak reset to now.
func (n *node) watchMemory() *sandbox.MemoryWatch {
	n.t.Helper()
	w, err := n.mg.WatchMemory(20 * time.Millisecond)
	if err != nil {
		n.t.Fatal(err)
	}
	n.t.Cleanup(func() { w.Stop() })
	return w
}

// goMemory is what the Go runtime of metaguard says it holds, from its
// /metrics: what GOMEMLIMIT counts (obtained from the OS and not released)
// and, of it, heap spans and goroutine stacks in use.
type goMemory struct {
	Managed, HeapInuse, StackInuse float64
	Goroutines                     float64
}

func (n *node) goMemory() goMemory {
	n.t.Helper()
	f := n.metrics()
	return goMemory{
		Managed:    metric(f, "go_memstats_sys_bytes", nil) - metric(f, "go_memstats_heap_released_bytes", nil),
		HeapInuse:  metric(f, "go_memstats_heap_inuse_bytes", nil),
		StackInuse: metric(f, "go_memstats_stack_inuse_bytes", nil),
		Goroutines: metric(f, "go_goroutines", nil),
	}
}

// connFlood is a set of connections a test holds open from pods.
type connFlood struct {
	mu    sync.Mutex
	conns []net.Conn
	// refused counts connections that could not be made at all.
	refused int
}

// floodConns opens perPod connections from every pod to addr, writes
// greeting on each and, with reply, reads one response (which leaves a
// kept-alive connection idle). It returns once every connection has been
// tried; metaguard may close any of them at accept or later. They are
// closed by the test's cleanup, or by Close.
func floodConns(t *testing.T, ctx context.Context, pods []*sandbox.Pod, addr string, perPod int, greeting string, reply bool) *connFlood {
	t.Helper()
	f := &connFlood{}
	t.Cleanup(f.Close)
	var g errgroup.Group
	g.SetLimit(8)
	for _, p := range pods {
		g.Go(func() error {
			dial := sandbox.NetnsDialer(p.Netns)
			for range perPod {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				dctx, cancel := context.WithTimeout(ctx, 3*time.Second)
				c, err := dial(dctx, "tcp", addr)
				cancel()
				if err != nil {
					f.mu.Lock()
					f.refused++
					f.mu.Unlock()
					continue
				}
				f.mu.Lock()
				f.conns = append(f.conns, c)
				f.mu.Unlock()
				if greeting != "" {
					_ = c.SetWriteDeadline(time.Now().Add(time.Second))
					if _, err := io.WriteString(c, greeting); err != nil {
						continue // closed at accept
					}
				}
				if reply {
					_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
					if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err == nil {
						_, _ = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
					}
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatalf("flooding %s: %v", addr, err)
	}
	return f
}

// Len is how many connections were made.
func (f *connFlood) Len() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.conns)
}

// Close closes every connection.
func (f *connFlood) Close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.conns {
		c.Close()
	}
	f.conns = nil
}

// served is what a well-behaved pod saw while another pod flooded.
type served struct {
	requests int
	// retried counts requests whose first attempt failed or took longer
	// than sdkTimeout; failed those whose retry failed too.
	retried, failed int
	slowest         time.Duration
	statuses        map[int]int
	lastErr         string
}

func (s served) String() string {
	return fmt.Sprintf("%d requests, %d retried, %d failed, slowest attempt %s, statuses %v", s.requests, s.retried, s.failed, s.slowest.Round(time.Millisecond), s.statuses)
}

// ok says whether every request was served: answered 200 within
// sdkTimeout on its first attempt or on the one retry the SDKs make.
func (s served) ok() bool { return s.requests > 0 && s.failed == 0 }

// victim is a well-behaved client making requests during a flood.
type victim struct {
	stop     chan struct{}
	once     sync.Once
	done     chan served
	attempts atomic.Int64
}

// Attempts is how many requests have been sent so far, retries included.
func (v *victim) Attempts() int64 { return v.attempts.Load() }

// Stop ends the requests and returns what they saw.
func (v *victim) Stop() served {
	v.once.Do(func() { close(v.stop) })
	return <-v.done
}

// serveVictim sends a GET from the pod every interval, on a new
// connection each time as a fresh client would, each attempt bounded by
// sdkTimeout and retried once, until Stop (or the test's end).
func serveVictim(n *node, pod *sandbox.Pod, url string, header map[string]string, every time.Duration) *victim {
	return serveFrom(n, n.s.PodHTTPClient(pod), url, header, every)
}

// serveFrom is serveVictim with any client that opens a connection per
// request.
func serveFrom(n *node, client *http.Client, url string, header map[string]string, every time.Duration) *victim {
	v := &victim{stop: make(chan struct{}), done: make(chan served, 1)}
	n.t.Cleanup(func() { v.once.Do(func() { close(v.stop) }) })
	client.Timeout = sdkTimeout
	attempt := func() (int, time.Duration, error) {
		v.attempts.Add(1)
		begin := time.Now()
		req, err := http.NewRequestWithContext(n.ctx, http.MethodGet, url, nil)
		if err != nil {
			return 0, 0, err
		}
		for k, v := range header {
			req.Header.Set(k, v)
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0, time.Since(begin), err
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		took := time.Since(begin)
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		return resp.StatusCode, took, err
	}
	go func() {
		s := served{statuses: map[int]int{}}
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-v.stop:
				v.done <- s
				return
			case <-tick.C:
			}
			s.requests++
			for try := 0; try < 2; try++ {
				code, took, err := attempt()
				s.statuses[code]++
				s.slowest = max(s.slowest, took)
				if err == nil && took <= sdkTimeout {
					break
				}
				if err == nil {
					err = errors.New("took " + took.String())
				}
				s.lastErr = err.Error()
				if try == 0 {
					s.retried++
				} else {
					s.failed++
				}
			}
		}
	}()
	return v
}

// awaitAttempts waits until the victim has sent k more requests: the
// flood holds while it is being served.
func awaitAttempts(t *testing.T, v *victim, k int64) {
	t.Helper()
	want := v.Attempts() + k
	eventually(t, 30*time.Second, func() bool { return v.Attempts() >= want })
}

// checkServed fails the test if the pod was not served throughout.
func checkServed(t *testing.T, who string, s served) {
	t.Helper()
	if !s.ok() {
		t.Errorf("%s was not served within %s throughout: %s (last error: %s)", who, sdkTimeout, s, s.lastErr)
	}
}

// checkPeak fails the test if metaguard's peak RSS passed peakBound, and
// returns the reading.
func checkPeak(t *testing.T, w *sandbox.MemoryWatch) (sandbox.Memory, int64) {
	t.Helper()
	m, anon, err := w.Stop()
	if err != nil {
		t.Fatalf("reading metaguard's memory: %v", err)
	}
	if m.Peak >= peakBound {
		// The Go runtime may hold up to GOMEMLIMIT, garbage included, and
		// the binary's own mapped pages come on top.
		t.Errorf("metaguard's peak RSS was %s (the binary's mapped pages %s of it), want under %s: the caps let more than the budget be live, or GOMEMLIMIT plus those pages leaves the container no margin",
			sandbox.MiB(m.Peak), sandbox.MiB(m.File), sandbox.MiB(peakBound))
	}
	return m, anon
}
