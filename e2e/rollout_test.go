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
	"metaguard.dev/metaguard/proxy/audit"
)

// auditPolicy is where a rollout starts: audit mode, and the one rule the
// cluster already relies on, the agent's credentials.
const auditPolicy = `apiVersion: metaguard.dev/v1alpha1
kind: Policy
mode: audit
endpoints:
  - {name: aws, address: "169.254.169.254:80", flavor: aws}
defaultAction: deny
rules:
  - name: agent-credentials
    podSelector: {matchLabels: {app: agent}}
    allow:
      - {methods: [PUT], paths: ["/latest/api/token"]}
      - paths: ["/latest/meta-data/iam/security-credentials/**"]
    credentials: allow
`

// TestRolloutAuditSuggestEnforce is the safe rollout, end to end: run in
// audit mode (nothing breaks, but no credential the policy does not grant
// is served), generate a policy from the audit log with metaguard suggest,
// enforce it, and replay the same traffic: everything that was served
// still works, the agent's granted credentials are carried forward, and
// what a pod only probed (a credential read audit mode refused, a path
// nobody serves) is not learned. A group the operator names after review
// gets its reviewed credential path, and nothing more.
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
	const listing = "/latest/meta-data/iam/security-credentials/"
	const madeUp = "/latest/meta-data/made-up-by-web-2"
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
	if r := n.get(web, "http://169.254.169.254"+listing, nil); r.status != 403 {
		t.Fatalf("audit mode: web's credential probe got %d, want 403: audit mode never forwards a credential read", r.status)
	}
	if r := n.get(web2, "http://169.254.169.254"+madeUp, nil); r.status == 200 {
		t.Fatalf("audit mode: the made-up path was served: %q", r.body)
	}
	// Audit lines are written in batches: wait for the last requests to be
	// on disk before suggest reads the log.
	var lines []audit.Record
	eventually(t, 5*time.Second, func() bool {
		lines = n.audit()
		var role, probe bool
		for _, l := range lines {
			p, ok := strings.CutPrefix(l.Path, listing)
			role = role || (ok && p != "" && l.Pod == "agent")
			probe = probe || l.Path == madeUp
		}
		return role && probe
	})
	counts := map[string]int{}
	for _, l := range lines {
		counts[l.Decision.String()+" "+l.Reason.String()]++
	}
	if counts["audit-deny not-allowed-by-rules"]+counts["audit-deny no-rule-selects-pod"] < 4 || counts["deny credential-path"] != 1 ||
		counts["allow credentials-allowed"] < 2 {
		t.Fatalf("audit mode logged %v: want the unlisted reads as audit-deny, web's probe as deny credential-path and the agent's SDK as credentials-allowed", counts)
	}

	// suggest, exactly as an operator runs it: with the policy the log was
	// written under, whose rules say which credential reads were granted.
	inForce := filepath.Join(n.s.ArtifactDir(), "audit-policy.yaml")
	if err := os.WriteFile(inForce, []byte(auditPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	metaguard := filepath.Join(n.s.BinDir(), "metaguard")
	suggest := func(name string, extra ...string) (string, string) {
		t.Helper()
		out := filepath.Join(n.s.ArtifactDir(), name)
		cmd := exec.Command(metaguard, append([]string{"suggest", "--config", inForce, "--audit-log", n.mg.StdoutPath(), "--mode", "enforce"}, extra...)...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		suggested, err := cmd.Output()
		if err != nil {
			t.Fatalf("metaguard suggest %v: %v\n%s", extra, err, stderr.String())
		}
		if err := os.WriteFile(out, suggested, 0o644); err != nil {
			t.Fatal(err)
		}
		if b, err := exec.Command(metaguard, "validate", "--config", out).CombinedOutput(); err != nil {
			t.Fatalf("the suggested policy does not validate: %v\n%s\n%s", err, b, suggested)
		}
		t.Logf("suggested policy (%v):\n%s\n%s", extra, suggested, stderr.String())
		return string(suggested), stderr.String()
	}
	suggested, summary := suggest("suggested.yaml")
	for _, want := range []string{"review: group shop-web (pods labelled app=web in namespace shop): 1 credential request on 1 path by pod web-1 not granted",
		"--grant-credentials=shop-web grants them", "1 not served"} {
		if !strings.Contains(summary, want) {
			t.Errorf("suggest's summary lacks %q:\n%s", want, summary)
		}
	}
	if !strings.Contains(suggested, "#   GET "+listing+" by pod web-1: 1 request (deny credential-path)") {
		t.Errorf("the suggestion does not list web's probe for review:\n%s", suggested)
	}

	n.writePolicy(suggested)
	eventually(t, 10*time.Second, func() bool {
		return metric(n.metrics(), "metaguard_policy_info", map[string]string{"mode": "enforce"}) == 1
	})
	replay(200, "enforce with the suggested policy")
	sdk("enforce with the suggested policy")
	for _, c := range []struct {
		pod  *sandbox.Pod
		path string
		why  string
	}{
		{web, "/latest/meta-data/hostname", "a path nobody used"},
		{web, listing, "a credential path web only probed"},
		{web2, madeUp, "a path the upstream never served"},
		{agent, "/latest/meta-data/iam/info", "a credential path the agent never read"},
	} {
		if r := n.get(c.pod, "http://169.254.169.254"+c.path, nil); r.status != 403 {
			t.Errorf("%s (%s %s): %d, want 403", c.why, c.pod, c.path, r.status)
		}
	}

	// The operator reviews web's probe and grants it.
	granted, summary := suggest("granted.yaml", "--grant-credentials", "shop-web")
	if !strings.Contains(summary, "granted: group shop-web") {
		t.Errorf("suggest's summary does not say what it granted:\n%s", summary)
	}
	n.writePolicy(granted)
	eventually(t, 10*time.Second, func() bool {
		return n.get(web, "http://169.254.169.254"+listing, nil).status == 200
	})
	for _, c := range []call{{web, "/latest/meta-data/iam/info"}, {web2, madeUp}} {
		if r := n.get(c.pod, "http://169.254.169.254"+c.path, nil); r.status != 403 {
			t.Errorf("after granting shop-web its reviewed listing, %s %s: %d, want 403", c.pod, c.path, r.status)
		}
	}
	replay(200, "enforce with the granted policy")
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
