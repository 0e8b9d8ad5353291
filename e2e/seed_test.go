//go:build e2e

package e2e

import (
	"testing"

	"metaguard.dev/metaguard/e2e/sandbox"
	"metaguard.dev/metaguard/proxy/audit"
)

// The scenario from the field, reproduced literally: a metadata service at
// 192.168.100.21:32000; in namespace metadata-access pods pod1 and pod2 are
// denied, pod3 labelled role: metadata-accessor gets through, and the node
// itself still reaches the service directly.
const seedPolicy = `apiVersion: metaguard.dev/v1alpha1
kind: Policy
endpoints:
  - {name: metadata, address: "192.168.100.21:32000", flavor: generic}
defaultAction: deny
rules:
  - name: metadata-accessor
    podSelector: {matchLabels: {role: metadata-accessor}}
    allow:
      - {methods: [GET, HEAD, PUT], paths: ["/**"]}
`

func TestSeedScenario(t *testing.T) {
	n := startNode(t, seedPolicy)
	pod1 := n.addPod(sandbox.PodSpec{Namespace: "metadata-access", Name: "pod1", Labels: map[string]string{"app": "pod1"}})
	pod2 := n.addPod(sandbox.PodSpec{Namespace: "metadata-access", Name: "pod2"})
	pod3 := n.addPod(sandbox.PodSpec{Namespace: "metadata-access", Name: "pod3", Labels: map[string]string{"role": "metadata-accessor"}})
	const url = "http://192.168.100.21:32000/latest/meta-data/instance-id"

	for _, p := range []*sandbox.Pod{pod1, pod2} {
		r := n.get(p, url, nil)
		if r.status != 403 || !contains(r.body, "metadata-access/"+p.Name) {
			t.Errorf("%s: status %d body %q, want 403 naming the pod", p, r.status, r.body)
		}
	}
	r := n.get(pod3, url, nil)
	if r.status != 200 || r.body == "" {
		t.Errorf("pod3: status %d body %q, want the instance id", r.status, r.body)
	}
	resp, err := n.s.NodeHTTPClient().Get(url)
	if err != nil {
		t.Fatalf("the node itself cannot reach the service: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("the node itself got %d, want 200 straight from the service", resp.StatusCode)
	}
	// The node's request went direct: only the three pod requests are audited.
	lines := n.waitAudit(3)
	if len(lines) != 3 {
		t.Fatalf("%d audit lines, want 3 (the node's own request is not redirected): %+v", len(lines), lines)
	}
	want := map[string]audit.Decision{"pod1": audit.DecisionDeny, "pod2": audit.DecisionDeny, "pod3": audit.DecisionAllow}
	for _, l := range lines {
		if l.Namespace != "metadata-access" || want[l.Pod] != l.Decision {
			t.Errorf("audit line %+v, want decision %s", l, want[l.Pod])
		}
	}
}
