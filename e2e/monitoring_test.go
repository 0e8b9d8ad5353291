//go:build e2e

package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"sigs.k8s.io/yaml"

	"metaguard.dev/metaguard/deploy/render"
	"metaguard.dev/metaguard/e2e/sandbox"
)

const (
	rulesFile     = chartDir + "/files/monitoring/rules.yaml"
	rulesTestFile = chartDir + "/files/monitoring/rules_test.yaml"
	dashboardFile = chartDir + "/files/monitoring/dashboard.json"
)

// promtool is the pinned promtool of e2e/tools/promtool, built into bin/
// by `make e2e-tools`.
func promtool(t *testing.T, args ...string) string {
	t.Helper()
	bin, err := filepath.Abs("../bin/promtool")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(t.Context(), bin, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

// TestAlertRules runs promtool's own checks and rule unit tests on the
// shipped alerts, checks every dashboard query with promtool's parser, and
// that the chart ships exactly these rules.
func TestAlertRules(t *testing.T) {
	t.Run("the rules pass promtool check rules", func(t *testing.T) {
		promtool(t, "check", "rules", rulesFile)
	})
	t.Run("the rules pass their promtool unit tests", func(t *testing.T) {
		promtool(t, "test", "rules", rulesTestFile)
	})
	t.Run("every dashboard query parses as PromQL", func(t *testing.T) {
		// promtool has no dashboard check: each query becomes a recording
		// rule, Grafana's variables replaced by what they stand for.
		var rules []map[string]string
		for i, q := range dashboardQueries(t) {
			q = strings.NewReplacer("$__rate_interval", "5m", "$node", ".*").Replace(q)
			rules = append(rules, map[string]string{"record": fmt.Sprintf("dashboard:query%d", i), "expr": q})
		}
		data, err := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rules}}})
		if err != nil {
			t.Fatal(err)
		}
		f := filepath.Join(t.TempDir(), "dashboard-rules.yaml")
		if err := os.WriteFile(f, data, 0o644); err != nil {
			t.Fatal(err)
		}
		promtool(t, "check", "rules", f)
	})
	t.Run("the chart's PrometheusRule carries the tested rules", func(t *testing.T) {
		files, err := render.Files(chartDir, map[string]any{"metrics": map[string]any{"prometheusRule": map[string]any{"enabled": true}}})
		if err != nil {
			t.Fatal(err)
		}
		var rule struct {
			Kind string         `json:"kind"`
			Spec map[string]any `json:"spec"`
		}
		if err := yaml.Unmarshal([]byte(strings.TrimPrefix(files["monitoring.yaml"], "---\n")), &rule); err != nil {
			t.Fatal(err)
		}
		var want map[string]any
		data, err := os.ReadFile(rulesFile)
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.Unmarshal(data, &want); err != nil {
			t.Fatal(err)
		}
		got, _ := json.Marshal(rule.Spec)
		w, _ := json.Marshal(want)
		if rule.Kind != "PrometheusRule" || !bytes.Equal(got, w) {
			t.Errorf("the PrometheusRule's spec is not rules.yaml:\n%s", files["monitoring.yaml"])
		}
	})
}

func dashboardQueries(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			out = append(out, tg.Expr)
		}
	}
	if len(out) < 10 {
		t.Fatalf("found %d dashboard queries", len(out))
	}
	// label_values(metric{...}, label) is Grafana's, not PromQL: its
	// metric is checked below, not parsed.
	return out
}

var metricName = regexp.MustCompile(`\bmetaguard_[a-z_]+\b`)

// usedMetrics are the metaguard metric families the rules and the
// dashboard read, with a histogram's _bucket, _sum and _count folded into
// its family.
func usedMetrics(t *testing.T) []string {
	t.Helper()
	var text strings.Builder
	for _, f := range []string{rulesFile, dashboardFile} {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		text.Write(data)
	}
	seen := map[string]bool{}
	for _, m := range metricName.FindAllString(text.String(), -1) {
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if strings.HasSuffix(m, "_seconds"+suffix) {
				m = strings.TrimSuffix(m, suffix)
			}
		}
		seen[m] = true
	}
	var out []string
	for m := range seen {
		out = append(out, m)
	}
	slices.Sort(out)
	return out
}

