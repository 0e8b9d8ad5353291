//go:build e2e

package e2e

import (
	"context"
	"io"
	"net/http"
	"os/exec"
	"sync"
	"testing"
	"time"

	"metaguard.dev/metaguard/e2e/sandbox"
)

// Upstreams the test runs itself in the cloud namespace, one behaviour per
// port of the GCP fake's address (port 80 stays the fake).
const upstreamPolicy = `apiVersion: metaguard.dev/v1alpha1
kind: Policy
endpoints:
  - {name: slow-headers, address: "169.254.169.252:81", flavor: generic}
  - {name: refused, address: "169.254.169.252:82", flavor: generic}
  - {name: blackholed, address: "169.254.169.252:83", flavor: generic}
  - {name: slow-body, address: "169.254.169.252:84", flavor: generic}
  - {name: healthy, address: "169.254.169.252:85", flavor: generic}
defaultAction: deny
rules:
  - name: web
    podSelector: {matchLabels: {app: web}}
    allow:
      - paths: ["/**"]
`

// startUpstreams serves the slow, slow-body and healthy upstreams from the
// test process on sockets in the cloud namespace, and drops every packet
// to the blackholed port there. Nothing listens on the refused port.
func startUpstreams(t *testing.T, s *sandbox.Sandbox) {
	t.Helper()
	hold := func(r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(30 * time.Second):
		}
	}
	handlers := map[string]http.HandlerFunc{
		"169.254.169.252:81": func(w http.ResponseWriter, r *http.Request) { hold(r) },
		"169.254.169.252:84": func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "1000")
			w.WriteHeader(200)
			io.WriteString(w, "the first bytes of a body that never ends")
			w.(http.Flusher).Flush()
			hold(r)
		},
		"169.254.169.252:85": func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") },
	}
	for addr, h := range handlers {
		ln, err := sandbox.NetnsListen(s.CloudNetns(), "tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
	}
	out, err := exec.Command("ip", "netns", "exec", s.CloudNetns(), "iptables", "-w", "-A", "INPUT", "-p", "tcp", "--dport", "83", "-j", "DROP").CombinedOutput()
	if err != nil {
		t.Fatalf("blackholing port 83 in the cloud namespace: %v %s", err, out)
	}
}

// TestUpstreamDownOrSlow: with --upstream-timeout=1s, an upstream that is
// slow or unreachable costs a pod at most the timeout (504), one that
// refuses answers 502 at once, and 200 such requests leave no goroutine,
// file descriptor or connection behind.
func TestUpstreamDownOrSlow(t *testing.T) {
	const timeout = time.Second
	n := startNode(t, upstreamPolicy, "--upstream-timeout=1s")
	startUpstreams(t, n.s)
	web := n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "web", Labels: map[string]string{"app": "web"}})
	// The first request may wait up to --identity-wait for the informer to
	// see the new pod; the timings below are about the upstream alone.
	eventually(t, 5*time.Second, func() bool { return n.get(web, "http://169.254.169.252:85/x", nil).status == 200 })

	cases := []struct {
		name     string
		port     string
		status   int
		min, max time.Duration
	}{
		{"a healthy upstream answers", "85", 200, 0, 500 * time.Millisecond},
		{"an upstream that never answers gets 504 after the timeout", "81", 504, timeout, timeout + 600*time.Millisecond},
		{"a blackholed upstream gets 504 after the timeout", "83", 504, timeout, timeout + 600*time.Millisecond},
		{"an upstream that refuses gets 502 at once", "82", 502, 0, 500 * time.Millisecond},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r, took, err := podGet(n.ctx, n.s, web, "http://169.254.169.252:"+c.port+"/x", nil)
			if err != nil {
				t.Fatal(err)
			}
			if r.status != c.status || took < c.min || took > c.max {
				t.Fatalf("%d after %s (%q), want %d within [%s, %s]", r.status, took, r.body, c.status, c.min, c.max)
			}
			reportf(t, "%d after %s", r.status, took.Round(time.Millisecond))
		})
	}
	t.Run("a body that stalls is cut off at the timeout", func(t *testing.T) {
		// The headers and first bytes sit in metaguard's write buffer when
		// the timeout aborts the copy, so the pod sees the connection
		// close: never a complete-looking response, never a hang.
		r, took, err := podGet(n.ctx, n.s, web, "http://169.254.169.252:84/x", nil)
		if err == nil || took < timeout || took > timeout+600*time.Millisecond {
			t.Fatalf("status %d, err %v after %s: want the exchange cut off after %s", r.status, err, took, timeout)
		}
		reportf(t, "body cut off after %s (%v)", took.Round(time.Millisecond), err)
	})

	t.Run("100 failing requests leak no goroutine, descriptor or connection", func(t *testing.T) {
		// As many at once as one pod may have in flight; past that its
		// requests would be refused at once (503) and never reach the
		// failing upstreams.
		parallel := n.budget().InFlightPerSource
		before := n.metrics()
		g0, f0 := metric(before, "go_goroutines", nil), metric(before, "process_open_fds", nil)
		errs0 := metric(before, "metaguard_upstream_errors_total", nil)
		ports := []string{"81", "82", "83", "84"}
		var wg sync.WaitGroup
		jobs := make(chan string)
		var mu sync.Mutex
		statuses := map[int]int{}
		var slowest time.Duration
		for range parallel {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for port := range jobs {
					ctx, cancel := context.WithTimeout(n.ctx, 10*time.Second)
					r, took, _ := podGet(ctx, n.s, web, "http://169.254.169.252:"+port+"/x", nil)
					cancel()
					mu.Lock()
					statuses[r.status]++
					slowest = max(slowest, took)
					mu.Unlock()
				}
			}()
		}
		for i := range 100 {
			jobs <- ports[i%len(ports)]
		}
		close(jobs)
		wg.Wait()
		// Status 0: the connection closed mid-response (slow body).
		if statuses[504] != 50 || statuses[502] != 25 || statuses[0] != 25 {
			t.Errorf("statuses %v, want 50×504 (slow, blackholed), 25×502 (refused), 25 cut off (slow body)", statuses)
		}
		var g, f, open float64
		eventually(t, 15*time.Second, func() bool {
			m := n.metrics()
			g, f, open = metric(m, "go_goroutines", nil), metric(m, "process_open_fds", nil), metric(m, "metaguard_connections_open", nil)
			// A leak of even one goroutine per request would be 100 over.
			return g <= g0+10 && f <= f0+10 && open == 0
		})
		errs := metric(n.metrics(), "metaguard_upstream_errors_total", nil) - errs0
		if errs < 75 {
			t.Errorf("upstream_errors_total grew by %v, want at least 75", errs)
		}
		reportf(t, "goroutines %v -> %v, open fds %v -> %v, open client connections %v; statuses %v; slowest %s; upstream_errors_total +%v",
			g0, g, f0, f, open, statuses, slowest.Round(time.Millisecond), errs)
	})
}
