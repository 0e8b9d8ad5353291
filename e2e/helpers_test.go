//go:build e2e

// Package e2e runs metaguard on a sandboxed node built from real parts:
// etcd and kube-apiserver, iptables rules in network namespaces, the AWS
// ec2-metadata-mock and the project's GCP/Azure fakes, and real clients in
// pod namespaces. Run with `make e2e` (root).
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"metaguard.dev/metaguard/e2e/sandbox"
	"metaguard.dev/metaguard/proxy/audit"
)

// node is a sandbox with metaguard running on it under a policy.
type node struct {
	t      *testing.T
	s      *sandbox.Sandbox
	mg     *sandbox.Process
	policy string // file metaguard reads; rewrite it to reload
	ctx    context.Context
}

// startNode starts a sandbox, applies the shipped deploy/base (so
// metaguard runs with exactly the shipped RBAC), and starts metaguard with
// the policy. Pods should be added before the requests that need them.
func startNode(t *testing.T, policy string, args ...string) *node {
	t.Helper()
	return startNodeWith(t, sandbox.Options{}, policy, args...)
}

// startNodeWith is startNode on a sandbox started with opts (for instance
// a GCP or Azure metadata service on 169.254.169.254).
func startNodeWith(t *testing.T, opts sandbox.Options, policy string, args ...string) *node {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	s := sandbox.StartT(t, opts)
	if err := s.ApplyManifests(ctx, "../deploy/base"); err != nil {
		t.Fatalf("applying deploy/base: %v", err)
	}
	n := &node{t: t, s: s, ctx: ctx, policy: filepath.Join(s.ArtifactDir(), "policy.yaml")}
	n.writePolicy(policy)
	base := []string{
		"--config=" + n.policy, "--reload-interval=200ms", "--sync-period=1s",
		"--host-ip=" + sandbox.HostIP.String() + "," + sandbox.HostIPv6.String(),
	}
	mg, err := s.StartMetaguard(ctx, append(base, args...)...)
	if err != nil {
		t.Fatalf("starting metaguard: %v", err)
	}
	n.mg = mg
	return n
}

func (n *node) writePolicy(doc string) {
	n.t.Helper()
	tmp := n.policy + ".tmp"
	if err := os.WriteFile(tmp, []byte(doc), 0o644); err != nil {
		n.t.Fatal(err)
	}
	if err := os.Rename(tmp, n.policy); err != nil {
		n.t.Fatal(err)
	}
}

func (n *node) addPod(spec sandbox.PodSpec) *sandbox.Pod {
	n.t.Helper()
	p, err := n.s.AddPod(n.ctx, spec)
	if err != nil {
		n.t.Fatalf("adding pod %s/%s: %v", spec.Namespace, spec.Name, err)
	}
	return p
}

// response is what a pod saw.
type response struct {
	status int
	header http.Header
	body   string
}

// get sends a request from inside the pod's network namespace.
func (n *node) do(pod *sandbox.Pod, method, url string, header map[string]string) response {
	n.t.Helper()
	req, err := http.NewRequestWithContext(n.ctx, method, url, nil)
	if err != nil {
		n.t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := n.s.PodHTTPClient(pod).Do(req)
	if err != nil {
		n.t.Fatalf("%s %s from %s: %v", method, url, pod, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: string(body)}
}

func (n *node) get(pod *sandbox.Pod, url string, header map[string]string) response {
	n.t.Helper()
	return n.do(pod, http.MethodGet, url, header)
}

// podClient runs the real AWS SDK IMDS client inside the pod.
func (n *node) podClient(pod *sandbox.Pod, args ...string) sandbox.PodClientResult {
	n.t.Helper()
	res, err := n.s.PodClient(n.ctx, pod, args...)
	if err != nil {
		n.t.Fatalf("podclient %v in %s: %v", args, pod, err)
	}
	return res
}

// audit returns the audit records metaguard has written so far (stdout),
// read by the package that owns the record.
func (n *node) audit() []audit.Record {
	n.t.Helper()
	out, err := n.mg.Stdout()
	if err != nil {
		n.t.Fatal(err)
	}
	recs, err := audit.ReadAll(bytes.NewReader(out))
	if err != nil {
		n.t.Fatalf("reading the audit log: %v", err)
	}
	return recs
}

// waitAudit polls until at least want audit lines exist: a line is
// written after its response.
func (n *node) waitAudit(want int) []audit.Record {
	n.t.Helper()
	var lines []audit.Record
	eventually(n.t, 5*time.Second, func() bool {
		lines = n.audit()
		return len(lines) >= want
	})
	return lines
}

// metrics scrapes metaguard's /metrics from the node namespace.
func (n *node) metrics() map[string]*dto.MetricFamily {
	n.t.Helper()
	return scrapeMetrics(n.t, n.s)
}

// scrapeMetrics reads and parses metaguard's /metrics on the node's
// metrics port, from the node itself.
func scrapeMetrics(t *testing.T, s *sandbox.Sandbox) map[string]*dto.MetricFamily {
	t.Helper()
	client := s.NodeHTTPClient()
	client.Timeout = 5 * time.Second
	resp, err := client.Get("http://127.0.0.1:9181/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	return fams
}

// metric sums the series of a family whose labels include want.
func metric(fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	f, ok := fams[name]
	if !ok {
		return 0
	}
	sum := 0.0
	for _, m := range f.Metric {
		match := true
		for k, v := range want {
			found := false
			for _, l := range m.Label {
				if l.GetName() == k && l.GetValue() == v {
					found = true
				}
			}
			match = match && found
		}
		if !match {
			continue
		}
		switch {
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		case m.Histogram != nil:
			sum += float64(m.Histogram.GetSampleCount())
		}
	}
	return sum
}

// eventually polls cond until it holds or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s", timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// budget is the request path budget metaguard derived from its Go memory
// limit and logged at start-up: the caps the flood tests are bounded by.
type budget struct {
	MemoryLimit         int64 `json:"memory_limit"`
	Conns               int   `json:"connections"`
	ConnsPerSource      int   `json:"connections_per_source"`
	InFlight            int   `json:"in_flight"`
	InFlightPerSource   int   `json:"in_flight_per_source"`
	LongPolls           int   `json:"long_polls"`
	StripBytes          int64 `json:"strip_bytes"`
	StripBytesPerSource int64 `json:"strip_bytes_per_source"`
}

func (n *node) budget() budget {
	n.t.Helper()
	logs, err := n.mg.Stderr()
	if err != nil {
		n.t.Fatal(err)
	}
	for _, line := range bytes.Split(logs, []byte("\n")) {
		var b struct {
			Msg string `json:"msg"`
			budget
		}
		if json.Unmarshal(line, &b) == nil && b.Msg == "request path budget" {
			return b.budget
		}
	}
	n.t.Fatal("metaguard logged no request path budget")
	return budget{}
}
