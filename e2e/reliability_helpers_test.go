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
	"os"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"metaguard.dev/metaguard/e2e/fakecloud"
	"metaguard.dev/metaguard/e2e/sandbox"
)

// Helpers of the reliability and attack suite (RELIABILITY.md). They return
// errors instead of failing the test, so that they can run in the
// goroutines a load or a probe loop needs.

// restartMetaguard starts metaguard again on the node with the flags
// startNode gives it plus args, after the previous process is gone, and
// makes it the node's process (audit() reads the new one's stdout).
func (n *node) restartMetaguard(args ...string) time.Duration {
	n.t.Helper()
	begin := time.Now()
	base := []string{
		"--config=" + n.policy, "--reload-interval=200ms", "--sync-period=1s",
		"--host-ip=" + sandbox.HostIP.String() + "," + sandbox.HostIPv6.String(),
	}
	mg, err := n.s.StartMetaguard(n.ctx, append(base, args...)...)
	if err != nil {
		n.t.Fatalf("restarting metaguard: %v", err)
	}
	n.mg = mg
	return time.Since(begin)
}

// rawResponse is one response read off a raw connection.
type rawResponse struct {
	status int
	header http.Header
	body   string
}

// rawExchange writes raw bytes on a new TCP connection from the pod to
// addr (through the node's real DNAT) and reads every response until the
// server closes the connection or stays quiet: 3 s for each of the first
// expect responses, 200 ms for any more (a kept-alive connection stays
// open after its last answer). err is set only when no connection could
// be made.
func rawExchange(ctx context.Context, pod *sandbox.Pod, addr, raw string, expect int) ([]rawResponse, error) {
	dctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	c, err := sandbox.NetnsDialer(pod.Netns)(dctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if _, err := io.WriteString(c, raw); err != nil {
		return nil, fmt.Errorf("writing request: %w", err)
	}
	var out []rawResponse
	br := bufio.NewReader(c)
	for {
		quiet := 3 * time.Second
		if len(out) >= expect {
			quiet = 200 * time.Millisecond
		}
		_ = c.SetReadDeadline(time.Now().Add(quiet))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return out, nil
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		out = append(out, rawResponse{status: resp.StatusCode, header: resp.Header, body: string(b)})
	}
}

// probeOutcome is what one connection attempt to a metadata address saw.
type probeOutcome int

const (
	probeProxied probeOutcome = iota // metaguard answered
	probeDirect                      // something other than metaguard answered: the IMDS itself
	probeDropped                     // no answer in time (a DROP rule)
	probeRefused                     // connection refused (nothing listens at the DNAT target)
	probeError                       // anything else
)

func (o probeOutcome) String() string {
	return [...]string{"proxied", "direct", "dropped", "refused", "error"}[o]
}

// probe sends GET path to addr from the pod on a new connection and says
// who answered. Every metaguard answer starts with "metaguard:" or comes
// from a pod the policy allows, so callers probe with a pod and path the
// policy denies: any other answer came straight from the IMDS.
func probe(pod *sandbox.Pod, addr, path string, timeout time.Duration) probeOutcome {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := sandbox.NetnsDialer(pod.Netns)(ctx, "tcp", addr)
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return probeRefused
	case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
		return probeDropped
	case err != nil:
		return probeError
	}
	defer c.Close()
	deadline, _ := ctx.Deadline()
	_ = c.SetDeadline(deadline)
	host, _, _ := net.SplitHostPort(addr)
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", path, host); err != nil {
		return probeError
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	switch {
	case isTimeout(err):
		return probeDropped
	case errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED):
		return probeRefused
	case err != nil:
		return probeError
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if strings.HasPrefix(string(b), "metaguard:") {
		return probeProxied
	}
	return probeDirect
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// podGet is a GET from the pod that returns an error instead of failing
// the test, for use in goroutines, and how long it took.
func podGet(ctx context.Context, s *sandbox.Sandbox, pod *sandbox.Pod, url string, header map[string]string) (response, time.Duration, error) {
	begin := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return response{}, 0, err
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := s.PodHTTPClient(pod).Do(req)
	if err != nil {
		return response{}, time.Since(begin), err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: string(b)}, time.Since(begin), err
}

// cloudRecords returns what the fake upstream received since its last reset.
func (n *node) cloudRecords(f fakecloud.Flavor) []fakecloud.Record {
	n.t.Helper()
	recs, err := n.s.CloudRecords(n.ctx, f)
	if err != nil {
		n.t.Fatal(err)
	}
	return recs
}

func (n *node) resetCloud(f fakecloud.Flavor) {
	n.t.Helper()
	if err := n.s.ResetCloudRecords(n.ctx, f); err != nil {
		n.t.Fatal(err)
	}
}

// scalar reads one unlabelled metric from metaguard's /metrics.
func (n *node) scalar(name string) float64 {
	n.t.Helper()
	return metric(n.metrics(), name, nil)
}

// stderrHas reports whether metaguard's operational log holds sub.
func (n *node) stderrHas(sub string) bool {
	b, err := n.mg.Stderr()
	return err == nil && strings.Contains(string(b), sub)
}

// percentile returns the p-th percentile (0..100) of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(float64(len(s)-1) * p / 100)
	return s[i]
}

// reportf logs a measured number and, when RELIABILITY_REPORT names a
// file, appends it there, so that RELIABILITY.md quotes what a run saw.
func reportf(t *testing.T, format string, args ...any) {
	t.Helper()
	line := fmt.Sprintf(format, args...)
	t.Log(line)
	if path := os.Getenv("RELIABILITY_REPORT"); path != "" {
		f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err == nil {
			fmt.Fprintf(f, "%s: %s\n", t.Name(), line)
			f.Close()
		}
	}
}
