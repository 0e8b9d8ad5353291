//go:build e2e

package e2e

import (
	"fmt"
	"testing"

	"metaguard.dev/metaguard/e2e/sandbox"
	"metaguard.dev/metaguard/proxy/audit"
)

// TestARedirectThatIsNotMetaguardsIsRefused backs the known limit in
// docs/operations.md: on datapaths that bypass netfilter, a CNI's own
// redirect (a Cilium LocalRedirectPolicy) would hand metaguard connections
// addressed to its listen port. Without its own rules (--iptables=false)
// metaguard takes the endpoint from the connection's local address, which
// names no endpoint, so such a request is refused, never forwarded.
func TestARedirectThatIsNotMetaguardsIsRefused(t *testing.T) {
	n := startNode(t, `apiVersion: metaguard.dev/v1alpha1
kind: Policy
endpoints:
  - {name: aws, address: "169.254.169.254:80", flavor: aws}
rules:
  - name: everyone
    podSelector: {}
    allow:
      - paths: ["/latest/meta-data/instance-id"]
`, "--iptables=false")
	web := n.addPod(sandbox.PodSpec{Namespace: "shop", Name: "web"})
	r := n.get(web, fmt.Sprintf("http://%s:8169/latest/meta-data/instance-id", sandbox.HostIP), nil)
	if r.status != 403 || !contains(r.body, "not bound for a metadata endpoint") {
		t.Fatalf("a connection to the listen port got %d %q, want 403 unknown-endpoint", r.status, r.body)
	}
	lines := n.waitAudit(1)
	if l := lines[len(lines)-1]; l.Reason != audit.ReasonUnknownEndpoint || l.Decision != audit.DecisionDeny {
		t.Errorf("audit line %+v, want deny unknown-endpoint", l)
	}
}