// TestMonitoringMetricsAreExported runs metaguard, makes happen what the
// alerts and the dashboard watch (allowed and denied requests, an unknown
// pod, an upstream that refuses connections, a pod over its connection
// limit), and checks that /metrics exports every metric they use: an
// alert on a metric that does not exist never fires.
func TestMonitoringMetricsAreExported(t *testing.T) {
	nowhere := netip.MustParseAddr("169.254.169.240")
	n := startNode(t, fmt.Sprintf(`apiVersion: metaguard.dev/v1alpha1
kind: Policy
endpoints:
  - {name: aws, address: "169.254.169.254:80", flavor: aws}
  - {name: nowhere, address: "%s:80", flavor: generic}
defaultAction: deny
rules:
  - name: node-facts
    podSelector: {}
    endpoints: [aws]
    allow:
      - paths: ["/latest/meta-data/instance-id"]
  - name: anything-to-nowhere
    podSelector: {}
    endpoints: [nowhere]
    allow:
      - paths: ["/**"]
`, nowhere))
	if err := n.s.AddCloudAddress(n.ctx, nowhere); err != nil {
		t.Fatal(err)
	}
	web := n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "web", Labels: map[string]string{"app": "web"}})
	if r := n.get(web, "http://169.254.169.254/latest/meta-data/instance-id", nil); r.status != 200 {
		t.Fatalf("allowed request: %d %s", r.status, r.body)
	}
	if r := n.get(web, "http://169.254.169.254/latest/meta-data/iam/info", nil); r.status != 403 {
		t.Fatalf("denied request: %d %s", r.status, r.body)
	}
	if r := n.get(web, "http://"+nowhere.String()+"/x", nil); r.status != 502 {
		t.Fatalf("request to an upstream that refuses connections: %d %s", r.status, r.body)
	}
	ghost, err := n.s.AddPodNetwork(n.ctx, sandbox.PodSpec{Namespace: "shop", Name: "ghost"})
	if err != nil {
		t.Fatal(err)
	}
	if r := n.get(ghost, "http://169.254.169.254/latest/meta-data/instance-id", nil); r.status == 200 {
		t.Fatalf("a source with no pod was answered 200")
	}
	overConnectionLimit(t, n, web)

	var fams map[string]*dto.MetricFamily
	used := usedMetrics(t)
	if len(used) < 15 {
		t.Fatalf("the rules and dashboard use only %v", used)
	}
	missing := func() []string {
		fams = n.metrics()
		var out []string
		for _, m := range used {
			if f, ok := fams[m]; !ok || len(f.Metric) == 0 {
				out = append(out, m)
			}
		}
		return out
	}
	// Audit lines and counters are written as the responses go out; wait
	// for the last request's line rather than for time.
	n.waitAudit(4)
	if m := missing(); len(m) > 0 {
		t.Errorf("the alerts or the dashboard use metrics a running metaguard does not export: %v", m)
	}
	if v := metric(fams, "metaguard_denied_requests_total", map[string]string{"reason": "unknown-pod"}); v < 1 {
		t.Errorf("metaguard_denied_requests_total{reason=\"unknown-pod\"} = %v after a request from a source with no pod", v)
	}
}

// overConnectionLimit opens connections from the pod to the proxy until one
// is refused at the per-source limit, then closes them all.
func overConnectionLimit(t *testing.T, n *node, pod *sandbox.Pod) {
	t.Helper()
	dial := sandbox.NetnsDialer(pod.Netns)
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < 300; i++ {
		c, err := dial(n.ctx, "tcp", sandbox.AWSIMDS.String())
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		conns = append(conns, c)
		if metric(n.metrics(), "metaguard_connections_rejected_total", nil) > 0 {
			return
		}
	}
	// A refused connection is closed at once; the counter follows it.
	eventually(t, 5*time.Second, func() bool { return metric(n.metrics(), "metaguard_connections_rejected_total", nil) > 0 })
}
