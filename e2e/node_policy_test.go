//go:build e2e

package e2e

import (
	"bufio"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"metaguard.dev/metaguard/proxy/audit"
)

// installState is the operator's install kustomization as last applied:
// the image and the policy (empty: the overlay's own).
type installState struct {
	ref, policy string
}

// applyInstall writes the guide's install kustomization for the image
// ref, with the guide's policy generator and policy.yaml beside it when
// policy is not empty (else the overlay's own policy), and applies it as
// the guide's Upgrade says; rollout also waits for the rollout.
func (n *realNode) applyInstall(ref, policy string, rollout bool) {
	n.t.Helper()
	var edit func(string) string
	path := filepath.Join(n.dir, "install", "policy.yaml")
	if policy != "" {
		generator := guideFile(n.t, "Upgrade", "install/kustomization.yaml, continued")
		edit = func(s string) string { return s + generator }
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			n.t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(policy), 0o644); err != nil {
			n.t.Fatal(err)
		}
	} else {
		os.Remove(path)
	}
	n.writeGuideFile("Install", "install/kustomization.yaml", ref, edit)
	if rollout {
		n.runGuide("Upgrade")
	} else {
		n.runGuide("Upgrade", 0)
	}
	*n.state = installState{ref, policy}
}

// metrics scrapes metaguard's /metrics on the node (hostNetwork).
func (n *realNode) metrics() map[string]*dto.MetricFamily {
	n.t.Helper()
	return scrapeMetrics(n.t, n.s)
}

// nodeGet is a request from the node itself (not a pod), which metaguard
// never redirects.
func (n *realNode) nodeGet(url string) (int, string) {
	n.t.Helper()
	client := n.s.NodeHTTPClient()
	client.Timeout = 5 * time.Second
	resp, err := client.Get(url)
	if err != nil {
		n.t.Fatalf("GET %s from the node: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// auditLines are the audit lines in the metaguard container's log (its
// stdout; the operational log, on stderr, is not JSON with a decision).
func (n *realNode) auditLines() []audit.Record {
	n.t.Helper()
	out := n.kubectl("-n", "metaguard", "logs", n.metaguardPod().Name, "-c", "metaguard")
	var lines []audit.Record
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if r, err := audit.Decode(sc.Bytes()); err == nil {
			lines = append(lines, r)
		}
	}
	return lines
}

func checkSDK(t *testing.T, n *realNode, bystander workload) {
	// -no-fallback: the SDK must get its IMDSv2 session token through
	// metaguard; IMDSv1 would hide a broken PUT.
	if r := n.exec(bystander, "-no-fallback", "aws-get", "instance-id"); !r.OK || !strings.HasPrefix(r.Body, "i-") {
		t.Errorf("an ordinary pod's instance id over IMDSv2: %+v", r)
	}
	if r := n.exec(bystander, "-no-fallback", "aws-region"); !r.OK || r.Body == "" {
		t.Errorf("an ordinary pod's region over IMDSv2: %+v", r)
	}
	if r := n.exec(bystander, "-no-fallback", "aws-creds"); r.OK || r.Status != 403 {
		t.Errorf("an ordinary pod's credentials: %+v, want 403 (the overlay is in audit mode, which never opens credentials)", r)
	}
	impostor := n.runWorkload("shop", "impostor", nil, map[string]string{"role": "metadata-accessor"})
	if r := n.exec(impostor, "-no-fallback", "aws-creds"); r.OK || r.Status != 403 {
		t.Errorf("the accessor label in a namespace without the admin's label: %+v, want 403", r)
	}
	agent := n.runWorkload("ops", "agent", map[string]string{"metaguard.dev/accessors": "true"}, map[string]string{"role": "metadata-accessor"})
	if r := n.exec(agent, "-no-fallback", "aws-creds"); !r.OK || r.AccessKeyID == "" || r.Role == "" {
		t.Errorf("an accessor's credentials: %+v", r)
	}
	// The audit log names the refused pod and why, from the container's
	// own log.
	eventually(t, 30*time.Second, func() bool {
		for _, l := range n.auditLines() {
			if l.Namespace == "shop" && l.Pod == "web" && strings.Contains(l.Path, "iam/security-credentials") {
				return l.Decision == audit.DecisionDeny && l.Reason == audit.ReasonCredentialPath
			}
		}
		return false
	})
}

// seedURL is seed scenario 001's metadata service.
const seedURL = "http://192.168.100.21:32000/latest/meta-data/instance-id"

func checkSeedScenario(t *testing.T, n *realNode) {
	pod1 := n.runWorkload("metadata-access", "pod1", nil, map[string]string{"app": "pod1"})
	pod2 := n.runWorkload("metadata-access", "pod2", nil, nil)
	pod3 := n.runWorkload("metadata-access", "pod3", nil, map[string]string{"role": "metadata-accessor"})
	if r := n.get(pod1, seedURL); r.Status != 200 {
		t.Fatalf("before the edit nothing guards %s, so pod1 reaches it: %+v", seedURL, r)
	}
	n.applyInstall(n.state.ref, seedPolicy, false)
	begin := time.Now()
	// The kubelet updates the mounted ConfigMap on its next sync of the
	// pod; metaguard sees the ..data symlink swap and reloads.
	eventually(t, 2*time.Minute, func() bool { return n.get(pod1, seedURL).Status == 403 })
	t.Logf("the policy edit took effect %v after kubectl apply", time.Since(begin).Round(100*time.Millisecond))

	for _, w := range []workload{pod1, pod2} {
		if r := n.get(w, seedURL); r.Status != 403 || !strings.Contains(r.Body, "metadata-access/"+w.Name) {
			t.Errorf("%s: %+v, want 403 naming the pod", w.Name, r)
		}
	}
	status, direct := n.nodeGet(seedURL)
	if status != http.StatusOK || direct == "" {
		t.Fatalf("the node itself: %d %q, want the metadata server's answer", status, direct)
	}
	if r := n.get(pod3, seedURL); r.Status != 200 || r.Body != direct {
		t.Errorf("pod3: %+v, want the metadata server's answer %q", r, direct)
	}
}

// brokenPolicy fails validation: metaguard must keep the policy in force.
const brokenPolicy = `apiVersion: metaguard.dev/v1alpha1
kind: Policy
endpoints:
  - {name: metadata, address: "192.168.100.21:32000", flavor: generic}
defaultAction: allow-everything
rules: []
`

func checkBrokenEdit(t *testing.T, n *realNode) {
	errors := func() float64 {
		return metric(n.metrics(), "metaguard_policy_reloads_total", map[string]string{"result": "error"})
	}
	before := errors()
	n.applyInstall(n.state.ref, brokenPolicy, false)
	// The refused reload is the signal that the broken file reached the pod.
	eventually(t, 2*time.Minute, func() bool { return errors() > before })
	pod1 := workload{"metadata-access", "pod1"}
	pod3 := workload{"metadata-access", "pod3"}
	if r := n.get(pod1, seedURL); r.Status != 403 {
		t.Errorf("pod1 after the broken edit: %+v, want the old policy's 403", r)
	}
	if r := n.get(pod3, seedURL); r.Status != 200 {
		t.Errorf("pod3 after the broken edit: %+v, want the old policy's 200", r)
	}

	// Back to the overlay's own policy, which guards 169.254.169.254 again.
	n.applyInstall(n.state.ref, "", false)
	bystander := workload{"shop", "web"}
	eventually(t, 2*time.Minute, func() bool { return n.get(bystander, credsURL).Status == 403 })
}
