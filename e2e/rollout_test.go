//go:build e2e

package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"metaguard.dev/metaguard/e2e/sandbox"
)

const auditPolicy = `apiVersion: metaguard.dev/v1alpha1
kind: Policy
mode: audit
endpoints:
  - {name: aws, address: "169.254.169.254:80", flavor: aws}
defaultAction: deny
rules: []
`

// TestRolloutAuditSuggestEnforce is the safe rollout, end to end: run in
// audit mode (nothing breaks), generate a policy from the audit log with
// metaguard suggest, enforce it, and replay the same traffic: everything
// still works, and a path nobody used is denied.
func TestRolloutAuditSuggestEnforce(t *testing.T) {
	n := startNode(t, auditPolicy)
	if err := n.s.EnsureNamespace(n.ctx, "ops", nil); err != nil {
		t.Fatal(err)
	}
	web := n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "web-1", Labels: map[string]string{"app": "web"}})
	web2 := n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "web-2", Labels: map[string]string{"app": "web"}})
	agent := n.addPod(sandbox.PodSpec{Namespace: "ops", Name: "agent", Labels: map[string]string{"app": "agent"}})

	type call struct {
		pod  *sandbox.Pod
		path string
	}
	traffic := []call{
		{web, "/latest/meta-data/instance-id"},
		{web2, "/latest/meta-data/placement/availability-zone"},
		{web, "/latest/meta-data/placement/region"},
		{agent, "/latest/meta-data/iam/security-credentials/"},
		{agent, "/latest/meta-data/instance-type"},
	}
	replay := func(wantStatus int, phase string) {
		t.Helper()
		for _, c := range traffic {
			if r := n.get(c.pod, "http://169.254.169.254"+c.path, nil); r.status != wantStatus {
				t.Fatalf("%s: %s %s got %d (%q), want %d", phase, c.pod, c.path, r.status, r.body, wantStatus)
			}
		}
	}
	// The real AWS SDK with IMDSv2, too: a token PUT, then GETs.
	sdk := func(phase string) {
		t.Helper()
		if r := n.podClient(agent, "aws-creds"); !r.OK {
			t.Fatalf("%s: the agent's SDK credentials: %+v", phase, r)
		}
	}

	replay(200, "audit mode")
	sdk("audit mode")
	// Audit lines are written in batches: wait for the SDK's last request
	// (its role's credentials) to be on disk before suggest reads the log.
	var lines []auditLine
	eventually(t, 5*time.Second, func() bool {
		lines = n.audit()
		for _, l := range lines {
			if p, ok := strings.CutPrefix(l.Path, "/latest/meta-data/iam/security-credentials/"); ok && p != "" {
				return len(lines) >= len(traffic)
			}
		}
		return false
	})
	audited := 0
	for _, l := range lines {
		if l.Decision == "audit-deny" {
			audited++
		}
	}
	if audited < len(traffic) {
		t.Fatalf("audit mode logged %d audit-deny lines, want at least %d", audited, len(traffic))
	}

	// suggest, exactly as an operator runs it.
	out := filepath.Join(n.s.ArtifactDir(), "suggested.yaml")
	cmd := exec.Command(filepath.Join(n.s.BinDir(), "metaguard"), "suggest", "--config", n.policy, "--audit-log", n.mg.StdoutPath(), "--mode", "enforce")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	suggested, err := cmd.Output()
	if err != nil {
		t.Fatalf("metaguard suggest: %v\n%s", err, stderr.String())
	}
	if err := os.WriteFile(out, suggested, 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := exec.Command(filepath.Join(n.s.BinDir(), "metaguard"), "validate", "--config", out).CombinedOutput(); err != nil {
		t.Fatalf("the suggested policy does not validate: %v\n%s\n%s", err, b, suggested)
	}
	t.Logf("suggested policy:\n%s", suggested)

	n.writePolicy(string(suggested))
	eventually(t, 10*time.Second, func() bool {
		return metric(n.metrics(), "metaguard_policy_info", map[string]string{"mode": "enforce"}) == 1
	})
	replay(200, "enforce with the suggested policy")
	sdk("enforce with the suggested policy")

	if r := n.get(web, "http://169.254.169.254/latest/meta-data/hostname", nil); r.status != 403 {
		t.Errorf("a path nobody used: %d, want 403", r.status)
	}
	if r := n.get(web, "http://169.254.169.254/latest/meta-data/iam/security-credentials/", nil); r.status != 403 {
		t.Errorf("credentials for a group that never read them: %d, want 403", r.status)
	}
	if r := n.get(agent, "http://169.254.169.254/latest/meta-data/iam/info", nil); r.status != 403 {
		t.Errorf("a credential path the agent never read: %d, want 403", r.status)
	}
}

// TestExplainReadsTheLivePod: explain --pod answers from the real pod and
// namespace on the API server.
func TestExplainReadsTheLivePod(t *testing.T) {
	n := startNode(t, awsPolicy)
	n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "web", Labels: map[string]string{"app": "web"}})
	out, err := n.s.ExecInNode(n.ctx, filepath.Join(n.s.BinDir(), "metaguard"), "explain",
		"--config", n.policy, "--kubeconfig", n.s.AdminKubeconfig(), "--pod", "shop/web", "GET", "/latest/meta-data/")
	if err != nil {
		t.Fatalf("explain: %v\n%s", err, out)
	}
	for _, want := range []string{"pod:       shop/web", "labels={app=web}", "kubernetes.io/metadata.name=shop", "decision:  strip", "rule:      node-facts"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("explain output lacks %q:\n%s", want, out)
		}
	}
	if out, err := n.s.ExecInNode(n.ctx, filepath.Join(n.s.BinDir(), "metaguard"), "explain",
		"--config", n.policy, "--kubeconfig", n.s.AdminKubeconfig(), "--pod", "shop/nope", "GET", "/"); err == nil {
		t.Errorf("explain of a missing pod succeeded:\n%s", out)
	}
}
